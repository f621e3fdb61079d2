#include "row_kernel.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "linalg.h"
#include "rng.h"

namespace cf::detail {

namespace {

const double kWithin10 = std::log(1.1);  // |log ratio| within which a prediction is within +-10%

// K[i * nb + j] = k(x_{a_i}, x_{b_j}).
std::vector<double> gram(const std::int64_t* a, std::size_t na, const std::int64_t* b, std::size_t nb,
                         const double* x, int fx) {
  std::vector<double> k(na * nb);
  for (std::size_t i = 0; i < na; ++i)
    for (std::size_t j = 0; j < nb; ++j) k[i * nb + j] = poly_kernel(x + a[i] * fx, x + b[j] * fx, fx);
  return k;
}

// alpha of (K + ridge I) alpha = rho; k is consumed.
std::vector<double> solve(std::vector<double> k, std::vector<double> rho, double ridge) {
  const std::vector<double> diag(rho.size(), ridge);
  ridge_solve(k.data(), diag.data(), rho.data(), rho.size());
  return rho;
}

}  // namespace

double poly_kernel(const double* xa, const double* xb, int fx) {
  const int nf = fx - 1;
  const double s = 1.0 + dot(xa, xb, static_cast<std::size_t>(nf)) / std::max(nf, 1);
  return s * s;
}

KernelExpansion fit_row_kernel(const std::int64_t* cols, const double* residuals, std::size_t n, const double* x,
                               int fx, std::uint64_t seed) {
  if (n < kKernelMinEntries || fx <= 1) return {};
  // A random order (Fisher-Yates): its first kKernelMaxEntries are the subset, the subset's first fifth is held out.
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  NormalRng rng(seed);
  for (std::size_t i = n - 1; i > 0; --i) std::swap(order[i], order[rng.index(i + 1)]);
  const std::size_t m = std::min(n, kKernelMaxEntries), held = m / 5, kept = m - held;
  std::vector<std::int64_t> c(m);
  std::vector<double> rho(m);
  for (std::size_t i = 0; i < m; ++i) {
    c[i] = cols[order[i]];
    rho[i] = residuals[order[i]];
  }
  const std::int64_t* c_held = c.data();
  const std::int64_t* c_kept = c.data() + held;
  const std::vector<double> k_kept = gram(c_kept, kept, c_kept, kept, x, fx);
  const std::vector<double> k_cross = gram(c_held, held, c_kept, kept, x, fx);
  const std::vector<double> rho_kept(rho.begin() + static_cast<std::ptrdiff_t>(held), rho.end());

  auto hits = [&](const std::vector<double>* alpha) {
    std::size_t h = 0;
    for (std::size_t i = 0; i < held; ++i) {
      const double fit = alpha ? dot(k_cross.data() + i * kept, alpha->data(), kept) : 0.0;
      h += std::fabs(rho[i] - fit) <= kWithin10;
    }
    return h;
  };
  std::size_t best_hits = hits(nullptr);
  double best_ridge = -1;  // none: no correction
  for (double ridge : kKernelRidges) {
    const std::vector<double> alpha = solve(k_kept, rho_kept, ridge);
    const std::size_t h = hits(&alpha);
    if (h > best_hits) {
      best_hits = h;
      best_ridge = ridge;
    }
  }
  if (best_ridge < 0) return {};
  return {c, solve(gram(c.data(), m, c.data(), m, x, fx), rho, best_ridge)};
}

void evaluate_kernel(const KernelExpansion& h, const double* x, int fx, std::int64_t n_cols, double* out) {
  for (std::int64_t c = 0; c < n_cols; ++c) {
    double s = 0;
    for (std::size_t i = 0; i < h.cols.size(); ++i) s += h.alpha[i] * poly_kernel(x + h.cols[i] * fx, x + c * fx, fx);
    out[c] = s;
  }
}

}  // namespace cf::detail
