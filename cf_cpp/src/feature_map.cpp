#include "feature_map.h"

#include <cmath>

#include "linalg.h"
#include "parallel.h"

namespace cf::detail {

std::vector<double> row_feature_grams(const Compressed& by_row, const double* x, int fx, int threads) {
  const std::int64_t n_rows = static_cast<std::int64_t>(by_row.ptr.size()) - 1;
  const std::size_t f = static_cast<std::size_t>(fx);
  std::vector<double> grams(static_cast<std::size_t>(n_rows) * f * f, 0.0);
  parallel_chunks(n_rows, threads, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t r = lo; r < hi; ++r) {
      double* s = grams.data() + r * f * f;
      for (std::int64_t e = by_row.ptr[r]; e < by_row.ptr[r + 1]; ++e) {
        const double* xc = x + by_row.index[e] * fx;
        for (std::size_t i = 0; i < f; ++i)
          for (std::size_t j = 0; j < f; ++j) s[i * f + j] += xc[i] * xc[j];
      }
    }
  }, 1);
  return grams;
}

namespace {

// out = sum_r a_r (x) (S_r Theta^T a_r) + reg Theta, all dim x fx.
void kron_matvec(const std::vector<double>& grams, const std::vector<double>& a, std::int64_t n_rows, int dim, int fx,
                 double reg, const std::vector<double>& theta, std::vector<double>& out, std::vector<double>& v,
                 int threads) {
  const std::size_t d = static_cast<std::size_t>(dim), f = static_cast<std::size_t>(fx);
  // Spawning threads costs more than a small product: go parallel only for large S_r blocks.
  const bool big = static_cast<double>(n_rows) * static_cast<double>(f * (f + d)) > 4e6;
  parallel_chunks(n_rows, big ? threads : 1, [&](std::int64_t lo, std::int64_t hi) {
    std::vector<double> u(f);
    for (std::int64_t r = lo; r < hi; ++r) {
      const double* ar = a.data() + r * d;
      for (std::size_t j = 0; j < f; ++j) {
        double s = 0;
        for (std::size_t i = 0; i < d; ++i) s += ar[i] * theta[i * f + j];
        u[j] = s;
      }
      const double* sr = grams.data() + r * f * f;
      for (std::size_t j = 0; j < f; ++j) v[r * f + j] = dot(sr + j * f, u.data(), f);
    }
  }, 4);
  for (std::size_t k = 0; k < d * f; ++k) out[k] = reg * theta[k];
  for (std::int64_t r = 0; r < n_rows; ++r)  // fixed order reduction: thread-count independent
    for (std::size_t i = 0; i < d; ++i) {
      double ai = a[r * d + i];
      if (ai == 0) continue;
      for (std::size_t j = 0; j < f; ++j) out[i * f + j] += ai * v[r * f + j];
    }
}

}  // namespace

void solve_theta(const Compressed& by_row, const double* x, int fx, const std::vector<double>& grams,
                 const double* rows, const double* dev, double mu, int dim, double reg, double* theta, int threads) {
  const std::int64_t n_rows = static_cast<std::int64_t>(by_row.ptr.size()) - 1;
  const std::size_t d = static_cast<std::size_t>(dim), f = static_cast<std::size_t>(fx), n = d * f;
  std::vector<double> a(static_cast<std::size_t>(n_rows) * d), g(static_cast<std::size_t>(n_rows) * f, 0.0);
  for (std::int64_t r = 0; r < n_rows; ++r) {
    a[r * d] = 1.0;
    for (std::size_t i = 1; i < d; ++i) a[r * d + i] = rows[r * d + i];
  }
  parallel_chunks(n_rows, threads, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t r = lo; r < hi; ++r) {
      const double* ar = a.data() + r * d;
      for (std::int64_t e = by_row.ptr[r]; e < by_row.ptr[r + 1]; ++e) {
        const std::int64_t c = by_row.index[e];
        double t = by_row.value[e] - mu - rows[r * d] - dot(ar, dev + c * dim, d);
        const double* xc = x + c * fx;
        for (std::size_t j = 0; j < f; ++j) g[r * f + j] += t * xc[j];
      }
    }
  }, 1);
  std::vector<double> b(n, 0.0), precond(n, reg);
  for (std::int64_t r = 0; r < n_rows; ++r)
    for (std::size_t i = 0; i < d; ++i)
      for (std::size_t j = 0; j < f; ++j) {
        b[i * f + j] += a[r * d + i] * g[r * f + j];
        precond[i * f + j] += a[r * d + i] * a[r * d + i] * grams[r * f * f + j * f + j];
      }
  // Preconditioned conjugate gradients. A zero diagonal entry (no ridge, and a feature that is 0 on every measured
  // column or a factor that is 0 in every row) has a zero row and right-hand side: its coordinate stays where it is.
  // Divided by its 0 it was NaN, which stopped the solve at once, leaving all of Theta as it was (0: no prior).
  const auto precondition = [&precond](std::size_t k, double r) { return precond[k] > 0 ? r / precond[k] : r; };
  std::vector<double> th(theta, theta + n), ax(n), v(static_cast<std::size_t>(n_rows) * f), res(n), zv(n), p(n);
  kron_matvec(grams, a, n_rows, dim, fx, reg, th, ax, v, threads);
  double bnorm = std::sqrt(dot(b.data(), b.data(), n)) + 1e-300;
  for (std::size_t k = 0; k < n; ++k) {
    res[k] = b[k] - ax[k];
    zv[k] = precondition(k, res[k]);
    p[k] = zv[k];
  }
  double rz = dot(res.data(), zv.data(), n);
  const int max_iter = static_cast<int>(std::min<std::size_t>(n, 200));
  for (int it = 0; it < max_iter; ++it) {
    if (std::sqrt(dot(res.data(), res.data(), n)) <= 1e-9 * bnorm) break;
    kron_matvec(grams, a, n_rows, dim, fx, reg, p, ax, v, threads);
    double pap = dot(p.data(), ax.data(), n);
    if (!(pap > 0)) break;
    double alpha = rz / pap;
    for (std::size_t k = 0; k < n; ++k) {
      th[k] += alpha * p[k];
      res[k] -= alpha * ax[k];
      zv[k] = precondition(k, res[k]);
    }
    double rz_new = dot(res.data(), zv.data(), n);
    double beta = rz_new / rz;
    rz = rz_new;
    for (std::size_t k = 0; k < n; ++k) p[k] = zv[k] + beta * p[k];
  }
  std::copy(th.begin(), th.end(), theta);
}

void apply_theta(const double* x, std::int64_t n_cols, int fx, const double* theta, int dim, double* prior) {
  for (std::int64_t c = 0; c < n_cols; ++c)
    for (int i = 0; i < dim; ++i) prior[c * dim + i] = dot(theta + i * fx, x + c * fx, static_cast<std::size_t>(fx));
}

}  // namespace cf::detail
