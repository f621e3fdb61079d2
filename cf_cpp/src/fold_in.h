// Fold-in of a new row from a few revealed entries, against the fixed column model (no refit).
//
// A row a = [g, b, p] predicts log y(c) = mu + b + g z_c[0] + p . z_c[1:]. The new row's prior is a mixture of
// Gaussians built from the fitted rows (the "population"), one component per population row ("device experts") and
// one for the population as a whole:
//   expert r:  a ~ N([1, b_r, p_r], S_r),  S_r = lambda_e C + sigma_0^2 e_b e_b' + sigma_s^2 v_r v_r'
//   global:    a ~ N([1, m],        S_m),  S_m = lambda_g C + sigma_0^2 e_b e_b' + sigma_s^2 v_m v_m'
// with m and C the mean and covariance (+ jitter) of the population's [b_r, p_r], e_b the bias direction (a free
// offset, sigma_0) and v_r = [1, 0, p_r] the row's own column profile (a free scale around 1, sigma_s): a new device
// is "like device r up to an offset and a scale, plus a small move along the directions in which devices differ", or
// "an average device plus a large such move". The revealed entries (noise variance s2, a multiple of the training
// residual variance) give every component its Gaussian posterior and its evidence; the fold-in is the
// evidence-weighted mean of the component posteriors, which is again a row of the model. With no data it is the
// average row; with many entries every component reaches the least-squares fit.
// With kernel residuals (row_kernel.h), expert r explains t - h_r rather than t ("like device r, including what the
// low-rank model misses of it"), the global component explains t, and the new row's residual is the evidence-weighted
// mean of its experts' h_r (FoldedRow::expert_weights).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "cf_cpp/model.h"

namespace cf::detail {

// Hyperparameters, chosen on oneproxy_nb201 (new-row protocol, fill 0.3, 10 revealed entries, tuning seeds
// 100-149; sigma_s also on 3 revealed entries and on help_nb201, seeds 100-129).
constexpr double kFoldInJitter = 0.01;         // added to the population covariance C (log units^2)
constexpr double kFoldInNoiseFactor = 3.0;     // s2 = factor x training residual variance (held-out noise is larger)
constexpr double kExpertSpread = 0.2;          // lambda_e: an expert's share of C
constexpr double kGlobalSpread = 1.0;          // lambda_g: the global component's share of C
constexpr double kFoldInOffsetStd = 1.0;       // sigma_0: prior std of a free offset (log units)
constexpr double kFoldInSlopeStd = 0.2;        // sigma_s: prior std of the column-profile scale around 1
constexpr std::size_t kMaxExperts = 16;        // experts evaluated exactly (the best by a cheap score)

struct FoldedRow {
  std::vector<double> params;  // [b, p], dim values
  double scale = 1.0;          // g, the coefficient of the column bias
  KernelBlend expert_weights;  // (fitted row, share of the mixture) per expert
};

// The population (fitted rows: row_counts > 0) and the mean m of its [b_r, p_r]; of their covariance C + jitter I,
// the lower Cholesky factors (dim x dim) of spread C + sigma_0^2 e_b e_b', the [b, p] block that all experts' / the
// global component's prior covariances share (ComponentFamily). Fixed between fits, so the model builds it once per
// fit / load.
struct FoldInPrior {
  std::vector<std::int64_t> population;
  std::vector<double> mean;  // dim
  std::vector<double> expert_root, global_root;
  std::vector<double> lanes;  // the population's rows in blocks, for scoring the experts (expert_scores.h)
};

FoldInPrior make_prior(const std::vector<double>& rows, const std::vector<std::int64_t>& row_counts, int dim);

// Sufficient statistics of the revealed entries for a = [g, b, p]: with regressors w_c = [z_c[0], 1, z_c[1:]] and
// targets t = log y - mu, gram = sum w w' (e x e, e = dim + 1), wt = sum w t, tt = sum t^2.
struct FoldInMoments {
  std::size_t e = 0;
  std::vector<double> gram, wt;
  double tt = 0;
};

FoldInMoments fold_in_moments(const std::int64_t* cols, const double* logy, std::size_t n, const double* z, double mu,
                              int dim);

// Posterior of one mixture component: prior a ~ N(theta, S), observations t = W a + N(0, s2 I). mean: the posterior
// mean; log_evidence: log N(t; W theta, W S W' + s2 I) + ((n - e) log s2 + n log 2 pi) / 2, i.e. up to a constant
// that all components of one fold-in share.
struct FoldInPosterior {
  std::vector<double> mean;
  double log_evidence = 0;
};

// A component's prior covariance is S = sigma_s^2 v v' + [0, 0; 0, A], v = [1, 0, p] (its own column profile), with
// A = spread C + sigma_0^2 e_b e_b' = L_A L_A' the same for every component of one spread. With the square root
// M = [sigma_s v | (0; L_A)] (every square root of S gives the same posterior and evidence), the e x e system
// s2 I + M' G M has the block K_0 = s2 I + L_A' G_bp L_A in common: factored once per fold-in here, it leaves each
// component O(e^2) work (the Schur complement of its first row) instead of O(e^3).
struct ComponentFamily {
  const double* root = nullptr;  // L_A (d x d, lower), d = e - 1
  std::vector<double> chol;      // K_0 = R R' (R lower)
  double log_det = 0;            // log det K_0
};

ComponentFamily component_family(const FoldInMoments& m, const std::vector<double>& root, double s2);

// The posterior of the family's component with prior mean theta = [1, bp] (bp: d values) and v = [1, 0, bp[1:]].
FoldInPosterior component_posterior(const FoldInMoments& m, const ComponentFamily& f, const double* bp, double s2);

// The moments of the same entries with the targets t - h (h[c]: a row's kernel residual at every column), written
// into out, whose gram must already be m's (the shift leaves it unchanged; only wt and tt are rewritten).
void shift_moments(const FoldInMoments& m, const std::int64_t* cols, const double* logy, std::size_t n,
                   const double* z, double mu, int dim, const double* h, FoldInMoments& out);

// cols / logy: the n revealed entries (cols already validated). z: n_cols x dim column parameters; rows: the row
// parameters (prior.population indexes them; it must be non-empty); noise_var: training residual variance;
// residuals: the rows' kernel residuals (n_rows x n_cols) or null.
FoldedRow fold_in(const std::int64_t* cols, const double* logy, std::size_t n, const double* z, double mu, int dim,
                  const double* rows, const FoldInPrior& prior, double noise_var, const double* residuals = nullptr,
                  std::int64_t n_cols = 0);

}  // namespace cf::detail
