#include <doctest/doctest.h>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <fstream>
#include <vector>

#include "parallel.h"

TEST_CASE("parallel_chunks runs every chunk, on the calling thread where a thread cannot be started") {
  // In a child process (it lowers its own address-space limit): each thread's stack is a fresh mapping of several
  // MiB, so with 64 MiB of room left most of the 200 threads cannot be created. Before, the failed creation
  // unwound past joinable threads: std::terminate.
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    std::size_t pages = 0;
    std::ifstream("/proc/self/statm") >> pages;
    const rlim_t room = static_cast<rlim_t>(pages) * static_cast<rlim_t>(sysconf(_SC_PAGESIZE)) + (64u << 20);
    const rlimit limit{room, room};
    if (setrlimit(RLIMIT_AS, &limit) != 0) _exit(2);
    std::vector<std::atomic<int>> seen(2000);
    cf::detail::parallel_chunks(
        2000, 200,
        [&](std::int64_t lo, std::int64_t hi) {
          for (std::int64_t i = lo; i < hi; ++i) ++seen[static_cast<std::size_t>(i)];
        },
        1);
    for (const auto& s : seen)
      if (s != 1) _exit(3);
    _exit(0);
  }
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("a model's parallel sections start at most the hardware's threads") {
  // threads = 100000 started that many OS threads per section: a 3000 x 60 fit took 2.6 s instead of 0.05 s.
  const int hw = cf::detail::resolve_threads(0);
  CHECK(cf::detail::capped_threads(100000) == hw);
  CHECK(cf::detail::capped_threads(0) == hw);
  CHECK(cf::detail::capped_threads(1) == 1);
}
