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
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "cf_cpp/model.h"

namespace cf::detail {

using cf::KernelExpansion;

constexpr double kKernelRidges[] = {0.01, 0.1, 1.0, 10.0};
constexpr std::size_t kKernelMinEntries = 20;    // rows with fewer entries get no correction
constexpr std::size_t kKernelMaxEntries = 1000;  // rows with more fit on a random subset of this size (O(n^3) solves)

// x: n_cols x fx standardised features, the last of the fx values the prior's intercept (ignored here).
double poly_kernel(const double* xa, const double* xb, int fx);

// Fits h_r from a row's n training entries (cols, residuals rho); seed fixes the subset and the held-out fifth.
KernelExpansion fit_row_kernel(const std::int64_t* cols, const double* residuals, std::size_t n, const double* x,
                               int fx, std::uint64_t seed);

// out[c] = h(c) for c in [0, n_cols).
void evaluate_kernel(const KernelExpansion& h, const double* x, int fx, std::int64_t n_cols, double* out);

}  // namespace cf::detail
