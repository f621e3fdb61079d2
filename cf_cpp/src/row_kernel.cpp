#include "row_kernel.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "linalg.h"
#include "rng.h"

namespace cf::detail {

namespace {

const double kWithin10 = std::log(1.1);  // |log ratio| within which a prediction is within +-10%

// Whether evaluate_kernel sums an expansion of n terms over nf features as a quadratic form (or term by term).
bool by_quadratic_form(std::size_t n, std::size_t nf) { return n >= nf; }

// K[i * nb + j] = k(x_{a_i}, x_{b_j}).
std::vector<double> gram(const std::int64_t* a, std::size_t na, const std::int64_t* b, std::size_t nb,
                         const double* x, int fx) {
  std::vector<double> k(na * nb);
  for (std::size_t i = 0; i < na; ++i)
    for (std::size_t j = 0; j < nb; ++j) k[i * nb + j] = poly_kernel(x + a[i] * fx, x + b[j] * fx, fx);
  return k;
}

// x of (A + ridge I) x = b; a and b are consumed.
std::vector<double> solve(std::vector<double> a, std::vector<double> b, double ridge) {
  const std::vector<double> diag(b.size(), ridge);
  ridge_solve(a.data(), diag.data(), b.data(), b.size());
  return b;
}

// The ridges of a row's m entries c (the first `held` held out, the rest kept) over the entries: (K + ridge I) alpha
// = rho, O(m^3).
class DualRidge {
 public:
  DualRidge(const std::vector<std::int64_t>& c, const std::vector<double>& rho, std::size_t held, const double* x,
            int fx)
      : c_(c), rho_(rho), held_(held), kept_(c.size() - held), x_(x), fx_(fx),
        k_kept_(gram(c.data() + held, kept_, c.data() + held, kept_, x, fx)),
        k_cross_(gram(c.data(), held, c.data() + held, kept_, x, fx)) {}

  // The fits of the held-out entries by the ridge on the kept ones.
  std::vector<double> held_fits(double ridge) const {
    const std::vector<double> alpha = solve(k_kept_, {rho_.begin() + static_cast<std::ptrdiff_t>(held_), rho_.end()},
                                            ridge);
    std::vector<double> fits(held_);
    for (std::size_t i = 0; i < held_; ++i) fits[i] = dot(k_cross_.data() + i * kept_, alpha.data(), kept_);
    return fits;
  }

  // alpha of the ridge on all entries.
  std::vector<double> alpha(double ridge) const {
    return solve(gram(c_.data(), c_.size(), c_.data(), c_.size(), x_, fx_), rho_, ridge);
  }

 private:
  const std::vector<std::int64_t>& c_;
  const std::vector<double>& rho_;
  std::size_t held_, kept_;
  const double* x_;
  int fx_;
  std::vector<double> k_kept_, k_cross_;
};

// The same ridges in the basis: with K = L L^T, (L'L + ridge I) w = L' rho and alpha = (rho - L w) / ridge,
// O(m r^2 + r^3) for rank r.
class PrimalRidge {
 public:
  PrimalRidge(const std::vector<std::int64_t>& c, const std::vector<double>& rho, std::size_t held,
              const ColumnBasis& basis)
      : rho_(rho), held_(held), r_(static_cast<std::size_t>(basis.rank)), l_(c.size() * r_),
        g_kept_(r_ * r_, 0.0), g_held_(r_ * r_, 0.0), b_kept_(r_, 0.0), b_held_(r_, 0.0) {
    const auto n = static_cast<std::size_t>(basis.n_cols);
    for (std::size_t i = 0; i < c.size(); ++i)
      for (std::size_t k = 0; k < r_; ++k) l_[i * r_ + k] = basis.l[k * n + static_cast<std::size_t>(c[i])];
    for (std::size_t i = 0; i < c.size(); ++i) {  // lower triangles of L'L and L'rho, held-out and kept apart
      std::vector<double>& g = i < held ? g_held_ : g_kept_;
      std::vector<double>& b = i < held ? b_held_ : b_kept_;
      const double* li = l_.data() + i * r_;
      for (std::size_t a = 0; a < r_; ++a) {
        for (std::size_t e = 0; e <= a; ++e) g[a * r_ + e] += li[a] * li[e];
        b[a] += li[a] * rho[i];
      }
    }
  }

  std::vector<double> held_fits(double ridge) const {
    const std::vector<double> w = solve(g_kept_, b_kept_, ridge);
    std::vector<double> fits(held_);
    for (std::size_t i = 0; i < held_; ++i) fits[i] = dot(l_.data() + i * r_, w.data(), r_);
    return fits;
  }

  std::vector<double> alpha(double ridge) const {
    std::vector<double> g(g_kept_), b(b_kept_);
    for (std::size_t i = 0; i < g.size(); ++i) g[i] += g_held_[i];
    for (std::size_t i = 0; i < b.size(); ++i) b[i] += b_held_[i];
    const std::vector<double> w = solve(std::move(g), std::move(b), ridge);
    std::vector<double> alpha(rho_.size());
    for (std::size_t i = 0; i < alpha.size(); ++i) alpha[i] = (rho_[i] - dot(l_.data() + i * r_, w.data(), r_)) / ridge;
    return alpha;
  }

 private:
  const std::vector<double>& rho_;
  std::size_t held_, r_;
  std::vector<double> l_, g_kept_, g_held_, b_kept_, b_held_;
};

// The ridge that brings the most held-out residuals within +-10% (none if no ridge beats no correction), fitted on
// all entries.
template <class Ridge>
KernelExpansion choose_ridge(const Ridge& ridges, std::vector<std::int64_t> c, const std::vector<double>& rho,
                             std::size_t held) {
  auto hits = [&](const std::vector<double>& fits) {
    std::size_t h = 0;
    for (std::size_t i = 0; i < held; ++i) h += std::fabs(rho[i] - fits[i]) <= kWithin10;
    return h;
  };
  std::size_t best_hits = hits(std::vector<double>(held, 0.0));
  double best_ridge = -1;  // none: no correction
  for (double ridge : kKernelRidges) {
    const std::size_t h = hits(ridges.held_fits(ridge));
    if (h > best_hits) {
      best_hits = h;
      best_ridge = ridge;
    }
  }
  if (best_ridge < 0) return {};
  return {std::move(c), ridges.alpha(best_ridge)};
}

}  // namespace

double poly_kernel(const double* xa, const double* xb, int fx) {
  const int nf = fx - 1;
  const double s = 1.0 + dot(xa, xb, static_cast<std::size_t>(nf)) / std::max(nf, 1);
  return s * s;
}

ColumnBasis column_basis(const double* x, int fx, std::int64_t n_cols, std::int64_t max_rank) {
  if (n_cols <= 0 || fx <= 1) return {};
  const auto n = static_cast<std::size_t>(n_cols);
  std::vector<double> remainder(n);  // k(x_c, x_c) minus what the dimensions so far explain
  for (std::size_t c = 0; c < n; ++c) remainder[c] = poly_kernel(x + c * fx, x + c * fx, fx);
  const double stop = kBasisTolerance * *std::max_element(remainder.begin(), remainder.end());
  ColumnBasis basis{0, n_cols, {}};
  // Room for every dimension allowed (pages are only touched as dimensions are added), so that adding one never
  // moves the others: the basis is the biggest transient of a fit (tens of MB at 40,000 columns).
  basis.l.reserve(n * static_cast<std::size_t>(std::clamp<std::int64_t>(max_rank, 0, n_cols)));
  for (;;) {
    const auto p = static_cast<std::size_t>(std::max_element(remainder.begin(), remainder.end()) - remainder.begin());
    if (remainder[p] <= stop) break;
    if (basis.rank == max_rank) return {};
    const std::size_t k = static_cast<std::size_t>(basis.rank);
    basis.l.resize((k + 1) * n);
    double* l = basis.l.data() + k * n;
    for (std::size_t c = 0; c < n; ++c) l[c] = poly_kernel(x + c * fx, x + p * fx, fx);
    for (std::size_t j = 0; j < k; ++j) {
      const double* d = basis.l.data() + j * n;
      for (std::size_t c = 0; c < n; ++c) l[c] -= d[c] * d[p];
    }
    const double pivot = std::sqrt(remainder[p]);
    for (std::size_t c = 0; c < n; ++c) {
      l[c] /= pivot;
      remainder[c] -= l[c] * l[c];
    }
    remainder[p] = 0;
    ++basis.rank;
  }
  return basis;
}

std::int64_t basis_rank_limit(const std::int64_t* ptr, std::int64_t n_rows, std::int64_t n_cols) {
  double largest = 0, dual_cost = 0;
  for (std::int64_t r = 0; r < n_rows; ++r) {
    const auto n = static_cast<double>(std::min<std::int64_t>(ptr[r + 1] - ptr[r], kKernelMaxEntries));
    if (n < kKernelMinEntries) continue;
    largest = std::max(largest, n);
    dual_cost += n * n * n / 3;
  }
  const double affordable = std::sqrt(2 * dual_cost / static_cast<double>(std::max<std::int64_t>(n_cols, 1)));
  return static_cast<std::int64_t>(std::min(largest / static_cast<double>(kBasisEntriesPerDim), affordable));
}

KernelExpansion fit_row_kernel(const std::int64_t* cols, const double* residuals, std::size_t n, const double* x,
                               int fx, std::uint64_t seed, const ColumnBasis& basis) {
  if (n < kKernelMinEntries || fx <= 1) return {};
  // A random order (Fisher-Yates): its first kKernelMaxEntries are the subset, the subset's first fifth is held out.
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  NormalRng rng(seed);
  for (std::size_t i = n - 1; i > 0; --i) std::swap(order[i], order[rng.index(i + 1)]);
  const std::size_t m = std::min(n, kKernelMaxEntries), held = m / 5;
  std::vector<std::int64_t> c(m);
  std::vector<double> rho(m);
  for (std::size_t i = 0; i < m; ++i) {
    c[i] = cols[order[i]];
    rho[i] = residuals[order[i]];
  }
  if (basis.rank > 0 && kBasisEntriesPerDim * static_cast<std::size_t>(basis.rank) <= m)
    return choose_ridge(PrimalRidge(c, rho, held, basis), c, rho, held);
  return choose_ridge(DualRidge(c, rho, held, x, fx), c, rho, held);
}

void evaluate_kernel(const KernelExpansion& h, const double* x, int fx, std::int64_t first, std::int64_t last,
                     double* out) {
  const std::size_t n = h.cols.size(), nf = static_cast<std::size_t>(std::max(fx - 1, 0));
  if (!by_quadratic_form(n, nf)) {  // the expansion itself is cheaper: O(n F) per column
    for (std::int64_t c = first; c < last; ++c) {
      double s = 0;
      for (std::size_t i = 0; i < n; ++i) s += h.alpha[i] * poly_kernel(x + h.cols[i] * fx, x + c * fx, fx);
      out[c - first] = s;
    }
    return;
  }
  // sum_i alpha_i (1 + x_i.x/F)^2 = s + 2 v.x / F + x'Ax / F^2 with s = sum alpha_i, v = sum alpha_i x_i and
  // A = sum alpha_i x_i x_i': O(F^2) per column.
  double s = 0;
  std::vector<double> v(nf, 0.0), a(nf * nf, 0.0), ax(nf);
  for (std::size_t i = 0; i < n; ++i) {
    const double* xi = x + h.cols[i] * fx;
    s += h.alpha[i];
    for (std::size_t j = 0; j < nf; ++j) {
      const double wj = h.alpha[i] * xi[j];
      v[j] += wj;
      for (std::size_t e = 0; e < nf; ++e) a[j * nf + e] += wj * xi[e];
    }
  }
  const double inv = 1.0 / static_cast<double>(std::max<std::size_t>(nf, 1));
  for (std::int64_t c = first; c < last; ++c) {
    const double* xc = x + c * fx;
    for (std::size_t j = 0; j < nf; ++j) ax[j] = dot(a.data() + j * nf, xc, nf);
    out[c - first] = s + 2 * inv * dot(v.data(), xc, nf) + inv * inv * dot(ax.data(), xc, nf);
  }
}

double evaluation_cost(std::size_t n, int fx, std::int64_t n_cols) {
  const auto nf = static_cast<std::size_t>(std::max(fx - 1, 0));
  const double terms = static_cast<double>(n), f = static_cast<double>(nf), cols = static_cast<double>(n_cols);
  return terms + cols + (by_quadratic_form(n, nf) ? f * f * (terms + cols) : terms * f * cols);
}

}  // namespace cf::detail
