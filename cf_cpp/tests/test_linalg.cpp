#include <doctest/doctest.h>

#include <stdexcept>
#include <vector>

#include "linalg.h"
#include "parallel.h"

using namespace cf::detail;

TEST_CASE("ridge_solve solves a small SPD system") {
  // A = [[4, 1], [1, 3]], b = [1, 2]  ->  x = [1/11, 7/11]
  std::vector<double> a = {4, 1, 1, 3}, b = {1, 2};
  ridge_solve(a.data(), nullptr, b.data(), 2);
  CHECK(b[0] == doctest::Approx(1.0 / 11).epsilon(1e-12));
  CHECK(b[1] == doctest::Approx(7.0 / 11).epsilon(1e-12));
}

TEST_CASE("ridge_solve adds the ridge to the diagonal") {
  std::vector<double> a = {0, 0, 0, 0}, b = {2, 4}, ridge = {2, 4};
  ridge_solve(a.data(), ridge.data(), b.data(), 2);
  CHECK(b[0] == doctest::Approx(1.0));
  CHECK(b[1] == doctest::Approx(1.0));
}

TEST_CASE("parallel_chunks covers every index exactly once") {
  for (int threads : {1, 2, 3, 8}) {
    std::vector<int> hits(1000, 0);
    parallel_chunks(1000, threads, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t i = lo; i < hi; ++i) ++hits[i];
    }, 1);
    for (int h : hits) REQUIRE(h == 1);
  }
}

TEST_CASE("parallel_chunks rethrows worker exceptions") {
  CHECK_THROWS_AS(parallel_chunks(100, 4, [](std::int64_t, std::int64_t) { throw std::runtime_error("boom"); }, 1),
                  std::runtime_error);
}
