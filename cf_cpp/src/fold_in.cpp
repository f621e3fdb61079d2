#include "fold_in.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "linalg.h"
#include "normal_equations.h"

namespace cf::detail {

namespace {

// Residual sum of squares of the prior mean theta: sum (t - w . theta)^2.
double residual_ss(const FoldInMoments& m, const double* theta) {
  const std::size_t e = m.e;
  double s = m.tt;
  for (std::size_t i = 0; i < e; ++i) s -= 2 * theta[i] * m.wt[i] - theta[i] * dot(m.gram.data() + i * e, theta, e);
  return s;
}

// For every population row k, with theta = [1, b_k, p_k]: theta' G theta and (G theta)[1] (G = m.gram; its row 1
// holds the sums of the regressors), from the symmetric upper triangle: O(e^2 / 2) per row, kLanes rows at a time in
// registers (prior.lanes). quad and gsum get a multiple of kLanes values (the padding rows are zero).
void gram_forms(const FoldInMoments& m, const FoldInPrior& prior, std::vector<double>& quad, std::vector<double>& gsum) {
  const std::size_t e = m.e, d = e - 1, n_blocks = prior.lanes.size() / (d * kLanes);
  const double* g = m.gram.data();
  quad.assign(n_blocks * kLanes, 0.0);
  gsum.assign(n_blocks * kLanes, 0.0);
  for (std::size_t b = 0; b < n_blocks; ++b) {
    const double* t = prior.lanes.data() + b * d * kLanes;  // t + i kLanes: parameter i of the block's rows
    double q[kLanes], s[kLanes], acc[kLanes];
    for (std::size_t u = 0; u < kLanes; ++u) q[u] = g[0], s[u] = g[e];
    for (std::size_t j = 1; j < e; ++j) {  // theta_0 = 1: q = G_00 + 2 sum_j G_0j theta_j, s = G_10 + sum_j G_1j theta_j
      const double g0 = 2 * g[j], g1 = g[e + j], *tj = t + (j - 1) * kLanes;
      for (std::size_t u = 0; u < kLanes; ++u) q[u] += g0 * tj[u], s[u] += g1 * tj[u];
    }
    for (std::size_t i = 1; i < e; ++i) {  // + theta_i (G_ii theta_i + 2 sum_{j > i} G_ij theta_j)
      const double* ti = t + (i - 1) * kLanes;
      for (std::size_t u = 0; u < kLanes; ++u) acc[u] = g[i * e + i] * ti[u];
      for (std::size_t j = i + 1; j < e; ++j) {
        const double gij = 2 * g[i * e + j], *tj = t + (j - 1) * kLanes;
        for (std::size_t u = 0; u < kLanes; ++u) acc[u] += gij * tj[u];
      }
      for (std::size_t u = 0; u < kLanes; ++u) q[u] += ti[u] * acc[u];
    }
    std::copy(q, q + kLanes, quad.begin() + static_cast<std::ptrdiff_t>(b * kLanes));
    std::copy(s, s + kLanes, gsum.begin() + static_cast<std::ptrdiff_t>(b * kLanes));
  }
}

}  // namespace

FoldInPrior make_prior(const std::vector<double>& rows, const std::vector<std::int64_t>& row_counts, int dim) {
  const std::size_t d = static_cast<std::size_t>(dim);
  FoldInPrior prior;
  for (std::size_t r = 0; r < row_counts.size(); ++r)
    if (row_counts[r] > 0) prior.population.push_back(static_cast<std::int64_t>(r));
  if (prior.population.empty()) return prior;
  const double np = static_cast<double>(prior.population.size());
  std::vector<double> mean(d, 0.0), cov(d * d, 0.0);
  for (std::int64_t r : prior.population)
    for (std::size_t i = 0; i < d; ++i) mean[i] += rows[r * dim + i] / np;
  for (std::int64_t r : prior.population) {
    const double* a = rows.data() + r * dim;
    for (std::size_t i = 0; i < d; ++i)
      for (std::size_t j = i; j < d; ++j) cov[i * d + j] += (a[i] - mean[i]) * (a[j] - mean[j]) / np;
  }
  for (std::size_t i = 0; i < d; ++i) {
    cov[i * d + i] += kFoldInJitter;
    for (std::size_t j = 0; j < i; ++j) cov[i * d + j] = cov[j * d + i];
  }
  prior.lanes.assign((prior.population.size() + kLanes - 1) / kLanes * kLanes * d, 0.0);
  for (std::size_t k = 0; k < prior.population.size(); ++k)
    for (std::size_t i = 0; i < d; ++i)
      prior.lanes[(k / kLanes * d + i) * kLanes + k % kLanes] = rows[prior.population[k] * dim + i];
  prior.mean = std::move(mean);
  prior.covariance = std::move(cov);
  return prior;
}

FoldInMoments fold_in_moments(const std::int64_t* cols, const double* logy, std::size_t n, const double* z, double mu,
                              int dim) {
  const std::size_t d = static_cast<std::size_t>(dim), e = d + 1;
  // The blocked kernel of the ALS solves accumulates over the regressors [1, z_c[0], z_c[1:]]; reordered below.
  NormalEquations ne(e);
  std::vector<double> buf(e), gram(e * e), xty(e);
  FoldInMoments m{e, std::vector<double>(e * e), std::vector<double>(e), 0.0};
  for (std::size_t k = 0; k < n; ++k) {
    const double* zc = z + cols[k] * dim;
    std::copy(zc, zc + d, buf.begin() + 1);  // buf[0] is ignored (the constant regressor)
    ne.add_with_bias(buf.data(), logy[k] - mu);
    m.tt += (logy[k] - mu) * (logy[k] - mu);
  }
  ne.moments(gram.data(), xty.data());
  auto at = [](std::size_t i) { return i < 2 ? 1 - i : i; };  // [1, z0, q] -> [z0, 1, q]
  for (std::size_t i = 0; i < e; ++i) {
    m.wt[i] = xty[at(i)];
    for (std::size_t j = 0; j < e; ++j) m.gram[i * e + j] = gram[at(i) * e + at(j)];
  }
  return m;
}

void shift_moments(const FoldInMoments& m, const std::int64_t* cols, const double* logy, std::size_t n,
                   const double* z, double mu, int dim, const double* h, FoldInMoments& out) {
  out.wt = m.wt;
  out.tt = m.tt;
  for (std::size_t k = 0; k < n; ++k) {
    const double* zc = z + cols[k] * dim;
    const double hk = h[cols[k]], t = logy[k] - mu;
    out.wt[0] -= zc[0] * hk;  // regressors [z_c[0], 1, z_c[1:]]
    out.wt[1] -= hk;
    for (int i = 1; i < dim; ++i) out.wt[static_cast<std::size_t>(i) + 1] -= zc[i] * hk;
    out.tt += hk * hk - 2 * t * hk;
  }
}

// With cov = L L' and B = L' W'W L: the posterior mean is theta + L u, (s2 I + B) u = L' W'(t - W theta), and
// -2 log evidence = (r'r - r'W L u) / s2 + log det(s2 I + B) + const, r = t - W theta (Woodbury and Sylvester).
FoldInPosterior gaussian_posterior(const FoldInMoments& m, const std::vector<double>& theta, std::vector<double> cov,
                                   double s2) {
  const std::size_t e = m.e;
  std::vector<double>& l = cov;
  cholesky(l.data(), e);  // lower triangle: L
  std::vector<double> r(e), ml(e * e, 0.0), lhs(e * e, 0.0), u(e, 0.0);
  for (std::size_t i = 0; i < e; ++i) r[i] = m.wt[i] - dot(m.gram.data() + i * e, theta.data(), e);  // W'r
  // Row-wise loops (contiguous inner index) over the lower triangle of L.
  for (std::size_t i = 0; i < e; ++i)  // ml = W'W L
    for (std::size_t k = 0; k < e; ++k) {
      const double g = m.gram[i * e + k];
      for (std::size_t j = 0; j <= k; ++j) ml[i * e + j] += g * l[k * e + j];
    }
  for (std::size_t k = 0; k < e; ++k)  // lower triangle of L' ml, u = L' W'r
    for (std::size_t i = 0; i <= k; ++i) {
      const double lki = l[k * e + i];
      for (std::size_t j = 0; j <= i; ++j) lhs[i * e + j] += lki * ml[k * e + j];
      u[i] += lki * r[k];
    }
  for (std::size_t i = 0; i < e; ++i) {  // lhs = s2 I + L' ml (symmetric)
    lhs[i * e + i] += s2;
    for (std::size_t j = 0; j < i; ++j) lhs[j * e + i] = lhs[i * e + j];
  }
  const std::vector<double> ltr = u;
  cholesky(lhs.data(), e);
  double log_det = 0;
  for (std::size_t i = 0; i < e; ++i) log_det += 2 * std::log(lhs[i * e + i]);
  cholesky_solve(lhs.data(), u.data(), e);
  FoldInPosterior out{theta, 0.0};
  for (std::size_t i = 0; i < e; ++i)
    for (std::size_t k = 0; k <= i; ++k) out.mean[i] += l[i * e + k] * u[k];
  const double quad = (residual_ss(m, theta.data()) - dot(ltr.data(), u.data(), e)) / s2;
  out.log_evidence = -0.5 * (quad + log_det);
  return out;
}

FoldedRow fold_in(const std::int64_t* cols, const double* logy, std::size_t n, const double* z, double mu, int dim,
                  const double* rows, const FoldInPrior& prior, double noise_var, const double* residuals,
                  std::int64_t n_cols) {
  const std::size_t d = static_cast<std::size_t>(dim), e = d + 1;
  FoldedRow out{prior.mean, 1.0, {}};
  if (n == 0) return out;
  const FoldInMoments m = fold_in_moments(cols, logy, n, z, mu, dim);
  const double s2 = kFoldInNoiseFactor * std::max(noise_var, 1e-12);
  // Each expert's moments: those of t - h_r with kernel residuals (in one scratch copy, valid until the next
  // call), else the shared ones.
  FoldInMoments shifted = residuals ? m : FoldInMoments{};
  auto moments_of = [&](std::int64_t r) -> const FoldInMoments& {
    if (!residuals) return m;
    shift_moments(m, cols, logy, n, z, mu, dim, residuals + r * n_cols, shifted);
    return shifted;
  };

  // A component's prior: mean [1, bp], covariance spread C + sigma_0^2 e_b e_b' + sigma_s^2 v v', v = [1, 0, p].
  auto component = [&](const FoldInMoments& mk, const double* bp, double spread) {
    std::vector<double> theta(e, 1.0), s(e * e, 0.0), v(e, 0.0);
    std::copy(bp, bp + d, theta.begin() + 1);
    v[0] = 1.0;
    std::copy(bp + 1, bp + d, v.begin() + 2);
    for (std::size_t i = 0; i < d; ++i)
      for (std::size_t j = 0; j < d; ++j) s[(i + 1) * e + j + 1] = spread * prior.covariance[i * d + j];
    s[e + 1] += kFoldInOffsetStd * kFoldInOffsetStd;
    for (std::size_t i = 0; i < e; ++i)
      for (std::size_t j = 0; j < e; ++j) s[i * e + j] += kFoldInSlopeStd * kFoldInSlopeStd * v[i] * v[j];
    return gaussian_posterior(mk, theta, std::move(s), s2);
  };

  // Experts: all of a small population; of a large one the kMaxExperts whose rows, with a free offset, explain the
  // revealed entries best (the others would get negligible weight). O(n_pop e^2), then O(e^3) per component.
  std::vector<std::int64_t> experts = prior.population;
  if (experts.size() > kMaxExperts) {
    // score = sum r^2 - (sum r)^2 / (n + s2 / sigma_0^2), r = t - w . theta: s2 x (-2 log evidence) of the row with
    // only its offset free (prior N(0, sigma_0^2)), up to a constant. The offset's prior matters where the entries
    // cannot tell rows apart (one entry; a rank-0 model): the row needing the smaller offset is preferred, instead of
    // rounding deciding between exact ties of the plain least-squares score.
    const double nn = static_cast<double>(n) + s2 / (kFoldInOffsetStd * kFoldInOffsetStd);
    std::vector<double> quad, gsum, score(experts.size());
    gram_forms(m, prior, quad, gsum);
    for (std::size_t k = 0; k < experts.size(); ++k) {
      const FoldInMoments& mk = moments_of(experts[k]);
      const double* bp = rows + experts[k] * dim;
      // theta = [1, bp]: r'r = tt - 2 theta . wt + theta' G theta; sum r = wt[1] - (G theta)[1]
      double rr = mk.tt - 2 * mk.wt[0] + quad[k], rsum = mk.wt[1] - gsum[k];
      for (std::size_t i = 0; i < d; ++i) rr -= 2 * bp[i] * mk.wt[i + 1];
      score[k] = rr - rsum * rsum / nn;
    }
    std::vector<std::size_t> order(experts.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    auto better = [&](std::size_t a, std::size_t b) { return score[a] < score[b] || (score[a] == score[b] && a < b); };
    std::partial_sort(order.begin(), order.begin() + kMaxExperts, order.end(), better);
    std::vector<std::int64_t> best(kMaxExperts);
    for (std::size_t k = 0; k < kMaxExperts; ++k) best[k] = experts[order[k]];
    experts = std::move(best);
  }
  std::vector<FoldInPosterior> parts;
  parts.reserve(experts.size() + 1);
  parts.push_back(component(m, prior.mean.data(), kGlobalSpread));
  for (std::int64_t r : experts) parts.push_back(component(moments_of(r), rows + r * dim, kExpertSpread));

  double top = -INFINITY, total = 0;
  for (const FoldInPosterior& p : parts) top = std::max(top, p.log_evidence);
  std::vector<double> a(e, 0.0), w(parts.size());
  for (std::size_t k = 0; k < parts.size(); ++k) {
    w[k] = std::exp(parts[k].log_evidence - top);
    total += w[k];
    for (std::size_t i = 0; i < e; ++i) a[i] += w[k] * parts[k].mean[i];
  }
  for (std::size_t i = 0; i < d; ++i) out.params[i] = a[i + 1] / total;
  out.scale = a[0] / total;
  for (std::size_t k = 0; k < experts.size(); ++k) out.expert_weights.emplace_back(experts[k], w[k + 1] / total);
  return out;
}

}  // namespace cf::detail
