// The two half-steps of alternating least squares, as independent ridge solves per row / per column.
#pragma once

#include <atomic>
#include <cstdint>

#include "sparse.h"

namespace cf::detail {

// One row: minimise sum_c (y_c - mu - z_c[0] - p . z_c[1:] - b)^2 + sum_i ridge_i (a_i - prior_i)^2 over
// a = [b, p]. cols / logy are the row's observations; prior may be null (= 0). Writes dim values to out.
void solve_row(const std::int64_t* cols, const double* logy, std::int64_t n, const double* z, double mu, int dim,
               const double* ridge, const double* prior, double* out);

// All rows of by_row (rows is n_rows x dim, updated in place). Once `stop` (may be null) is set, the rows not solved
// yet are left as they were (the caller then discards them all).
void solve_rows(const Compressed& by_row, const double* z, double mu, int dim, const double* ridge, double* rows,
                int threads, const std::atomic<bool>* stop = nullptr);

// All columns: e_c = argmin sum_r (y - mu - b_r - [1, p_r] . (prior_c + e))^2 + sum_i ridge_i e_i^2, with
// prior (n_cols x dim) null meaning 0. Columns without observations get e_c = 0. `stop` as for solve_rows.
void solve_cols(const Compressed& by_col, const double* rows, const double* prior, double mu, int dim,
                const double* ridge, double* dev, int threads, const std::atomic<bool>* stop = nullptr);

}  // namespace cf::detail
