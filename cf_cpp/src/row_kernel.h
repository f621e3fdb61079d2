// Per-row kernel residual: what the low-rank model misses of one row, learned from the column features.
//
// After the ALS sweeps, each fitted row's training residuals rho_i = log y_i - (mu + b_r + z_c . [1, p_r]) are
// regressed on the standardised column features x by kernel ridge regression with the second-order polynomial kernel
//     k(x, x') = (1 + x . x' / F)^2            (F = number of features)
// so h_r(c) = sum_i alpha_i k(x_{c_i}, x_c) adds, per row, any pairwise interaction of features that the shared
// linear feature prior and the rank-k factors cannot express (on NAS-Bench-201 cells: op pairs that a GPU runs
// differently). The ridge is chosen per row on a fifth of its entries held out, among kKernelRidges, by the number of
// held-out residuals brought within +-10%; a row where no ridge beats "no correction" keeps h_r = 0, so the stage can
// only be chosen where it helps on held-out entries of that very row.
//
// Cost. Over its n entries a row's ridges cost O(n^3). The kernel has rank at most 1 + F + F(F+1)/2 over any set of
// columns, and often far less (one-hot features); a ColumnBasis factors it once per fit, and a row with at least twice
// as many entries as the basis has dimensions solves its ridges in that space instead, O(n m^2 + m^3), to the same
// expansion. h_r is evaluated as a quadratic form in the features when that is cheaper than summing the expansion.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "cf_cpp/model.h"

namespace cf::detail {

using cf::KernelExpansion;

constexpr double kKernelRidges[] = {0.01, 0.1, 1.0, 10.0};
constexpr std::size_t kKernelMinEntries = 20;    // rows with fewer entries get no correction
constexpr std::size_t kKernelMaxEntries = 1000;  // rows with more fit on a random subset of this size
constexpr double kBasisTolerance = 1e-10;  // a ColumnBasis stops where every column's remainder is below this
                                           // fraction of the largest k(x_c, x_c)
constexpr std::size_t kBasisEntriesPerDim = 2;  // a row solves in a basis of rank m only with n >= this * m entries

// x: n_cols x fx standardised features, the last of the fx values the prior's intercept (ignored here).
double poly_kernel(const double* xa, const double* xb, int fx);

// k(x_c, x_c') = l_c . l_c' for all columns up to kBasisTolerance (pivoted Cholesky of the column kernel).
struct ColumnBasis {
  std::int64_t rank = 0;  // 0: none
  std::int64_t n_cols = 0;
  std::vector<double> l;  // rank x n_cols: one dimension after another (built in place, never transposed)
};

// The basis of the n_cols columns, or none if the kernel needs more than max_rank dimensions.
ColumnBasis column_basis(const double* x, int fx, std::int64_t n_cols, std::int64_t max_rank);

// The largest rank worth a column basis for rows with entries [ptr[r], ptr[r + 1]): one that some row can use, and
// whose cost (n_cols r^2 / 2) stays below that of the rows' solves over their entries (sum of n^3 / 3).
std::int64_t basis_rank_limit(const std::int64_t* ptr, std::int64_t n_rows, std::int64_t n_cols);

// Fits h_r from a row's n training entries (cols, residuals rho); seed fixes the subset and the held-out fifth.
// basis (may be empty) only changes how the ridges are solved, not the result (up to rounding).
KernelExpansion fit_row_kernel(const std::int64_t* cols, const double* residuals, std::size_t n, const double* x,
                               int fx, std::uint64_t seed, const ColumnBasis& basis = {});

// out[c - first] = h(c) for c in [first, last) (x: the features of every column).
void evaluate_kernel(const KernelExpansion& h, const double* x, int fx, std::int64_t first, std::int64_t last,
                     double* out);

// The multiply-adds of evaluate_kernel for an expansion of n entries over n_cols columns: what load spends on a row
// of the residual table (kMaxLoadedWork). The quadratic form also takes (fx - 1)^2 doubles, at most this cost^(2/3).
double evaluation_cost(std::size_t n, int fx, std::int64_t n_cols);

}  // namespace cf::detail
