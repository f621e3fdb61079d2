#include "fold_in.h"

#include <algorithm>
#include <cmath>

#include "linalg.h"
#include "normal_equations.h"

namespace cf::detail {

namespace {

// Inverse of a symmetric positive definite d x d matrix, one ridge solve per unit vector.
std::vector<double> spd_inverse(const std::vector<double>& a, std::size_t d) {
  std::vector<double> inv(d * d), work(d * d), col(d);
  for (std::size_t j = 0; j < d; ++j) {
    work = a;
    std::fill(col.begin(), col.end(), 0.0);
    col[j] = 1.0;
    ridge_solve(work.data(), nullptr, col.data(), d);
    for (std::size_t i = 0; i < d; ++i) inv[i * d + j] = col[i];
  }
  return inv;
}

}  // namespace

FoldInPrior make_prior(const std::vector<double>& rows, const std::vector<std::int64_t>& row_counts, int dim) {
  const std::size_t d = static_cast<std::size_t>(dim);
  FoldInPrior prior;
  for (std::size_t r = 0; r < row_counts.size(); ++r)
    if (row_counts[r] > 0) prior.population.push_back(static_cast<std::int64_t>(r));
  const double np = static_cast<double>(prior.population.size());
  std::vector<double> mean(d, 0.0), cov(d * d, 0.0);
  if (prior.population.empty()) return prior;
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
  prior.mean = std::move(mean);
  prior.precision = spd_inverse(cov, d);
  return prior;
}

FoldedRow fold_in(const std::int64_t* cols, const double* logy, std::size_t n, const double* z, double mu, int dim,
                  const double* rows, const FoldInPrior& prior, double noise_var) {
  const std::vector<std::int64_t>& population = prior.population;
  const std::vector<double>& mean = prior.mean;
  const std::size_t d = static_cast<std::size_t>(dim), e = d + 1, np = population.size();
  FoldedRow out{mean, 1.0};
  if (n == 0) return out;

  // Moments of the augmented column vectors w_c = [z_c[0], 1, z_c[1:]] over the revealed entries. A row [g, b, p]
  // predicts mu + [g, b, p] . w_c; the population row r predicts [1, mu + b_r, p_r] . w_c.
  // Accumulated by the blocked kernel of the ALS solves over the regressors [1, z_c[0], z_c[1:]], then reordered.
  std::vector<double> gram(e * e), xty(e), buf(e);
  NormalEquations ne(e);
  double syy = 0;
  for (std::size_t k = 0; k < n; ++k) {
    const double* zc = z + cols[k] * dim;
    std::copy(zc, zc + d, buf.begin() + 1);  // buf[0] is ignored (the constant regressor)
    ne.add_with_bias(buf.data(), logy[k]);
    syy += logy[k] * logy[k];
  }
  ne.moments(gram.data(), xty.data());
  auto at = [](std::size_t i) { return i < 2 ? 1 - i : i; };  // [1, z0, q] -> [z0, 1, q]
  std::vector<double> mom(e * e), wy(e), ws(e);
  for (std::size_t i = 0; i < e; ++i) {
    wy[i] = xty[at(i)];
    ws[i] = gram[at(i) * e];  // the constant regressor's column: sums of the regressors
    for (std::size_t j = 0; j < e; ++j) mom[i * e + j] = gram[at(i) * e + at(j)];
  }
  const double sy = xty[0];

  // (1) Bayesian fold-in of a = [g, b, p]: (W'W + s2 P) a = W'(y - mu) + s2 P m, with the prior mean m = [1, mean]
  // and precision P = blockdiag(1 / sigma_g^2, prior.precision).
  const std::vector<double>& prec = prior.precision;
  std::vector<double> lhs(mom), rhs(e);
  const double s2 = std::max(noise_var, 1e-12);
  for (std::size_t i = 0; i < e; ++i) rhs[i] = wy[i] - mu * ws[i];
  lhs[0] += s2 / (kFoldInScaleStd * kFoldInScaleStd);
  rhs[0] += s2 / (kFoldInScaleStd * kFoldInScaleStd);
  for (std::size_t i = 0; i < d; ++i)
    for (std::size_t j = 0; j < d; ++j) {
      lhs[(i + 1) * e + j + 1] += s2 * prec[i * d + j];
      rhs[i + 1] += s2 * prec[i * d + j] * mean[j];
    }
  ridge_solve(lhs.data(), nullptr, rhs.data(), e);  // rhs = [g, b, p] of the Bayesian fold-in

  // (2) Device experts: centred simple regression of y on each population row's predictions.
  const double tau = kExpertNoiseFactor * s2;
  const double slope_ridge = tau / (kExpertSlopeStd * kExpertSlopeStd);  // prior s_r ~ N(1, sigma_s^2)
  const double nn = static_cast<double>(n), ybar = sy / nn, syy_c = std::max(syy - sy * ybar, 0.0);
  std::vector<double> alpha(np), slope(np), sse(np), aug(e);
  double best = INFINITY;
  for (std::size_t k = 0; k < np; ++k) {
    const double* a = rows + population[k] * dim;
    aug[0] = 1.0;
    aug[1] = mu + a[0];
    for (std::size_t i = 1; i < d; ++i) aug[i + 1] = a[i];
    double sp = 0, spy = 0, spp = 0;
    for (std::size_t i = 0; i < e; ++i) {
      sp += aug[i] * ws[i];
      spy += aug[i] * wy[i];
      double t = 0;
      for (std::size_t j = 0; j < e; ++j) t += mom[i * e + j] * aug[j];
      spp += aug[i] * t;
    }
    const double pbar = sp / nn, sxx = std::max(spp - sp * pbar, 0.0), sxy = spy - sp * ybar;
    slope[k] = (sxy + slope_ridge) / (sxx + slope_ridge);
    alpha[k] = ybar - slope[k] * pbar;
    sse[k] = std::max(syy_c - 2 * slope[k] * sxy + slope[k] * slope[k] * sxx, 0.0);
    best = std::min(best, sse[k]);
  }
  // Mixture of experts: sum_k w_k (alpha_k + s_k (mu + b_k + z0 + p_k . q)) = A + S z0 + P . q.
  std::vector<double> pk(d, 0.0);
  double total = 0, big_a = 0, big_s = 0;
  for (std::size_t k = 0; k < np; ++k) {
    const double wk = std::exp(-(sse[k] - best) / (2 * tau));
    const double* a = rows + population[k] * dim;
    total += wk;
    big_a += wk * (alpha[k] + slope[k] * (mu + a[0]));
    big_s += wk * slope[k];
    for (std::size_t i = 1; i < d; ++i) pk[i] += wk * slope[k] * a[i];
  }
  // The experts' share fades once the entries outnumber the row's parameters (the linear fit is then determined).
  const double beta = kExpertWeight * std::min(1.0, static_cast<double>(d) / nn);
  out.params[0] = beta * big_a / total + (1 - beta) * (mu + rhs[1]) - mu;
  for (std::size_t i = 1; i < d; ++i) out.params[i] = beta * pk[i] / total + (1 - beta) * rhs[i + 1];
  out.scale = beta * big_s / total + (1 - beta) * rhs[0];
  return out;
}

}  // namespace cf::detail
