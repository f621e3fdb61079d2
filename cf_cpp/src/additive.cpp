#include "additive.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "linalg.h"

namespace cf::detail {

std::vector<double> additive_scale(const double* a, std::int64_t n_cols, std::int64_t n_add) {
  std::vector<double> scale(static_cast<std::size_t>(n_add), 0.0);
  for (std::int64_t c = 0; c < n_cols; ++c)
    for (std::int64_t j = 0; j < n_add; ++j) scale[j] += a[c * n_add + j] * a[c * n_add + j];
  std::vector<double> most;  // where the squares overflow (values from 1e154 on), those of the values over the largest
  for (std::int64_t j = 0; j < n_add; ++j) {
    double& s = scale[j];
    if (std::isfinite(s)) {
      s = s > 0 ? std::sqrt(s / static_cast<double>(n_cols)) : 1.0;
      continue;
    }
    if (most.empty()) most = additive_max(a, n_cols, n_add);
    s = 0;
    for (std::int64_t c = 0; c < n_cols; ++c) s += (a[c * n_add + j] / most[j]) * (a[c * n_add + j] / most[j]);
    s = std::sqrt(s / static_cast<double>(n_cols)) * most[j];
  }
  return scale;
}

std::vector<double> additive_max(const double* a, std::int64_t n_cols, std::int64_t n_add) {
  std::vector<double> most(static_cast<std::size_t>(n_add), 0.0);
  for (std::int64_t c = 0; c < n_cols; ++c)
    for (std::int64_t j = 0; j < n_add; ++j) most[j] = std::max(most[j], a[c * n_add + j]);
  return most;
}

void distinct_entries(const std::int64_t* cols, const double* values, std::size_t n,
                      std::vector<std::int64_t>& out_cols, std::vector<double>& out_values) {
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return cols[a] < cols[b]; });
  out_cols.clear();
  out_values.clear();
  for (std::size_t i = 0; i < n;) {
    const std::int64_t c = cols[order[i]];
    double log_sum = 0;
    std::size_t count = 0, first = i;
    for (; i < n && cols[order[i]] == c; ++i, ++count) log_sum += std::log(values[order[i]]);
    out_cols.push_back(c);
    out_values.push_back(count == 1 ? values[order[first]] : std::exp(log_sum / static_cast<double>(count)));
  }
}

std::vector<double> fit_additive(const std::int64_t* cols, const double* values, std::size_t n, const double* a,
                                 std::int64_t n_add, const double* scale) {
  const std::size_t e = static_cast<std::size_t>(n_add) + 1;
  std::vector<double> gram(e * e, 0.0), w(e, 0.0), x(e);
  double mean = 0;
  for (std::size_t i = 0; i < n; ++i) {
    x[0] = 1.0;
    for (std::size_t j = 1; j < e; ++j) x[j] = a[cols[i] * n_add + static_cast<std::int64_t>(j) - 1] / scale[j - 1];
    for (std::size_t p = 0; p < e; ++p) {
      w[p] += x[p] * values[i];
      for (std::size_t q = 0; q < e; ++q) gram[p * e + q] += x[p] * x[q];
    }
    mean += values[i] / static_cast<double>(n);
  }
  // The ridge, which grows with mean^2 (infinite past 1e154), stops at kAdditiveRidgeCap x the gram's largest diagonal
  // entry: there it has left the slopes at ~0 (it would only shrink them further), and a larger one swamped the
  // intercept in the factorisation's jitter (relative to the largest diagonal entry).
  double gram_max = 0;
  for (std::size_t p = 0; p < e; ++p) gram_max = std::max(gram_max, gram[p * e + p]);
  std::vector<double> ridge(e, std::min(kAdditiveRidge * mean * mean, kAdditiveRidgeCap * gram_max));
  ridge[0] = 0.0;
  ridge_solve(gram.data(), ridge.data(), w.data(), e);
  return w;
}

double additive_value(const double* w, const double* a_c, std::int64_t n_add, const double* scale) {
  double v = w[0];
  for (std::int64_t j = 0; j < n_add; ++j) v += w[j + 1] * a_c[j] / scale[j];
  return v;
}

double additive_bound(const double* w, const double* a_max, std::int64_t n_add, const double* scale) {
  double v = std::fabs(w[0]);
  for (std::int64_t j = 0; j < n_add; ++j) v += std::fabs(w[j + 1]) * a_max[j] / scale[j];
  return v;
}

std::size_t cv_folds(std::size_t n) { return std::min(n, kAdditiveFolds); }

double log_rms_error(const double* pred, const double* values, std::size_t n) {
  double sse = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (!(pred[i] > 0)) return std::numeric_limits<double>::infinity();
    const double err = std::log(pred[i] / values[i]);
    sse += err * err;
  }
  return std::sqrt(sse / static_cast<double>(n));
}

std::vector<double> additive_cv(const std::int64_t* cols, const double* values, std::size_t n, const double* a,
                                std::int64_t n_add, const double* scale) {
  return cross_validate(n, [&](const std::vector<std::size_t>& train) {
    std::vector<std::int64_t> train_cols;
    std::vector<double> train_values;
    for (std::size_t i : train) {
      train_cols.push_back(cols[i]);
      train_values.push_back(values[i]);
    }
    std::vector<double> w = fit_additive(train_cols.data(), train_values.data(), train.size(), a, n_add, scale);
    return [=](std::size_t i) { return additive_value(w.data(), a + cols[i] * n_add, n_add, scale); };
  });
}

}  // namespace cf::detail
