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
  evaluate_kernel(h, x.data(), 4, 0, n_cols, out.data());
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

TEST_CASE("a column basis reproduces the kernel, with the rank of the second-order features") {
  const std::int64_t n_cols = 60;
  const std::vector<double> x = features(n_cols, 7);
  const ColumnBasis basis = column_basis(x.data(), 4, n_cols, n_cols);
  CHECK(basis.rank == 10);  // 1 + 3 + 3 * 4 / 2 monomials of degree <= 2 in 3 features
  CHECK(basis.n_cols == n_cols);
  CHECK(basis.l.size() == static_cast<std::size_t>(basis.rank * n_cols));
  double worst = 0;
  for (std::int64_t a = 0; a < n_cols; ++a)
    for (std::int64_t b = 0; b < n_cols; ++b) {
      double lk = 0;
      for (std::int64_t k = 0; k < basis.rank; ++k) lk += basis.l[k * n_cols + a] * basis.l[k * n_cols + b];
      worst = std::fmax(worst, std::fabs(lk - poly_kernel(x.data() + a * 4, x.data() + b * 4, 4)));
    }
  CHECK(worst < 1e-8);
  CHECK(column_basis(x.data(), 4, n_cols, 9).rank == 0);  // needs 10 dimensions: none
}

TEST_CASE("a row solved in the column basis gets the expansion it gets over its entries") {
  const std::int64_t n_cols = 300;
  const std::vector<double> x = features(n_cols, 11);
  NormalRng rng(4);
  std::vector<std::int64_t> cols;
  std::vector<double> rho;
  for (std::int64_t c = 0; c < n_cols; c += 3) {
    cols.push_back(c);
    rho.push_back(0.3 * x[c * 4] * x[c * 4 + 1] - 0.2 * x[c * 4 + 2] + 0.05 * rng.next());
  }
  const KernelExpansion dual = fit_row_kernel(cols.data(), rho.data(), cols.size(), x.data(), 4, 2);
  const KernelExpansion primal =
      fit_row_kernel(cols.data(), rho.data(), cols.size(), x.data(), 4, 2, column_basis(x.data(), 4, n_cols, 50));
  REQUIRE(!dual.cols.empty());
  REQUIRE(primal.cols == dual.cols);
  std::vector<double> h_dual(n_cols), h_primal(n_cols);
  evaluate_kernel(dual, x.data(), 4, 0, n_cols, h_dual.data());
  evaluate_kernel(primal, x.data(), 4, 0, n_cols, h_primal.data());
  for (std::int64_t c = 0; c < n_cols; ++c) CHECK(h_primal[c] == doctest::Approx(h_dual[c]).epsilon(1e-6));
}

TEST_CASE("evaluate_kernel sums the expansion, as a quadratic form or term by term") {
  const std::int64_t n_cols = 50;
  const std::vector<double> x = features(n_cols, 13);
  NormalRng rng(6);
  for (std::size_t n : {2, 20}) {  // fewer / more terms than features: both ways of summing
    KernelExpansion h;
    for (std::size_t i = 0; i < n; ++i) {
      h.cols.push_back(static_cast<std::int64_t>(i * 2));
      h.alpha.push_back(rng.next());
    }
    std::vector<double> out(n_cols);
    evaluate_kernel(h, x.data(), 4, 0, n_cols, out.data());
    for (std::int64_t c = 0; c < n_cols; ++c) {
      double sum = 0;
      for (std::size_t i = 0; i < n; ++i) sum += h.alpha[i] * poly_kernel(x.data() + h.cols[i] * 4, x.data() + c * 4, 4);
      CHECK(out[c] == doctest::Approx(sum).epsilon(1e-12));
    }
  }
}

TEST_CASE("evaluation_cost counts the multiply-adds of the way evaluate_kernel sums") {
  CHECK(evaluation_cost(2, 4, 50) == 2 + 50 + 2 * 3 * 50);      // fewer terms than features: term by term
  CHECK(evaluation_cost(20, 4, 50) == 20 + 50 + 9 * (20 + 50));  // the quadratic form
  CHECK(evaluation_cost(0, 1, 50) == 50);                        // no features, no terms
  // A file of 12,000 features and one column whose row has an expansion of 12,000 entries (563 KB): load refuses it.
  CHECK(evaluation_cost(12000, 12001, 1) > cf::kMaxLoadedWork);
}

TEST_CASE("a column basis is only worth a rank that some row can use and that costs less than the rows' solves") {
  const std::vector<std::int64_t> ptr = {0, 400, 400 + kKernelMinEntries - 1, 400 + kKernelMinEntries + 2999};
  // rows of 400, 19 (too few for a residual) and 3000 (capped at kKernelMaxEntries) entries
  CHECK(basis_rank_limit(ptr.data(), 3, 10) == static_cast<std::int64_t>(kKernelMaxEntries / kBasisEntriesPerDim));
  const double dual = (std::pow(400.0, 3) + std::pow(static_cast<double>(kKernelMaxEntries), 3)) / 3;
  const std::int64_t n_cols = 100'000'000;  // so many columns that the basis may cost only a few dimensions
  CHECK(basis_rank_limit(ptr.data(), 3, n_cols) == static_cast<std::int64_t>(std::sqrt(2 * dual / n_cols)));
  CHECK(basis_rank_limit(ptr.data(), 1, n_cols) == 0);  // one row of 400: not one dimension
}
