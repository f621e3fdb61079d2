// Static-partition parallel loop over [0, n). Each index is processed by exactly one thread and writes only its own
// outputs, so results never depend on the thread count.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <new>
#include <thread>
#include <vector>

namespace cf::detail {

// Whether a long computation was asked to stop (`stop` null: never).
inline bool stopped(const std::atomic<bool>* stop) { return stop != nullptr && stop->load(std::memory_order_relaxed); }

inline int resolve_threads(int threads) {
  if (threads > 0) return threads;
  unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

// The threads a model's parallel sections use: `threads`, at most the hardware's (more only take turns on its cores,
// for the same results), or with 0 the hardware's.
inline int capped_threads(int threads) {
  const int hw = resolve_threads(0);
  return threads > 0 ? std::min(threads, hw) : hw;
}

// fn(begin, end) is called on disjoint contiguous chunks; the first exception thrown by a chunk is rethrown. When a
// thread cannot be started (resource limits), its chunk and the remaining ones run on the calling thread: the same
// chunks, so the same results.
template <class Fn>
void parallel_chunks(std::int64_t n, int threads, Fn&& fn, std::int64_t min_chunk = 16) {
  if (n <= 0) return;
  std::int64_t t = std::min<std::int64_t>(resolve_threads(threads), std::max<std::int64_t>(1, n / min_chunk));
  if (t <= 1) {
    fn(std::int64_t{0}, n);
    return;
  }
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(t));
  std::int64_t step = (n + t - 1) / t;
  auto run = [&](std::int64_t i, std::int64_t lo, std::int64_t hi) {
    try {
      fn(lo, hi);
    } catch (...) {
      errors[static_cast<std::size_t>(i)] = std::current_exception();
    }
  };
  bool inline_rest = false;  // set once a thread could not be started
  try {
    pool.reserve(static_cast<std::size_t>(t));  // emplace_back below then never reallocates
  } catch (const std::bad_alloc&) {
    inline_rest = true;
  }
  for (std::int64_t i = 0; i < t; ++i) {
    std::int64_t lo = i * step, hi = std::min(n, lo + step);
    if (lo >= hi) break;
    if (!inline_rest) {
      try {
        pool.emplace_back(run, i, lo, hi);
        continue;
      } catch (...) {  // std::system_error (no thread) or std::bad_alloc: never unwind past a joinable thread
        inline_rest = true;
      }
    }
    run(i, lo, hi);
  }
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace cf::detail
