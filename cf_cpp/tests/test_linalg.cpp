#include <doctest/doctest.h>

#include <cmath>
#include <stdexcept>
#include <vector>

#include "linalg.h"
#include "parallel.h"
#include "rng.h"

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

TEST_CASE("cholesky factors A = L L^T across panel boundaries, and a singular A with a jitter") {
  NormalRng rng(3);
  for (std::size_t d : {1, 5, 64, 65, 150, 301}) {  // one panel, exactly one, a panel and a column, several
    const std::size_t k = d / 2 + 1;                  // A = B B^T + I, B d x k
    std::vector<double> b(d * k), a(d * d);
    for (double& v : b) v = rng.next();
    for (std::size_t i = 0; i < d; ++i)
      for (std::size_t j = 0; j < d; ++j) a[i * d + j] = dot(&b[i * k], &b[j * k], k) + (i == j ? 1.0 : 0.0);
    std::vector<double> l = a;
    cholesky(l.data(), d);
    double worst = 0;
    for (std::size_t i = 0; i < d; ++i)
      for (std::size_t j = 0; j <= i; ++j) worst = std::fmax(worst, std::fabs(dot(&l[i * d], &l[j * d], j + 1) - a[i * d + j]));
    CHECK(worst < 1e-9 * static_cast<double>(d));
    for (std::size_t i = 0; i < d; ++i) CHECK(l[i * d + i] > 0);
  }
  std::vector<double> ones(100 * 100, 1.0);  // rank 1: every pivot after the first is jittered, none is NaN
  cholesky(ones.data(), 100);
  for (std::size_t i = 0; i < 100; ++i) CHECK(std::isfinite(ones[i * 100 + i]));
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
