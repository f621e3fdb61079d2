// Fold-in of a new row from a few revealed entries, against the fixed column model (no refit).
//
// The new row's log values are a blend of two estimates that use only the fitted rows (the "population"): half and
// half while the n revealed entries are at most the row's dim parameters, then with the experts' share fading as
// dim / n.
//   (1) Bayesian fold-in: the posterior mean of [g, b, p] under the prior g ~ N(1, sigma_g^2), [b, p] ~ N(m, C +
//       jitter I), m and C the mean and covariance of the population's [b_r, p_r]; the observation noise is the
//       model's training residual variance. With no data it is the average row, with many the least-squares fit; in
//       between the prior pulls along the directions in which the fitted devices actually differ (the fold-in
//       before this was an isotropic ridge toward the mean row).
//   (2) Device experts: every population row r, affinely rescaled to the revealed entries (y ~ alpha_r + s_r yhat_r,
//       prior s_r ~ N(1, sigma_s^2)), weighted by its likelihood exp(-SSE_r / (2 tau)), tau a multiple of the
//       training residual variance: a new device that behaves like a known one up to a scale is predicted from it.
// Both are affine in the column parameters, so the blend is again a row of the model, with a per-row scale g on the
// column bias: log y(c) = mu + b + g z_c[0] + p . z_c[1:].
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace cf::detail {

// Hyperparameters, chosen on oneproxy_nb201 (new-row protocol, fill 0.3, tuning seeds 100-111; sigma_s also on
// ncnn_benchmark / deepbench_gemm, seeds 100-105, where a looser slope prior overfits 3 revealed entries).
constexpr double kFoldInJitter = 0.01;      // added to the population covariance (log units^2)
constexpr double kFoldInScaleStd = 0.3;     // sigma_g: prior std of the new row's column-bias scale g around 1
constexpr double kExpertNoiseFactor = 3.0;  // tau = factor x training residual variance (held-out noise is larger)
constexpr double kExpertSlopeStd = 0.1;     // sigma_s: prior std of each expert's slope s_r around 1
constexpr double kExpertWeight = 0.5;       // share of the experts in the blend (for n <= dim revealed entries)

struct FoldedRow {
  std::vector<double> params;  // [b, p], dim values
  double scale = 1.0;          // g, the coefficient of the column bias
};

// The population (fitted rows: row_counts > 0) and its Gaussian prior: mean and precision (C + jitter I)^-1 of
// [b_r, p_r]. Fixed between fits, so the model builds it once per fit / load.
struct FoldInPrior {
  std::vector<std::int64_t> population;
  std::vector<double> mean, precision;  // dim, dim x dim
};

FoldInPrior make_prior(const std::vector<double>& rows, const std::vector<std::int64_t>& row_counts, int dim);

// cols / logy: the n revealed entries (cols already validated). z: n_cols x dim column parameters; rows: the row
// parameters (prior.population indexes them; it must be non-empty); noise_var: training residual variance.
FoldedRow fold_in(const std::int64_t* cols, const double* logy, std::size_t n, const double* z, double mu, int dim,
                  const double* rows, const FoldInPrior& prior, double noise_var);

}  // namespace cf::detail
