// cf_cpp core interface: hybrid matrix factorization for latency / energy prediction.
//
// The model works in log space. For row r (a device) and column c (a block signature) it predicts
//
//     log y(r, c) = mu + b_r + [g_r, p_r] . z_c,        z_c = [b_c, q_c] = Theta x_c + e_c
//
// mu is the global mean, b_r / p_r the row bias and factors, z_c the column bias and factors. With column
// features x_c (standardised internally, plus an intercept) every column has a prior Theta x_c, learned from the
// data, so a column nobody has measured is still predicted (e_c = 0) and a sparsely measured one stays close to its
// prior (e_c is ridge-regularised). Without features Theta is absent and the model is a plain biased MF.
// g_r, the row's coefficient of the column bias, is 1 for fitted rows; a folded-in row may have another (fold_in.h).
// With features and kernel_residual, each row also gets h_r(c), a kernel ridge regression of its training residuals
// on the column features (src/row_kernel.h), added to the prediction; a folded-in row takes its experts' h_r.
//
// Fitting is alternating least squares; every row / column solve is independent, so the work is split across
// std::threads and the result does not depend on the thread count. Only plain C++ types cross this interface.
//
// A Model may be shared between threads: calls that only read it (predict_log, save, the inspection accessors, which
// return copies) run at the same time; fit, refit, fold_in_row and add_cols wait for every other call to finish.
// fit / refit / fold_in_row / add_cols change nothing when they throw.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <shared_mutex>
#include <string>
#include <utility>
#include <vector>

#include "cf_cpp/errors.h"

namespace cf {

namespace detail {
struct FoldInPrior;  // src/fold_in.h

// The lock of one Model object: a copied or moved-from Model gets a fresh one (it guards an object, not a value).
struct ObjectMutex {
  ObjectMutex() = default;
  ObjectMutex(const ObjectMutex&) {}
  ObjectMutex& operator=(const ObjectMutex&) { return *this; }
  mutable std::shared_mutex mutex;
};
}

// A fitted row's kernel residual as an expansion over columns: h(c) = sum_i alpha[i] k(x_{cols[i]}, x_c)
// (src/row_kernel.h). Empty = no correction.
struct KernelExpansion {
  std::vector<std::int64_t> cols;
  std::vector<double> alpha;
};

// A folded-in row's kernel residual: the weighted sum of its experts' (fitted rows') residuals.
using KernelBlend = std::vector<std::pair<std::int64_t, double>>;

// Size limits, checked (InvalidInput) before anything is allocated; load checks them too.
constexpr std::int64_t kMaxDim = std::int64_t{1} << 40;  // rows, columns
constexpr int kMaxRank = 1024;
// Column features per column: fit and refit refuse more, and so does load. Far above what a fit can hold (its
// per-row feature Grams take n_rows (F + 1)^2 doubles: 8 TiB a row at this limit).
constexpr std::int64_t kMaxFeatures = std::int64_t{1} << 20;
constexpr std::int64_t kUnchanged = -1;  // refit's n_rows / n_cols: the model's current size
// A model with kernel residuals has an n_rows x n_cols table of them, which load builds: a file (of O(n_rows + n_cols)
// bytes) declaring more entries than this (2 GiB of them) is refused, and save refuses such a model.
constexpr std::int64_t kMaxLoadedTable = std::int64_t{1} << 28;
// Filling that table costs per row O(n F n_cols) or O(F^2 (n + n_cols)) multiply-adds (an expansion of n entries, F
// features; src/row_kernel.h), plus n_cols per expert of a folded-in row, which a file of O(n + F) bytes may declare:
// one whose table would cost more than this to fill (about 10 s on one core) is refused, and save refuses such a
// model.
constexpr double kMaxLoadedWork = 0x1p34;
// Bound, from the parameters, on every log prediction, and on every additive row's raw value, of a model that save
// writes and load reads: a model whose predictions could overflow is refused. fold_in_row and add_cols keep to it for
// additive rows.
constexpr double kMaxPrediction = std::numeric_limits<double>::max() / 2;

// Hyperparameters. Regularisation constants are absolute (not scaled by the number of observations).
struct Config {
  int rank = 16;                // latent dimension k (0 = biases only, at most kMaxRank)
  double reg = 0.3;             // ridge on row factors p_r
  double reg_bias = 0.01;       // ridge on row biases b_r
  double reg_col = 3.0;         // ridge on column factor deviations from the prior (q part of e_c)
  double reg_col_bias = 3.0;    // ridge on column bias deviation from the prior (b part of e_c)
  double reg_features = 1.0;    // ridge on the feature map Theta
  int iterations = 20;          // ALS sweeps
  std::uint64_t seed = 0;       // initialisation seed
  int threads = 0;              // 0 = hardware concurrency (more than it are not started)
  double init_scale = 0.1;      // std of the random initial factors
  bool kernel_residual = true;  // per-row kernel residual on the column features (only with features)
};

// Borrowed views of caller-owned arrays (no copies are made by the interface).
struct Observations {
  const std::int64_t* rows = nullptr;
  const std::int64_t* cols = nullptr;
  const double* values = nullptr;  // strictly positive, finite (raw units, e.g. ms)
  std::size_t size = 0;
};

struct Features {
  const double* data = nullptr;  // row-major n_cols x n_features
  std::int64_t n_cols = 0;
  std::int64_t n_features = 0;
};

class Model {
 public:
  explicit Model(const Config& config = Config());

  // Fits from scratch. features may be null (no cold start); additive (raw, >= 0) may be null (no additive rows).
  // Throws InvalidInput on bad input, and Interrupted, the model as it was, once `stop` (may be null) is set: it is
  // looked at between any two row or column solves, and once more before the model takes the result.
  void fit(const Observations& obs, std::int64_t n_rows, std::int64_t n_cols, const Features* features,
           const Features* additive = nullptr, const std::atomic<bool>* stop = nullptr);

  // Warm-started refit: existing rows / columns keep their factors as the starting point, new ones (when
  // n_rows / n_cols grew) are initialised; kUnchanged keeps the size the model has when the refit takes its lock (a
  // fold-in or add_cols in another thread may grow it until then). features / additive null keep the current ones
  // (they must then cover n_cols). Every row becomes an ALS row again (no additive rows). iterations -1 =
  // config().iterations. `stop` as for fit.
  void refit(const Observations& obs, std::int64_t n_rows, std::int64_t n_cols, const Features* features,
             int iterations, const Features* additive = nullptr, const std::atomic<bool>* stop = nullptr);

  // Log-space predictions into out[0..n).
  void predict_log(const std::int64_t* rows, const std::int64_t* cols, std::size_t n, double* out) const;
  // Every entry's log prediction, row-major, and the shape it was predicted at (read under one lock: a refit in
  // another thread cannot change the shape in between).
  std::vector<double> predict_matrix_log(std::int64_t* n_rows, std::int64_t* n_cols) const;

  // Adds a row from its revealed entries against the fixed column model (Bayesian fold-in with a mixture prior built
  // from the fitted rows; see src/fold_in.h), or an additive row (src/additive.h); returns its index. Throws
  // InvalidInput where the fold-in's parameters are not finite.
  std::int64_t fold_in_row(const std::int64_t* cols, const double* values, std::size_t n);

  // Appends n >= 0 new (cold) columns predicted from their features (null only when the model has no features) and
  // their additive features (null only when the model has none; InvalidInput where they would make an additive row's
  // values pass kMaxPrediction).
  std::int64_t add_cols(std::int64_t n, const Features* features, const Features* additive = nullptr);

  // save throws InvalidInput, writing nothing, for a model that load would refuse (check_values, check_sizes,
  // check_bounded); load throws IoError for a bad file, also where it runs out of memory.
  void save(const std::string& path) const;
  static Model load(const std::string& path);

  // Inspection (copies, taken under the lock).
  Config config() const { return read(config_); }
  bool fitted() const { return read(fitted_); }
  std::int64_t n_rows() const { return read(n_rows_); }
  std::int64_t n_cols() const { return read(n_cols_); }
  std::int64_t n_features() const { return read(n_features_); }
  std::int64_t n_additive() const { return read(n_add_); }
  double global_mean() const { return read(mu_); }
  std::vector<double> row_params() const { return read(rows_); }  // n_rows x (k+1): [b_r, p_r]
  std::vector<double> col_params() const { return read(z_); }     // n_cols x (k+1): z_c = [b_c, q_c]
  std::vector<std::int64_t> col_counts() const { return read(col_counts_); }
  std::vector<double> row_scales() const { return read(row_scale_); }      // g_r (1 for fitted rows)
  std::vector<std::int64_t> row_counts() const { return read(row_counts_); }  // training observations per row
  double noise_var() const { return read(noise_var_); }  // mean squared training residual of the ALS model (log)
  // h_r(c) of every row and column, row-major n_rows x n_cols (the shape it was read at, when asked); empty when no
  // row has a kernel residual.
  std::vector<double> row_residuals(std::int64_t* n_rows = nullptr, std::int64_t* n_cols = nullptr) const {
    std::shared_lock<std::shared_mutex> lock(mutex_.mutex);
    if (n_rows) *n_rows = n_rows_;
    if (n_cols) *n_cols = n_cols_;
    return residuals_;
  }
  // Per row: w_r (n_additive + 1) of an additive row, empty for the others.
  std::vector<std::vector<double>> additive_rows() const { return read(additive_rows_); }

 private:
  template <class T>
  T read(const T& member) const {
    std::shared_lock<std::shared_mutex> lock(mutex_.mutex);
    return member;
  }
  // fit with the lock held (refit of an unfitted model fits).
  void fit_unlocked(const Observations& obs, std::int64_t n_rows, std::int64_t n_cols, const Features* features,
                    int iterations, const Features* additive, const std::atomic<bool>* stop);
  int dim() const { return config_.rank + 1; }
  int threads() const;  // worker threads of a parallel section: config().threads, at most the hardware's
  double entry_log(std::int64_t r, std::int64_t c) const;  // one in-range entry's log prediction (lock held)
  void check_fitted() const;
  void set_features(const Features& f);
  void set_additive(const Features& a, std::int64_t n_cols);
  void set_feature_range();                  // x_lo_, x_hi_ from the measured columns (col_counts_), then xp_
  void clip_features(std::int64_t first);    // xp_ for the columns from first on (those before are kept)
  // The model's log value at column c for row parameters a = [b, p] and column-bias coefficient g (no residual).
  double low_rank_log(const double* a, double g, std::int64_t c) const;
  // A new row's additive weights from its revealed entries (a column given more than once counting once), or empty
  // when the fold-in cross-validates as well or the weights could overflow (kMaxPrediction).
  std::vector<double> additive_fold_in(const std::int64_t* cols, const double* values, std::size_t n) const;
  void grow(std::int64_t n_rows, std::int64_t n_cols);
  void run_als(const Observations& obs, int iterations, const std::atomic<bool>* stop);
  void refresh_col_params(std::int64_t first_new_col = 0);  // columns before first_new_col keep their z_
  void refresh_fold_in_prior();
  void fit_kernels(const std::vector<std::int64_t>& ptr, const std::vector<std::int64_t>& index,
                   const std::vector<double>& rho, const std::atomic<bool>* stop);
  void refresh_residuals(std::int64_t first_new_col = 0);  // columns before first_new_col keep their values
  // Adds a folded-in row's blend of its experts' residuals to its own, at the columns from first_col on.
  void blend_residuals(std::int64_t r, std::int64_t first_col = 0);
  // What load accepts (src/serialize.cpp), each throwing InvalidInput that says what is wrong: every parameter finite
  // (counts, scales and additive features >= 0); the sizes load allows (kMaxFeatures, kMaxLoadedTable,
  // kMaxLoadedWork); every prediction within kMaxPrediction by a bound from the parameters, in
  // O(n_cols dim + n_rows dim) plus the residual table.
  void check_values() const;
  void check_sizes() const;
  void check_bounded() const;

  detail::ObjectMutex mutex_;  // shared: the calls that only read; exclusive: fit, refit, fold_in_row, add_cols
  Config config_;
  bool fitted_ = false;
  std::int64_t n_rows_ = 0, n_cols_ = 0, n_features_ = 0;  // n_features_ counts the raw features
  double mu_ = 0.0;
  std::vector<double> rows_;        // n_rows x dim
  std::vector<double> row_scale_;   // n_rows: g_r
  std::vector<std::int64_t> row_counts_;  // n_rows: 0 = folded in or unobserved (not in the fold-in population)
  double noise_var_ = 0.0;
  // Derived, rebuilt (never mutated) after every fit / refit / load: the fold-in population and prior.
  std::shared_ptr<const detail::FoldInPrior> fold_in_prior_;
  std::vector<double> dev_;         // n_cols x dim: e_c
  std::vector<double> x_;           // n_cols x (n_features + 1): standardised features + intercept
  // Derived (after every fit / refit / load, extended by add_cols): x_ as priors and kernel residuals read it, each
  // feature of an unmeasured column clipped to the measured columns' range widened by kFeatureMargin.
  std::vector<double> xp_;
  std::vector<double> x_lo_, x_hi_;  // n_features: that widened range
  std::vector<double> feat_mean_, feat_scale_;  // raw -> standardised (scale 0 drops a constant feature)
  std::vector<double> theta_;       // dim x (n_features + 1)
  std::vector<double> z_;           // cache: n_cols x dim, z_c = Theta x_c + e_c
  std::vector<std::int64_t> col_counts_;
  std::vector<KernelExpansion> kernels_;  // n_rows: fitted rows' h_r (all empty without kernel residuals)
  std::vector<KernelBlend> blends_;       // n_rows: folded-in rows' h_r
  std::vector<double> residuals_;         // cache: n_rows x n_cols, h_r(c); empty when every h_r = 0
  std::int64_t n_add_ = 0;                // additive features per column (0 = none)
  std::vector<double> add_;               // n_cols x n_add: raw additive features
  std::vector<double> add_scale_;         // n_add: their root mean square over the fit's columns
  std::vector<std::vector<double>> additive_rows_;  // n_rows: w_r of additive rows, empty for the others
};

}  // namespace cf
