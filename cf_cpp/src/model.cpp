// Model orchestration: validation, state, ALS sweeps, fold-in and cold columns.
#include "cf_cpp/model.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <new>
#include <string>
#include <tuple>
#include <utility>

#include "additive.h"
#include "als.h"
#include "feature_map.h"
#include "fold_in.h"
#include "linalg.h"
#include "parallel.h"
#include "rng.h"
#include "row_kernel.h"
#include "sparse.h"

namespace cf {

namespace {

// Interrupted once `stop` is set (a fit or refit works on a copy: the model is untouched until it commits).
void check_stop(const std::atomic<bool>* stop) {
  if (detail::stopped(stop)) throw Interrupted("the fit was interrupted; the model is as it was");
}

// Room for `more` elements after the current ones, growing geometrically: exact reserves made every fold-in copy the
// whole residual table (quadratic over many fold-ins). Throws (out of memory) before anything changes.
template <class T>
void reserve_more(std::vector<T>& v, std::size_t more) {
  const std::size_t needed = v.size() + more;
  if (needed > v.capacity()) v.reserve(std::max(needed, 2 * v.capacity()));
}

// A new column's standardised features beyond this many standard deviations are rejected: it keeps the prior
// (linear in them) and the kernel residual (quadratic, squared again) finite.
constexpr double kMaxStandardised = 1e50;
// How far (standard deviations of the fitted columns' features) beyond the features of the measured columns an
// unmeasured column's prior may extrapolate. Four alike blocks (log FLOPs within 0.001 of each other, a standard
// deviation of 0.0004) put a Reshape's log FLOPs 45,000 standard deviations away, and its prior at exp(-60).
constexpr double kFeatureMargin = 1.0;

void check_config(const Config& c) {
  if (c.rank < 0 || c.rank > kMaxRank)
    throw InvalidInput("rank must be in [0, " + std::to_string(kMaxRank) + "], got " + std::to_string(c.rank));
  if (c.iterations < 0) throw InvalidInput("iterations must be >= 0, got " + std::to_string(c.iterations));
  if (c.threads < 0) throw InvalidInput("threads must be >= 0, got " + std::to_string(c.threads));
  const std::pair<const char*, double> constants[] = {
      {"reg", c.reg},         {"reg_bias", c.reg_bias},         {"reg_col", c.reg_col},
      {"reg_col_bias", c.reg_col_bias}, {"reg_features", c.reg_features}, {"init_scale", c.init_scale},
  };
  for (const auto& [name, value] : constants)
    if (!std::isfinite(value) || value < 0)
      throw InvalidInput(std::string(name) + " must be finite and >= 0, got " + detail::format_value(value));
}

// "[c, j]" of the flat index i of a row-major table `width` wide.
std::string entry(std::size_t i, std::int64_t width) {
  const auto w = static_cast<std::size_t>(width);
  return "[" + std::to_string(i / w) + ", " + std::to_string(i % w) + "]";
}

void check_features(const Features& f, std::int64_t n_cols, const char* name = "col_features") {
  const std::string what(name);
  if (f.n_cols != n_cols)
    throw InvalidInput(what + " has " + std::to_string(f.n_cols) + " rows, expected n_cols = " +
                       std::to_string(n_cols));
  if (f.n_features < 0) throw InvalidInput(what + " must have a non-negative number of columns");
  const std::size_t n = static_cast<std::size_t>(f.n_cols * f.n_features);
  for (std::size_t i = 0; i < n; ++i)
    if (!std::isfinite(f.data[i]))
      throw InvalidInput(what + entry(i, f.n_features) + " = " + detail::format_value(f.data[i]) + " must be finite");
}

// A fit's or refit's column features (add_cols takes the width the model has).
void check_col_features(const Features& f, std::int64_t n_cols) {
  if (f.n_features > kMaxFeatures)
    throw InvalidInput("col_features has " + std::to_string(f.n_features) + " columns: a model holds at most " +
                       std::to_string(kMaxFeatures));
  check_features(f, n_cols);
}

void check_additive(const Features& a, std::int64_t n_cols) {
  check_features(a, n_cols, "additive_features");
  const std::size_t n = static_cast<std::size_t>(a.n_cols * a.n_features);
  for (std::size_t i = 0; i < n; ++i)
    if (a.data[i] < 0)
      throw InvalidInput("additive_features" + entry(i, a.n_features) + " = " + detail::format_value(a.data[i]) +
                         " must be >= 0");
}

// The (additive) features of n columns being added, for a model that uses `width` of them per column (`used`).
void check_added_cols(const Features* f, std::int64_t n, bool used, std::int64_t width, bool additive) {
  const std::string name = additive ? "additive_features" : "col_features";
  if (!used) {
    if (f && f->n_features > 0) throw InvalidInput("the model was fitted without " + name);
    return;
  }
  if (!f) throw InvalidInput("the model uses " + name + ": add_cols needs them");
  if (additive)
    check_additive(*f, n);
  else
    check_features(*f, n);
  if (f->n_features != width)
    throw InvalidInput(name + " has " + std::to_string(f->n_features) + " columns, the model was fitted with " +
                       std::to_string(width));
}

// Mean and standard deviation of n values at stride apart. When the plain sums overflow (features near the largest
// double) or the squares of the deviations may underflow (features of 1e-200 were taken for constant), they are taken
// of the values divided by the largest magnitude, then scaled back.
constexpr double kSmallestSafeSd = 1e-150;  // deviations of this size square to 1e-300, above the smallest normal
void moments(const double* f, std::int64_t n, std::int64_t stride, double* mean, double* sd) {
  double s = 0, ss = 0;
  for (std::int64_t c = 0; c < n; ++c) s += f[c * stride];
  double m = s / static_cast<double>(n);
  for (std::int64_t c = 0; c < n; ++c) ss += (f[c * stride] - m) * (f[c * stride] - m);
  *mean = m;
  *sd = std::sqrt(ss / static_cast<double>(n));
  if (std::isfinite(*mean) && std::isfinite(*sd) && *sd >= kSmallestSafeSd) return;
  double big = 0;
  for (std::int64_t c = 0; c < n; ++c) big = std::max(big, std::fabs(f[c * stride]));
  if (big == 0) return;
  s = ss = 0;
  for (std::int64_t c = 0; c < n; ++c) s += f[c * stride] / big;
  m = s / static_cast<double>(n);
  for (std::int64_t c = 0; c < n; ++c) ss += (f[c * stride] / big - m) * (f[c * stride] / big - m);
  *mean = m * big;
  *sd = std::sqrt(ss / static_cast<double>(n)) * big;
}

// Feature j of column c standardised; throws unless it is finite and within kMaxStandardised.
double standardise(double v, double mean, double scale, std::int64_t c, std::int64_t j) {
  double x = (v - mean) * scale;
  if (!std::isfinite(x)) x = v * scale - mean * scale;  // v - mean overflowed
  if (!(std::fabs(x) <= kMaxStandardised))
    throw InvalidInput("col_features[" + std::to_string(c) + ", " + std::to_string(j) + "] = " +
                       detail::format_value(v) + " is too far from the fitted columns' features (standardised: " +
                       detail::format_value(x) + ")");
  return x;
}

}  // namespace

Model::Model(const Config& config) : config_(config) { check_config(config_); }

void Model::check_fitted() const {
  if (!fitted_) throw InvalidInput("model is not fitted: call fit() first");
}

void Model::set_features(const Features& f) {
  const std::int64_t nf = f.n_features, fx = nf + 1;
  if (nf != n_features_ || theta_.empty()) theta_.assign(static_cast<std::size_t>(dim() * fx), 0.0);
  n_features_ = nf;
  feat_mean_.assign(static_cast<std::size_t>(nf), 0.0);
  feat_scale_.assign(static_cast<std::size_t>(nf), 0.0);
  for (std::int64_t j = 0; j < nf; ++j) {
    double m, sd, lo = INFINITY, hi = -INFINITY;
    moments(f.data + j, f.n_cols, nf, &m, &sd);
    for (std::int64_t c = 0; c < f.n_cols; ++c) {
      lo = std::min(lo, f.data[c * nf + j]);
      hi = std::max(hi, f.data[c * nf + j]);
    }
    feat_mean_[j] = m;
    // A constant feature, or one whose spread is rounding, is dropped. Relative to the feature's own size, so that
    // its unit does not matter: against 1e-12 (1 + |mean|), a feature in units of 1e-13 was a constant.
    feat_scale_[j] = hi > lo && sd > 1e-12 * std::max(-lo, hi) ? 1.0 / sd : 0.0;
  }
  x_.assign(static_cast<std::size_t>(f.n_cols * fx), 0.0);
  for (std::int64_t c = 0; c < f.n_cols; ++c) {
    for (std::int64_t j = 0; j < nf; ++j)
      x_[c * fx + j] = standardise(f.data[c * nf + j], feat_mean_[j], feat_scale_[j], c, j);
    x_[c * fx + nf] = 1.0;  // intercept of the prior
  }
}

void Model::set_feature_range() {
  const std::int64_t nf = n_features_, fx = nf + 1;
  x_lo_.assign(static_cast<std::size_t>(nf), INFINITY);
  x_hi_.assign(static_cast<std::size_t>(nf), -INFINITY);
  for (std::int64_t c = 0; c < n_cols_; ++c)
    if (col_counts_[c] > 0)
      for (std::int64_t j = 0; j < nf; ++j) {
        x_lo_[j] = std::min(x_lo_[j], x_[c * fx + j]);
        x_hi_[j] = std::max(x_hi_[j], x_[c * fx + j]);
      }
  for (std::int64_t j = 0; j < nf; ++j) {
    if (x_lo_[j] > x_hi_[j]) {  // no measured column (a model loaded without any): no clipping
      x_lo_[j] = -INFINITY;
      x_hi_[j] = INFINITY;
    } else {
      x_lo_[j] -= kFeatureMargin;
      x_hi_[j] += kFeatureMargin;
    }
  }
  clip_features(0);
}

void Model::clip_features(std::int64_t first) {
  const std::int64_t nf = n_features_, fx = nf + 1;
  xp_.resize(static_cast<std::size_t>(first * fx));
  xp_.insert(xp_.end(), x_.begin() + first * fx, x_.end());
  for (std::int64_t c = first; c < n_cols_; ++c)
    if (col_counts_[c] == 0)
      for (std::int64_t j = 0; j < nf; ++j) xp_[c * fx + j] = std::clamp(xp_[c * fx + j], x_lo_[j], x_hi_[j]);
}

void Model::set_additive(const Features& a, std::int64_t n_cols) {
  if (a.n_cols != n_cols || a.n_features < 0) check_additive(a, n_cols);  // its shape error
  add_.assign(a.data, a.data + a.n_cols * a.n_features);
  check_additive(Features{add_.data(), a.n_cols, a.n_features}, n_cols);  // the copy: the caller's may change
  n_add_ = a.n_features;
  add_scale_ = detail::additive_scale(add_.data(), a.n_cols, a.n_features);
}

void Model::grow(std::int64_t n_rows, std::int64_t n_cols) {
  const int d = dim();
  detail::NormalRng rng(config_.seed + 0x51ED2701ULL * static_cast<std::uint64_t>(n_rows_ + 1) +
                        static_cast<std::uint64_t>(n_cols_));
  rows_.resize(static_cast<std::size_t>(n_rows * d), 0.0);
  row_scale_.resize(static_cast<std::size_t>(n_rows), 1.0);
  row_counts_.resize(static_cast<std::size_t>(n_rows), 0);
  kernels_.resize(static_cast<std::size_t>(n_rows));
  blends_.resize(static_cast<std::size_t>(n_rows));
  additive_rows_.resize(static_cast<std::size_t>(n_rows));
  for (std::int64_t r = n_rows_; r < n_rows; ++r)
    for (int i = 1; i < d; ++i) rows_[r * d + i] = config_.init_scale * rng.next();
  dev_.resize(static_cast<std::size_t>(n_cols * d), 0.0);
  for (std::int64_t c = n_cols_; c < n_cols; ++c)
    for (int i = 1; i < d; ++i) dev_[c * d + i] = config_.init_scale * rng.next();
  col_counts_.resize(static_cast<std::size_t>(n_cols), 0);
  n_rows_ = n_rows;
  n_cols_ = n_cols;
}

void Model::fit(const Observations& obs, std::int64_t n_rows, std::int64_t n_cols, const Features* features,
                const Features* additive, const std::atomic<bool>* stop) {
  std::unique_lock<std::shared_mutex> lock(mutex_.mutex);
  fit_unlocked(obs, n_rows, n_cols, features, config_.iterations, additive, stop);
}

int Model::threads() const { return detail::capped_threads(config_.threads); }

void Model::fit_unlocked(const Observations& obs, std::int64_t n_rows, std::int64_t n_cols, const Features* features,
                         int iterations, const Features* additive, const std::atomic<bool>* stop) {
  detail::validate(obs, n_rows, n_cols);
  if (obs.size == 0) throw InvalidInput("fit needs at least one observation");
  if (features) check_col_features(*features, n_cols);
  // Built aside and moved in at the end: a fit that throws (bad input, out of memory) leaves this model as it was.
  Model next(config_);
  if (features) next.set_features(*features);
  if (additive) next.set_additive(*additive, n_cols);
  next.grow(n_rows, n_cols);
  next.run_als(obs, iterations, stop);
  check_stop(stop);  // also after the sweeps
  *this = std::move(next);
}

void Model::refit(const Observations& obs, std::int64_t n_rows, std::int64_t n_cols, const Features* features,
                  int iterations, const Features* additive, const std::atomic<bool>* stop) {
  std::unique_lock<std::shared_mutex> lock(mutex_.mutex);
  if (iterations < -1)
    throw InvalidInput("iterations must be >= 0 (or -1: the configured number), got " + std::to_string(iterations));
  if (!fitted_) {
    if (n_rows == kUnchanged || n_cols == kUnchanged)
      throw InvalidInput("refit of an unfitted model fits from scratch: it needs n_rows and n_cols");
    fit_unlocked(obs, n_rows, n_cols, features, iterations >= 0 ? iterations : config_.iterations, additive, stop);
    return;
  }
  if (n_rows == kUnchanged) n_rows = n_rows_;
  if (n_cols == kUnchanged) n_cols = n_cols_;
  if (n_rows < n_rows_ || n_cols < n_cols_)
    throw InvalidInput("refit cannot shrink the model: it has " + std::to_string(n_rows_) + " rows and " +
                       std::to_string(n_cols_) + " columns");
  detail::validate(obs, n_rows, n_cols);
  if (obs.size == 0) throw InvalidInput("refit needs at least one observation");
  // Everything is checked before anything changes.
  if (features)
    check_col_features(*features, n_cols);
  else if (!x_.empty() && n_cols > n_cols_)
    throw InvalidInput("col_features must be given to refit with new columns (the model uses column features)");
  if (!additive && n_add_ > 0 && n_cols > n_cols_)
    throw InvalidInput("additive_features must be given to refit with new columns (the model uses them)");
  // Refitted on a copy, moved in at the end: a refit that throws (bad input, out of memory) leaves this model as it
  // was.
  Model next(*this);
  if (features) next.set_features(*features);
  if (additive) next.set_additive(*additive, n_cols);
  for (auto& w : next.additive_rows_) w.clear();  // every row is an ALS row again
  next.grow(n_rows, n_cols);
  next.run_als(obs, iterations >= 0 ? iterations : config_.iterations, stop);
  check_stop(stop);
  *this = std::move(next);
}

void Model::refresh_col_params(std::int64_t first_new_col) {
  const int d = dim(), fx = static_cast<int>(n_features_ + 1);
  const std::size_t kept = static_cast<std::size_t>(first_new_col * d);
  std::vector<double> prior;
  if (!x_.empty()) {
    prior.resize(dev_.size() - kept);
    detail::apply_theta(xp_.data() + first_new_col * fx, n_cols_ - first_new_col, fx, theta_.data(), d, prior.data());
  }
  z_.resize(kept);
  z_.insert(z_.end(), dev_.begin() + static_cast<std::ptrdiff_t>(kept), dev_.end());
  for (std::size_t k = 0; k < prior.size(); ++k) z_[kept + k] += prior[k];
}

void Model::run_als(const Observations& obs, int iterations, const std::atomic<bool>* stop) {
  const int d = dim(), fx = static_cast<int>(n_features_ + 1);
  const bool with_features = !x_.empty();
  const auto [by_row, by_col] = detail::compress_both(obs, n_rows_, n_cols_, threads());
  double s = 0;
  for (double v : by_row.value) s += v;
  mu_ = s / static_cast<double>(obs.size);
  for (std::int64_t c = 0; c < n_cols_; ++c) col_counts_[c] = by_col.ptr[c + 1] - by_col.ptr[c];
  for (std::int64_t r = 0; r < n_rows_; ++r) row_counts_[r] = by_row.ptr[r + 1] - by_row.ptr[r];
  if (with_features) set_feature_range();
  std::fill(row_scale_.begin(), row_scale_.end(), 1.0);  // the ALS row solves assume g_r = 1

  std::vector<double> ridge_row(d, config_.reg), ridge_col(d, config_.reg_col);
  ridge_row[0] = config_.reg_bias;
  ridge_col[0] = config_.reg_col_bias;
  std::vector<double> grams, prior;
  if (with_features) {
    grams = detail::row_feature_grams(by_row, xp_.data(), fx, threads());
    prior.resize(dev_.size());
    detail::apply_theta(xp_.data(), n_cols_, fx, theta_.data(), d, prior.data());
  }
  auto set_col_params = [&] {  // z_ = dev_ + the feature prior of theta_ (empty without features)
    z_ = dev_;
    for (std::size_t k = 0; k < prior.size(); ++k) z_[k] += prior[k];
  };
  for (int it = 0; it < iterations; ++it) {
    set_col_params();
    detail::solve_rows(by_row, z_.data(), mu_, d, ridge_row.data(), rows_.data(), threads(), stop);
    check_stop(stop);
    if (with_features) {
      detail::solve_theta(by_row, xp_.data(), fx, grams, rows_.data(), dev_.data(), mu_, d, config_.reg_features,
                          theta_.data(), threads());
      detail::apply_theta(xp_.data(), n_cols_, fx, theta_.data(), d, prior.data());
    }
    detail::solve_cols(by_col, rows_.data(), with_features ? prior.data() : nullptr, mu_, d, ridge_col.data(),
                       dev_.data(), threads(), stop);
    check_stop(stop);
  }
  // Columns without observations have e_c = 0, predicted from their prior alone, as solve_cols leaves them: also
  // after 0 sweeps, where a refit's new columns kept their random start.
  for (std::int64_t c = 0; c < n_cols_; ++c)
    if (col_counts_[c] == 0) std::fill_n(dev_.begin() + c * d, d, 0.0);
  // Rows without observations take the mean of the observed rows (as a fold-in with no data would).
  std::vector<double> mean(d, 0.0);
  std::int64_t n_obs_rows = 0;
  for (std::int64_t r = 0; r < n_rows_; ++r)
    if (by_row.ptr[r + 1] > by_row.ptr[r]) {
      ++n_obs_rows;
      for (int i = 0; i < d; ++i) mean[i] += rows_[r * d + i];
    }
  for (std::int64_t r = 0; r < n_rows_; ++r)
    if (by_row.ptr[r + 1] == by_row.ptr[r])
      for (int i = 0; i < d; ++i) rows_[r * d + i] = mean[i] / static_cast<double>(n_obs_rows);
  set_col_params();  // prior is already the last sweep's
  // Training residuals: their variance is the observation noise of the Bayesian fold-in; the kernel stage fits them.
  std::vector<double> rho(by_row.value.size()), row_sse(static_cast<std::size_t>(n_rows_), 0.0);
  detail::parallel_chunks(n_rows_, threads(), [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t r = lo; r < hi; ++r) {
      const double* a = rows_.data() + r * d;
      for (std::int64_t e = by_row.ptr[r]; e < by_row.ptr[r + 1]; ++e) {
        const double* z = z_.data() + by_row.index[e] * d;
        double res = by_row.value[e] - mu_ - a[0] - z[0];
        for (int k = 1; k < d; ++k) res -= a[k] * z[k];
        rho[e] = res;
        row_sse[r] += res * res;
      }
    }
  });
  double sse = 0;  // summed in row order: the same for every thread count
  for (double v : row_sse) sse += v;
  noise_var_ = sse / static_cast<double>(obs.size);
  const auto finite = [](const std::vector<double>& v) {
    return std::all_of(v.begin(), v.end(), [](double x) { return std::isfinite(x); });
  };
  if (!std::isfinite(noise_var_) || !std::isfinite(mu_) || !finite(rows_) || !finite(z_))  // e.g. a huge init_scale
    throw InvalidInput("the fit diverged to non-finite parameters: lower init_scale or raise the regularisation");
  fit_kernels(by_row.ptr, by_row.index, rho, stop);
  refresh_fold_in_prior();
  fitted_ = true;
}

void Model::predict_log(const std::int64_t* rows, const std::int64_t* cols, std::size_t n, double* out) const {
  std::shared_lock<std::shared_mutex> lock(mutex_.mutex);
  check_fitted();
  for (std::size_t i = 0; i < n; ++i) {
    // Each index is read once and checked where it is used: the caller's arrays may change during the call.
    const std::int64_t r = rows[i], c = cols[i];
    if (r < 0 || r >= n_rows_)
      throw InvalidInput("rows[" + std::to_string(i) + "] = " + std::to_string(r) + " is out of range [0, " +
                         std::to_string(n_rows_) + ")");
    if (c < 0 || c >= n_cols_)
      throw InvalidInput("cols[" + std::to_string(i) + "] = " + std::to_string(c) + " is out of range [0, " +
                         std::to_string(n_cols_) + ")");
    out[i] = entry_log(r, c);
  }
}

std::vector<double> Model::predict_matrix_log(std::int64_t* n_rows, std::int64_t* n_cols) const {
  std::shared_lock<std::shared_mutex> lock(mutex_.mutex);
  check_fitted();
  std::vector<double> out(static_cast<std::size_t>(n_rows_ * n_cols_));
  for (std::int64_t r = 0; r < n_rows_; ++r)
    for (std::int64_t c = 0; c < n_cols_; ++c) out[r * n_cols_ + c] = entry_log(r, c);
  *n_rows = n_rows_;
  *n_cols = n_cols_;
  return out;
}

double Model::entry_log(std::int64_t r, std::int64_t c) const {
  const std::vector<double>& w = additive_rows_[r];
  if (!w.empty()) {  // an additive row, where its regression is positive
    const double v = detail::additive_value(w.data(), add_.data() + c * n_add_, n_add_, add_scale_.data());
    if (v > 0) return std::log(v);
  }
  double s = low_rank_log(rows_.data() + r * dim(), row_scale_[r], c);
  if (!residuals_.empty()) s += residuals_[r * n_cols_ + c];
  return s;
}

double Model::low_rank_log(const double* a, double g, std::int64_t c) const {
  const int d = dim();
  const double* z = z_.data() + c * d;
  double s = mu_ + a[0] + g * z[0];
  for (int k = 1; k < d; ++k) s += a[k] * z[k];
  return s;
}

std::vector<double> Model::additive_fold_in(const std::int64_t* cols, const double* values, std::size_t n) const {
  const std::size_t needed = static_cast<std::size_t>(n_add_ + 1) + detail::kAdditiveSpare;
  if (n_add_ == 0 || n < needed) return {};
  // A column measured more than once is one entry of the regression (distinct_entries).
  std::vector<std::int64_t> entry_cols;
  std::vector<double> entry_values;
  detail::distinct_entries(cols, values, n, entry_cols, entry_values);
  const std::size_t entries = entry_cols.size();
  if (entries < needed) return {};
  // The choice is cross-validated on at most kAdditiveCvEntries of the entries, evenly spread (it bounds the cost).
  std::vector<std::int64_t> cv_cols;
  std::vector<double> cv_values;
  const std::size_t stride = (entries + detail::kAdditiveCvEntries - 1) / detail::kAdditiveCvEntries;
  for (std::size_t i = 0; i < entries; i += stride) {
    cv_cols.push_back(entry_cols[i]);
    cv_values.push_back(entry_values[i]);
  }
  const std::size_t m = cv_cols.size();
  const std::vector<double> additive =
      detail::additive_cv(cv_cols.data(), cv_values.data(), m, add_.data(), n_add_, add_scale_.data());
  const double additive_error = detail::log_rms_error(additive.data(), cv_values.data(), m);
  if (!std::isfinite(additive_error)) return {};
  // The collaborative fold-in, cross-validated on the same folds.
  const double* residuals = residuals_.empty() ? nullptr : residuals_.data();
  const std::vector<double> folded = detail::cross_validate(m, [&](const std::vector<std::size_t>& train) {
    std::vector<std::int64_t> train_cols;
    std::vector<double> train_logy;
    for (std::size_t i : train) {
      train_cols.push_back(cv_cols[i]);
      train_logy.push_back(std::log(cv_values[i]));
    }
    detail::FoldedRow row = detail::fold_in(train_cols.data(), train_logy.data(), train.size(), z_.data(), mu_, dim(),
                                            rows_.data(), *fold_in_prior_, noise_var_, residuals, n_cols_);
    return [this, row = std::move(row), &cv_cols, residuals](std::size_t i) {
      const std::int64_t c = cv_cols[i];
      double s = low_rank_log(row.params.data(), row.scale, c);
      if (residuals)
        for (const auto& [expert, w] : row.expert_weights) s += w * residuals[expert * n_cols_ + c];
      return std::exp(s);
    };
  });
  if (additive_error >= detail::kAdditiveMargin * detail::log_rms_error(folded.data(), cv_values.data(), m)) return {};
  std::vector<double> w =
      detail::fit_additive(entry_cols.data(), entry_values.data(), entries, add_.data(), n_add_, add_scale_.data());
  // Weights that overflowed (values near the largest double), or that could overflow at a column: the row stays the
  // collaborative fold-in.
  const std::vector<double> a_max = detail::additive_max(add_.data(), n_cols_, n_add_);
  if (!(detail::additive_bound(w.data(), a_max.data(), n_add_, add_scale_.data()) <= kMaxPrediction)) return {};
  return w;
}

std::int64_t Model::fold_in_row(const std::int64_t* caller_cols, const double* caller_values, std::size_t n) {
  std::unique_lock<std::shared_mutex> lock(mutex_.mutex);
  check_fitted();
  // Copies: the caller's arrays may change during the call (they are checked once, then used many times). Checked,
  // they are put in (column, value) order: the fold-in may not depend on the caller's (sums in another order differ
  // in their last bits, and the additive choice's folds are taken by position).
  std::vector<std::int64_t> col_copy(caller_cols, caller_cols + n);
  std::vector<double> value_copy(caller_values, caller_values + n);
  std::vector<std::int64_t> rows(n, 0);
  detail::validate(Observations{rows.data(), col_copy.data(), value_copy.data(), n}, 1, n_cols_);
  std::vector<std::pair<std::int64_t, double>> entries(n);
  for (std::size_t i = 0; i < n; ++i) entries[i] = {col_copy[i], value_copy[i]};
  std::sort(entries.begin(), entries.end());  // finite values: a strict weak order
  for (std::size_t i = 0; i < n; ++i) std::tie(col_copy[i], value_copy[i]) = entries[i];
  const std::int64_t* cols = col_copy.data();
  const double* values = value_copy.data();
  std::vector<double> logy(n);
  for (std::size_t i = 0; i < n; ++i) logy[i] = std::log(values[i]);
  if (!fold_in_prior_ || fold_in_prior_->population.empty())  // a fit always leaves an observed row
    throw InvalidInput("the model has no fitted row to fold in against");
  const double* residuals = residuals_.empty() ? nullptr : residuals_.data();
  const detail::FoldedRow out = detail::fold_in(cols, logy.data(), n, z_.data(), mu_, dim(), rows_.data(),
                                                *fold_in_prior_, noise_var_, residuals, n_cols_);
  // Without ridges a fit can leave a noise variance of 1e-26, against which inconsistent entries give NaN: such a
  // row would predict NaN, and load would refuse the file that save writes.
  const auto finite = [](double v) { return std::isfinite(v); };
  const bool finite_blend = std::all_of(out.expert_weights.begin(), out.expert_weights.end(),
                                        [&](const auto& expert) { return finite(expert.second); });
  if (!std::all_of(out.params.begin(), out.params.end(), finite) || !finite(out.scale) || !finite_blend)
    throw InvalidInput("fold_in_row: the fold-in of these entries diverged to non-finite parameters (noise_var = " +
                       detail::format_value(noise_var_) + "): refit with larger ridges");
  std::vector<double> additive = additive_fold_in(cols, values, n);
  // The new row's residual: its experts' h_r, weighted as in the mixture (the global component has none).
  KernelBlend blend = residuals ? out.expert_weights : KernelBlend{};
  // Everything that can throw (out of memory) happens before the first change: a fold-in that fails leaves the
  // model as it was, every per-row array one entry per row.
  reserve_more(rows_, out.params.size());
  reserve_more(row_scale_, 1);
  reserve_more(row_counts_, 1);
  reserve_more(blends_, 1);
  reserve_more(kernels_, 1);
  reserve_more(additive_rows_, 1);
  if (residuals) reserve_more(residuals_, static_cast<std::size_t>(n_cols_));
  rows_.insert(rows_.end(), out.params.begin(), out.params.end());
  row_scale_.push_back(out.scale);
  row_counts_.push_back(0);
  blends_.push_back(std::move(blend));
  kernels_.emplace_back();
  additive_rows_.push_back(std::move(additive));
  if (residuals) {
    residuals_.resize(residuals_.size() + static_cast<std::size_t>(n_cols_), 0.0);
    blend_residuals(n_rows_);
  }
  return n_rows_++;
}

std::int64_t Model::add_cols(std::int64_t n, const Features* features, const Features* additive) {
  std::unique_lock<std::shared_mutex> lock(mutex_.mutex);
  check_fitted();
  if (n < 0) throw InvalidInput("add_cols needs n >= 0, got " + std::to_string(n));
  if (n > kMaxDim - n_cols_)
    throw InvalidInput("add_cols: n_cols would exceed " + std::to_string(kMaxDim) + " (" + std::to_string(n_cols_) +
                       " + " + std::to_string(n) + ")");
  // Everything is checked, and the arrays are reserved, before anything changes.
  check_added_cols(features, n, !x_.empty(), n_features_, false);
  check_added_cols(additive, n, n_add_ > 0, n_add_, true);
  if (n == 0) return n_cols_;  // an empty batch of new signatures
  const int d = dim();
  const std::int64_t first = n_cols_, fx = n_features_ + 1, total = n_cols_ + n;
  std::vector<double> x_new;
  if (!x_.empty()) {
    x_new.reserve(static_cast<std::size_t>(n * fx));
    for (std::int64_t c = 0; c < n; ++c) {
      for (std::int64_t j = 0; j < n_features_; ++j)
        x_new.push_back(standardise(features->data[c * n_features_ + j], feat_mean_[j], feat_scale_[j], c, j));
      x_new.push_back(1.0);
    }
  }
  std::vector<double> add_new;  // checked again as copied: the caller's array may change during the call
  if (n_add_ > 0) add_new.assign(additive->data, additive->data + n * n_add_);
  if (n_add_ > 0) check_additive(Features{add_new.data(), n, n_add_}, n);
  // An additive row predicts the new columns from their additive features: they must not let its values overflow.
  if (std::any_of(additive_rows_.begin(), additive_rows_.end(), [](const auto& w) { return !w.empty(); })) {
    std::vector<double> a_max = detail::additive_max(add_.data(), n_cols_, n_add_);
    const std::vector<double> new_max = detail::additive_max(add_new.data(), n, n_add_);
    for (std::int64_t j = 0; j < n_add_; ++j) a_max[j] = std::max(a_max[j], new_max[j]);
    for (std::int64_t r = 0; r < n_rows_; ++r) {
      const std::vector<double>& w = additive_rows_[r];
      const double bound = w.empty() ? 0.0 : detail::additive_bound(w.data(), a_max.data(), n_add_, add_scale_.data());
      if (!(bound <= kMaxPrediction))
        throw InvalidInput("additive_features of the new columns would make additive row " + std::to_string(r) +
                           "'s values overflow (up to " + detail::format_value(bound) + ")");
    }
  }
  const std::size_t x_size = x_.size(), add_size = add_.size();
  x_.reserve(x_size + x_new.size());
  add_.reserve(add_size + static_cast<std::size_t>(n * n_add_));
  dev_.reserve(static_cast<std::size_t>(total * d));
  z_.reserve(static_cast<std::size_t>(total * d));
  col_counts_.reserve(static_cast<std::size_t>(total));
  x_.insert(x_.end(), x_new.begin(), x_new.end());
  add_.insert(add_.end(), add_new.begin(), add_new.end());
  dev_.resize(static_cast<std::size_t>(total * d), 0.0);
  col_counts_.resize(static_cast<std::size_t>(total), 0);
  n_cols_ = total;
  try {
    if (!x_.empty()) clip_features(first);
    refresh_col_params(first);
    refresh_residuals(first);  // changes nothing when it throws
  } catch (...) {               // out of memory: back to the columns before
    n_cols_ = first;
    x_.resize(x_size);
    xp_.resize(x_size);
    add_.resize(add_size);
    dev_.resize(static_cast<std::size_t>(first * d));
    z_.resize(static_cast<std::size_t>(first * d));
    col_counts_.resize(static_cast<std::size_t>(first));
    throw;
  }
  return first;
}

void Model::refresh_fold_in_prior() {
  fold_in_prior_ = std::make_shared<const detail::FoldInPrior>(detail::make_prior(rows_, row_counts_, dim()));
}

void Model::fit_kernels(const std::vector<std::int64_t>& ptr, const std::vector<std::int64_t>& index,
                        const std::vector<double>& rho, const std::atomic<bool>* stop) {
  const int fx = static_cast<int>(n_features_ + 1);
  const bool on = config_.kernel_residual && !x_.empty();
  const detail::ColumnBasis basis =
      on ? detail::column_basis(xp_.data(), fx, n_cols_, detail::basis_rank_limit(ptr.data(), n_rows_, n_cols_))
         : detail::ColumnBasis{};
  // Rows without training entries (folded in earlier, or never observed) are now the mean row: no residual.
  detail::parallel_chunks(
      n_rows_, threads(),
      [&](std::int64_t lo, std::int64_t hi) {
        for (std::int64_t r = lo; r < hi && !detail::stopped(stop); ++r) {
          const std::int64_t b = ptr[r], n = ptr[r + 1] - b;
          kernels_[r] = on && n > 0 ? detail::fit_row_kernel(index.data() + b, rho.data() + b,
                                                             static_cast<std::size_t>(n), xp_.data(), fx,
                                                             config_.seed * 0x9E3779B97F4A7C15ULL + r, basis)
                                    : KernelExpansion{};
          blends_[r].clear();
        }
      },
      1);
  check_stop(stop);  // the kernels are often most of a fit's time (review)
  refresh_residuals();
}

void Model::refresh_residuals(std::int64_t first_new_col) {
  const bool any =
      std::any_of(kernels_.begin(), kernels_.end(), [](const KernelExpansion& h) { return !h.cols.empty(); });
  if (!any || x_.empty()) {
    residuals_.clear();
    return;
  }
  // The table keeps its first columns (when it has them: it is first_new_col wide) and evaluates the others; it
  // replaces the old one only once it is complete, so this changes nothing when it throws.
  const std::int64_t kept = residuals_.empty() ? 0 : first_new_col;
  if (n_rows_ > static_cast<std::int64_t>(PTRDIFF_MAX / sizeof(double)) / n_cols_) throw std::bad_alloc();
  std::vector<double> table(static_cast<std::size_t>(n_rows_ * n_cols_), 0.0);
  for (std::int64_t r = 0; r < n_rows_; ++r)
    std::copy_n(residuals_.data() + r * kept, kept, table.data() + r * n_cols_);
  const int fx = static_cast<int>(n_features_ + 1);
  detail::parallel_chunks(
      n_rows_, threads(),
      [&](std::int64_t lo, std::int64_t hi) {
        for (std::int64_t r = lo; r < hi; ++r)
          detail::evaluate_kernel(kernels_[r], xp_.data(), fx, kept, n_cols_, table.data() + r * n_cols_ + kept);
      },
      1);
  residuals_ = std::move(table);
  for (std::int64_t r = 0; r < n_rows_; ++r) blend_residuals(r, kept);  // after the fitted rows they blend
}

void Model::blend_residuals(std::int64_t r, std::int64_t first_col) {
  double* mine = residuals_.data() + r * n_cols_;
  for (const auto& [expert, w] : blends_[static_cast<std::size_t>(r)]) {
    const double* theirs = residuals_.data() + expert * n_cols_;
    for (std::int64_t c = first_col; c < n_cols_; ++c) mine[c] += w * theirs[c];
  }
}

}  // namespace cf
