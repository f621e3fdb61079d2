// The feature prior Theta (dim x fx): column prior z_c = Theta x_c, fitted against the data with the rows and the
// column deviations fixed:  min sum_obs (y - mu - b_r - a_r . (Theta x_c + e_c))^2 + reg |Theta|^2,  a_r = [1, p_r].
// The normal equations have Kronecker structure sum_r (a_r a_r^T) (x) S_r with S_r = sum_{c in row r} x_c x_c^T, so
// they are solved matrix-free by preconditioned conjugate gradients, warm-started from the current Theta.
#pragma once

#include <vector>

#include "sparse.h"

namespace cf::detail {

// S_r for every row: n_rows x fx x fx.
std::vector<double> row_feature_grams(const Compressed& by_row, const double* x, int fx, int threads);

void solve_theta(const Compressed& by_row, const double* x, int fx, const std::vector<double>& grams,
                 const double* rows, const double* dev, double mu, int dim, double reg, double* theta, int threads);

// prior (n_cols x dim) = X Theta^T.
void apply_theta(const double* x, std::int64_t n_cols, int fx, const double* theta, int dim, double* prior);

}  // namespace cf::detail
