// Additive rows: a device whose value (raw units) is a weighted sum of per-column additive features, such as the
// counts of each op type in a block or its flops:
//     y(c) = w_0 + sum_j w_j a_cj / s_j        (s_j: feature j's root mean square over the columns)
// the per-layer-type regression of Neurosurgeon. Some devices are close to additive (analytic estimators, simple
// CPUs) yet unlike every device of the fleet, so a low-rank model in log space needs many entries to place them
// while this regression needs a handful. A folded-in row becomes additive when, on its revealed entries, the
// cross-validated error of this regression is well below that of the collaborative fold-in (Model::fold_in_row).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace cf::detail {

// Chosen on oneproxy_nb201 (new-row protocol, fill 0.3, 10 revealed entries, tuning seeds 100-149).
constexpr double kAdditiveRidge = 1e-6;     // ridge on w_1.. (scaled), x mean(y)^2: only for collinear features
constexpr double kAdditiveRidgeCap = 1e6;   // .. at most this x the gram's largest diagonal (values beyond ~1e6)
constexpr double kAdditiveMargin = 0.5;    // additive when its CV error is below margin x the fold-in's
constexpr std::size_t kAdditiveFolds = 10;  // cross-validation folds (leave-one-out below this many entries)
constexpr std::size_t kAdditiveSpare = 4;   // distinct columns needed beyond its weights for the CV to tell
constexpr std::size_t kAdditiveCvEntries = 100;  // the choice is cross-validated on at most this many entries

// Per-feature root mean square over the n_cols columns of a (row-major n_cols x n_add); 1 for an all-zero feature.
std::vector<double> additive_scale(const double* a, std::int64_t n_cols, std::int64_t n_add);

// Per-feature largest value over the n_cols columns of a (0 without columns).
std::vector<double> additive_max(const double* a, std::int64_t n_cols, std::int64_t n_add);

// The n entries with every column once, by column (the cross-validated choice does not depend on the order they came
// in): a column given more than once is one
// entry at the geometric mean of its values (a column given once keeps its value exactly). Ten measurements of one
// column are one point of the regression: they cross-validate perfectly, yet fix nothing but its intercept.
void distinct_entries(const std::int64_t* cols, const double* values, std::size_t n,
                      std::vector<std::int64_t>& out_cols, std::vector<double>& out_values);

// w (n_add + 1) of the ridge regression of the n values (raw units) at columns cols on [1, a_c / scale]; the
// intercept is not penalised. Values near the largest double can overflow the sums: w is then not finite.
std::vector<double> fit_additive(const std::int64_t* cols, const double* values, std::size_t n, const double* a,
                                 std::int64_t n_add, const double* scale);

// w . [1, a_c / scale]: the additive row's value at a column (may be <= 0 outside the revealed range).
double additive_value(const double* w, const double* a_c, std::int64_t n_add, const double* scale);

// |w_0| + sum_j |w_j| a_max_j / scale_j, rounded as additive_value rounds: at least |additive_value| at every column
// whose features are at most a_max; not finite (NaN included) where w is not.
double additive_bound(const double* w, const double* a_max, std::int64_t n_add, const double* scale);

// The cross-validation folds of n entries: entry i is in fold i % k, k = min(n, kAdditiveFolds).
std::size_t cv_folds(std::size_t n);

// Cross-validated predictions at n entries: for each fold, fit(train) gets the indices of the other folds' entries
// and returns a predictor of an entry index, called for the fold's entries.
template <class Fit>
std::vector<double> cross_validate(std::size_t n, Fit fit) {
  const std::size_t k = cv_folds(n);
  std::vector<double> pred(n);
  std::vector<std::size_t> train;
  for (std::size_t fold = 0; fold < k; ++fold) {
    train.clear();
    for (std::size_t i = 0; i < n; ++i)
      if (i % k != fold) train.push_back(i);
    const auto predict = fit(train);
    for (std::size_t i = fold; i < n; i += k) pred[i] = predict(i);
  }
  return pred;
}

// Root mean square of log(pred / value) over the entries; infinite when a prediction is not positive.
double log_rms_error(const double* pred, const double* values, std::size_t n);

// Cross-validated predictions of the regression at the revealed entries (cv_folds folds).
std::vector<double> additive_cv(const std::int64_t* cols, const double* values, std::size_t n, const double* a,
                                std::int64_t n_add, const double* scale);

}  // namespace cf::detail
