#include "linalg.h"

#include <cmath>

namespace cf::detail {

double dot(const double* a, const double* b, std::size_t n) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  std::size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
  }
  for (; i < n; ++i) s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
}

void cholesky(double* a, std::size_t d) {
  double scale = 0;
  for (std::size_t i = 0; i < d; ++i) scale = std::fmax(scale, std::fabs(a[i * d + i]));
  const double jitter = 1e-12 * (scale > 0 ? scale : 1.0);
  for (std::size_t j = 0; j < d; ++j) {
    double s = a[j * d + j];
    for (std::size_t k = 0; k < j; ++k) s -= a[j * d + k] * a[j * d + k];
    if (!(s > jitter)) s = jitter;
    double l = std::sqrt(s);
    a[j * d + j] = l;
    for (std::size_t i = j + 1; i < d; ++i) {
      double v = a[i * d + j];
      for (std::size_t k = 0; k < j; ++k) v -= a[i * d + k] * a[j * d + k];
      a[i * d + j] = v / l;
    }
  }
}

void cholesky_solve(const double* l, double* b, std::size_t d) {
  for (std::size_t i = 0; i < d; ++i) {  // L y = b
    double v = b[i];
    for (std::size_t k = 0; k < i; ++k) v -= l[i * d + k] * b[k];
    b[i] = v / l[i * d + i];
  }
  for (std::size_t i = d; i-- > 0;) {  // L^T x = y
    double v = b[i];
    for (std::size_t k = i + 1; k < d; ++k) v -= l[k * d + i] * b[k];
    b[i] = v / l[i * d + i];
  }
}

void ridge_solve(double* a, const double* ridge, double* b, std::size_t d) {
  if (ridge)
    for (std::size_t i = 0; i < d; ++i) a[i * d + i] += ridge[i];
  cholesky(a, d);
  cholesky_solve(a, b, d);
}

}  // namespace cf::detail
