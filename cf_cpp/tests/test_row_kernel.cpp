#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "rng.h"
#include "row_kernel.h"

using namespace cf::detail;

namespace {

// n columns with 3 standardised-like features and the intercept: x_c = [f0, f1, f2, 1].
std::vector<double> features(std::int64_t n, std::uint64_t seed) {
  NormalRng rng(seed);
  std::vector<double> x(static_cast<std::size_t>(n * 4));
  for (std::int64_t c = 0; c < n; ++c) {
    for (int j = 0; j < 3; ++j) x[c * 4 + j] = rng.next();
    x[c * 4 + 3] = 1.0;
  }
  return x;
}

}  // namespace

TEST_CASE("the kernel residual learns a pairwise feature interaction from part of the columns") {
  const std::int64_t n_cols = 400;
  const std::vector<double> x = features(n_cols, 3);
  auto interaction = [&](std::int64_t c) { return 0.3 * x[c * 4] * x[c * 4 + 1]; };
  std::vector<std::int64_t> cols;
  std::vector<double> rho;
  for (std::int64_t c = 0; c < n_cols; c += 2) {  // the even columns are the row's training entries
    cols.push_back(c);
    rho.push_back(interaction(c));
  }
  const KernelExpansion h = fit_row_kernel(cols.data(), rho.data(), cols.size(), x.data(), 4, 1);
  REQUIRE(!h.cols.empty());
  std::vector<double> out(n_cols);
  evaluate_kernel(h, x.data(), 4, n_cols, out.data());
  double se = 0, ss = 0;
  for (std::int64_t c = 1; c < n_cols; c += 2) {  // unseen columns
    se += std::pow(out[c] - interaction(c), 2);
    ss += std::pow(interaction(c), 2);
  }
  CHECK(se < 0.05 * ss);
}

TEST_CASE("a row already within 10% everywhere, or with too few entries, keeps no correction") {
  const std::vector<double> x = features(200, 5);
  NormalRng rng(9);
  std::vector<std::int64_t> cols(200);
  std::vector<double> rho(200);
  for (std::int64_t c = 0; c < 200; ++c) {
    cols[c] = c;
    rho[c] = 0.01 * rng.next();  // noise far inside +-10%: no ridge can bring more entries within it
  }
  CHECK(fit_row_kernel(cols.data(), rho.data(), cols.size(), x.data(), 4, 1).cols.empty());
  for (std::int64_t c = 0; c < 200; ++c) rho[c] = 0.3 * x[c * 4] * x[c * 4 + 1];
  CHECK(fit_row_kernel(cols.data(), rho.data(), kKernelMinEntries - 1, x.data(), 4, 1).cols.empty());
  CHECK(fit_row_kernel(cols.data(), rho.data(), cols.size(), x.data(), 1, 1).cols.empty());  // no features
}

TEST_CASE("poly_kernel is (1 + x.x'/F)^2 over the features, ignoring the intercept") {
  const double a[] = {1.0, 2.0, 1.0}, b[] = {3.0, -1.0, 1.0};
  CHECK(poly_kernel(a, b, 3) == doctest::Approx(std::pow(1.0 + (3.0 - 2.0) / 2.0, 2)));
}
