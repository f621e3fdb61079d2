#include "fold_in.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "expert_scores.h"
#include "linalg.h"
#include "normal_equations.h"

namespace cf::detail {

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
  auto root = [&](double spread) {  // lower Cholesky factor of spread C + sigma_0^2 e_b e_b' (the bias: index 0)
    std::vector<double> l(d * d);
    for (std::size_t k = 0; k < d * d; ++k) l[k] = spread * cov[k];
    l[0] += kFoldInOffsetStd * kFoldInOffsetStd;
    cholesky(l.data(), d);
    for (std::size_t i = 0; i < d; ++i) std::fill(l.begin() + i * d + i + 1, l.begin() + (i + 1) * d, 0.0);
    return l;
  };
  prior.expert_root = root(kExpertSpread);
  prior.global_root = root(kGlobalSpread);
  prior.lanes = to_lanes(rows, prior.population, dim);
  prior.mean = std::move(mean);
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

ComponentFamily component_family(const FoldInMoments& m, const std::vector<double>& root, double s2) {
  const std::size_t e = m.e, d = e - 1;
  const double* g = m.gram.data() + e + 1;  // G_bp: rows and columns 1.. of the gram (row stride e)
  const double* l = root.data();
  ComponentFamily f{l, std::vector<double>(d * d, 0.0), 0.0};
  std::vector<double> gl(d * d, 0.0);
  // Row-wise loops (contiguous inner index) over the lower triangle of L_A.
  for (std::size_t i = 0; i < d; ++i)  // gl = G_bp L_A
    for (std::size_t k = 0; k < d; ++k) {
      const double gik = g[i * e + k];
      for (std::size_t j = 0; j <= k; ++j) gl[i * d + j] += gik * l[k * d + j];
    }
  for (std::size_t k = 0; k < d; ++k)  // lower triangle of L_A' gl
    for (std::size_t i = 0; i <= k; ++i) {
      const double lki = l[k * d + i];
      for (std::size_t j = 0; j <= i; ++j) f.chol[i * d + j] += lki * gl[k * d + j];
    }
  for (std::size_t i = 0; i < d; ++i) f.chol[i * d + i] += s2;
  cholesky(f.chol.data(), d);
  for (std::size_t i = 0; i < d; ++i) f.log_det += 2 * std::log(f.chol[i * d + i]);
  return f;
}

// In the blocks of K = s2 I + M' G M = [kappa, beta'; beta, K_0] with y = M' W'r = [y0; y1], r = t - W theta:
// kappa = s2 + sigma_s^2 v'Gv, beta = sigma_s L_A' (G v)_bp, y0 = sigma_s v'W'r, y1 = L_A' (W'r)_bp. With
// q = R^-1 beta, z = R^-1 y1 and the Schur complement c = kappa - q'q: u0 = (y0 - q'z) / c, u1 = R^-T (z - q u0),
// y'u = y0 u0 + z'(z - q u0), log det K = log det K_0 + log c. Then the mean is theta + M u and
// -2 log evidence = (r'r - y'u) / s2 + log det K (up to the shared constant), r'r = tt - theta'(wt + W'r).
FoldInPosterior component_posterior(const FoldInMoments& m, const ComponentFamily& f, const double* bp, double s2) {
  const std::size_t e = m.e, d = e - 1;
  const double* g = m.gram.data();
  const double* l = f.root;
  constexpr double ss = kFoldInSlopeStd;
  std::vector<double> theta(e, 1.0), gv(e), wr(e), q(d, 0.0), z(d, 0.0);
  std::copy(bp, bp + d, theta.begin() + 1);
  std::vector<double> v = theta;  // [1, 0, p]
  v[1] = 0.0;
  for (std::size_t i = 0; i < e; ++i) {  // G v and W'r = wt - G theta (G symmetric: by rows)
    gv[i] = dot(g + i * e, v.data(), e);
    wr[i] = m.wt[i] - dot(g + i * e, theta.data(), e);
  }
  for (std::size_t k = 0; k < d; ++k)  // L_A' (G v)_bp and L_A' (W'r)_bp
    for (std::size_t i = 0; i <= k; ++i) {
      q[i] += l[k * d + i] * gv[k + 1];
      z[i] += l[k * d + i] * wr[k + 1];
    }
  for (double& qi : q) qi *= ss;
  solve_lower(f.chol.data(), q.data(), d);
  solve_lower(f.chol.data(), z.data(), d);
  const double c = s2 + ss * ss * dot(v.data(), gv.data(), e) - dot(q.data(), q.data(), d);
  const double y0 = ss * dot(v.data(), wr.data(), e);
  const double u0 = (y0 - dot(q.data(), z.data(), d)) / c;
  std::vector<double> u1(d);
  for (std::size_t i = 0; i < d; ++i) u1[i] = z[i] - q[i] * u0;
  const double yu = y0 * u0 + dot(z.data(), u1.data(), d);
  solve_lower_t(f.chol.data(), u1.data(), d);
  FoldInPosterior out{theta, 0.0};
  for (std::size_t i = 0; i < e; ++i) out.mean[i] += ss * v[i] * u0;
  for (std::size_t i = 0; i < d; ++i)  // + (0; L_A u1)
    for (std::size_t k = 0; k <= i; ++k) out.mean[i + 1] += l[i * d + k] * u1[k];
  const double rr = m.tt - dot(theta.data(), m.wt.data(), e) - dot(theta.data(), wr.data(), e);
  out.log_evidence = -0.5 * ((rr - yu) / s2 + f.log_det + std::log(c));
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

  // Experts: all of a small population; of a large one the kMaxExperts whose rows, with a free offset, explain the
  // revealed entries best (the others would get negligible weight). O(n_pop e^2), then O(e^2) per component.
  std::vector<std::int64_t> experts = prior.population;
  if (experts.size() > kMaxExperts) {
    // score = sum r^2 - (sum r)^2 / (n + s2 / sigma_0^2), r = t - w . theta: s2 x (-2 log evidence) of the row with
    // only its offset free (prior N(0, sigma_0^2)), up to a constant. The offset's prior matters where the entries
    // cannot tell rows apart (one entry; a rank-0 model): the row needing the smaller offset is preferred, instead of
    // rounding deciding between exact ties of the plain least-squares score.
    const double nn = static_cast<double>(n) + s2 / (kFoldInOffsetStd * kFoldInOffsetStd);
    std::vector<double> quad, gsum, score(experts.size());
    gram_forms(m.gram, e, prior.lanes, quad, gsum);
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
  // Components: prior mean [1, bp], covariance spread C + sigma_0^2 e_b e_b' + sigma_s^2 v v', v = [1, 0, p].
  const ComponentFamily global = component_family(m, prior.global_root, s2);
  const ComponentFamily expert = component_family(m, prior.expert_root, s2);
  parts.push_back(component_posterior(m, global, prior.mean.data(), s2));
  for (std::int64_t r : experts) parts.push_back(component_posterior(moments_of(r), expert, rows + r * dim, s2));

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
