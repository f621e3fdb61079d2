// Small dense linear algebra for ridge solves (row-major, double precision).
#pragma once

#include <cstddef>
#include <vector>

namespace cf::detail {

double dot(const double* a, const double* b, std::size_t n);

// Solves (A + diag(ridge)) x = b in place of b for a symmetric positive (semi)definite A (d x d, overwritten).
// ridge may be null. A tiny jitter is added when the factorisation meets a non-positive pivot.
void ridge_solve(double* a, const double* ridge, double* b, std::size_t d);

}  // namespace cf::detail
