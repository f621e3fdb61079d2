// Small dense linear algebra for ridge solves (row-major, double precision).
#pragma once

#include <cstddef>
#include <vector>

namespace cf::detail {

double dot(const double* a, const double* b, std::size_t n);

// In-place Cholesky factorisation of a symmetric positive (semi)definite d x d matrix: its lower triangle becomes L
// with A = L L^T (the strict upper triangle is left as it was). A tiny jitter replaces a non-positive pivot.
void cholesky(double* a, std::size_t d);

// Solves L L^T x = b in place of b, L the lower triangle left by cholesky(): solve_lower, then solve_lower_t.
void cholesky_solve(const double* l, double* b, std::size_t d);
void solve_lower(const double* l, double* b, std::size_t d);    // L y = b
void solve_lower_t(const double* l, double* b, std::size_t d);  // L^T x = b

// Solves (A + diag(ridge)) x = b in place of b for a symmetric positive (semi)definite A (d x d, overwritten).
// ridge may be null. A tiny jitter is added when the factorisation meets a non-positive pivot.
void ridge_solve(double* a, const double* ridge, double* b, std::size_t d);

}  // namespace cf::detail
