#include "linalg.h"

#include <algorithm>
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

namespace {

constexpr std::size_t kBlock = 64;  // columns per panel of the blocked factorisation

// Unblocked Cholesky of the d x d block at a (row stride ld); a pivot not above jitter becomes jitter.
void factor_block(double* a, std::size_t d, std::size_t ld, double jitter) {
  for (std::size_t j = 0; j < d; ++j) {
    double* aj = a + j * ld;
    double s = aj[j] - dot(aj, aj, j);
    if (!(s > jitter)) s = jitter;
    const double l = std::sqrt(s);
    aj[j] = l;
    for (std::size_t i = j + 1; i < d; ++i) a[i * ld + j] = (a[i * ld + j] - dot(a + i * ld, aj, j)) / l;
  }
}

// a_i[j] -= p_i . p_j for the rows i >= j of the trailing lower triangle, p_i = the row's nb panel values (the bulk of
// the work: two rows against four at a time, so that each value loaded serves several products).
void update_trailing(double* a, std::size_t d, std::size_t k, std::size_t nb) {
  const std::size_t first = k + nb;
  auto panel = [&](std::size_t i) { return a + i * d + k; };
  for (std::size_t i = first; i < d; i += 2) {
    const bool pair = i + 1 < d;
    const double* p0 = panel(i);
    const double* p1 = pair ? panel(i + 1) : p0;
    std::size_t j = first;
    for (; j + 3 <= i; j += 4) {
      const double *q0 = panel(j), *q1 = panel(j + 1), *q2 = panel(j + 2), *q3 = panel(j + 3);
      double s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
      for (std::size_t t = 0; t < nb; ++t) {
        const double x0 = p0[t], x1 = p1[t];
        s00 += x0 * q0[t];
        s01 += x0 * q1[t];
        s02 += x0 * q2[t];
        s03 += x0 * q3[t];
        s10 += x1 * q0[t];
        s11 += x1 * q1[t];
        s12 += x1 * q2[t];
        s13 += x1 * q3[t];
      }
      double* a0 = a + i * d + j;
      a0[0] -= s00;
      a0[1] -= s01;
      a0[2] -= s02;
      a0[3] -= s03;
      if (pair) {
        double* a1 = a + (i + 1) * d + j;
        a1[0] -= s10;
        a1[1] -= s11;
        a1[2] -= s12;
        a1[3] -= s13;
      }
    }
    for (; j <= i + (pair ? 1 : 0); ++j) {
      if (j <= i) a[i * d + j] -= dot(p0, panel(j), nb);
      if (pair) a[(i + 1) * d + j] -= dot(p1, panel(j), nb);
    }
  }
}

}  // namespace

void cholesky(double* a, std::size_t d) {
  double scale = 0;
  for (std::size_t i = 0; i < d; ++i) scale = std::fmax(scale, std::fabs(a[i * d + i]));
  const double jitter = 1e-12 * (scale > 0 ? scale : 1.0);
  // Right-looking by panels of kBlock columns: factor the diagonal block, solve the rows below it against it, then
  // subtract the panel's contribution from the trailing lower triangle.
  for (std::size_t k = 0; k < d; k += kBlock) {
    const std::size_t nb = std::min(kBlock, d - k);
    double* akk = a + k * d + k;
    factor_block(akk, nb, d, jitter);
    for (std::size_t i = k + nb; i < d; ++i) {
      double* ai = a + i * d + k;
      for (std::size_t j = 0; j < nb; ++j) ai[j] = (ai[j] - dot(ai, akk + j * d, j)) / akk[j * d + j];
    }
    update_trailing(a, d, k, nb);
  }
}

void solve_lower(const double* l, double* b, std::size_t d) {
  for (std::size_t i = 0; i < d; ++i) {
    double v = b[i];
    for (std::size_t k = 0; k < i; ++k) v -= l[i * d + k] * b[k];
    b[i] = v / l[i * d + i];
  }
}

void solve_lower_t(const double* l, double* b, std::size_t d) {
  for (std::size_t i = d; i-- > 0;) {
    double v = b[i];
    for (std::size_t k = i + 1; k < d; ++k) v -= l[k * d + i] * b[k];
    b[i] = v / l[i * d + i];
  }
}

void cholesky_solve(const double* l, double* b, std::size_t d) {
  solve_lower(l, b, d);
  solve_lower_t(l, b, d);
}

void ridge_solve(double* a, const double* ridge, double* b, std::size_t d) {
  if (ridge)
    for (std::size_t i = 0; i < d; ++i) a[i * d + i] += ridge[i];
  cholesky(a, d);
  cholesky_solve(a, b, d);
}

}  // namespace cf::detail
