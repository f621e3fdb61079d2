#include <doctest/doctest.h>

#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cmath>
#include <fstream>
#include <new>
#include <thread>
#include <vector>

#include "cf_cpp/model.h"
#include "sparse.h"
#include "synthetic.h"

namespace {

double log_rmse(const cf::Model& m, const Synthetic& s, std::int64_t n_rows) {
  double se = 0;
  std::int64_t n = 0;
  std::vector<double> out(1);
  for (std::int64_t r = 0; r < n_rows; ++r)
    for (std::int64_t c = 0; c < s.n_cols; ++c) {
      m.predict_log(&r, &c, 1, out.data());
      se += std::pow(out[0] - s.truth_log[r * s.n_cols + c], 2);
      ++n;
    }
  return std::sqrt(se / static_cast<double>(n));
}

// Built with AddressSanitizer (GCC says so with __SANITIZE_ADDRESS__, clang with __has_feature).
#if defined(__SANITIZE_ADDRESS__)
#define CF_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CF_ASAN 1
#endif
#endif
#ifndef CF_ASAN
#define CF_ASAN 0
#endif

// Lowers this process's address-space limit to 1 GiB above its current size while alive: larger allocations fail
// with std::bad_alloc whatever the machine's overcommit policy.
class AddressSpaceLimit {
 public:
  AddressSpaceLimit() {
    getrlimit(RLIMIT_AS, &saved_);
    std::size_t pages = 0;
    std::ifstream("/proc/self/statm") >> pages;
    rlimit lower = saved_;
    lower.rlim_cur = static_cast<rlim_t>(pages) * static_cast<rlim_t>(sysconf(_SC_PAGESIZE)) + (rlim_t{1} << 30);
    setrlimit(RLIMIT_AS, &lower);
  }
  ~AddressSpaceLimit() { setrlimit(RLIMIT_AS, &saved_); }

 private:
  rlimit saved_{};
};

std::vector<double> all_predictions(const cf::Model& m) {
  std::vector<std::int64_t> rows, cols;
  for (std::int64_t r = 0; r < m.n_rows(); ++r)
    for (std::int64_t c = 0; c < m.n_cols(); ++c) {
      rows.push_back(r);
      cols.push_back(c);
    }
  std::vector<double> out(rows.size());
  m.predict_log(rows.data(), cols.data(), rows.size(), out.data());
  return out;
}

cf::Config small_config() {
  cf::Config c;
  c.rank = 4;
  c.iterations = 15;
  c.seed = 7;
  return c;
}

}  // namespace

TEST_CASE("fit recovers a low-rank matrix from 40% of its entries") {
  Synthetic s = make_synthetic(30, 200, 0.4, 1);
  cf::Features f{s.features.data(), s.n_cols, s.n_features};
  cf::Model m(small_config());
  m.fit(observations(s), s.n_rows, s.n_cols, &f);
  CHECK(m.fitted());
  CHECK(log_rmse(m, s, s.n_rows) < 0.1);
}

TEST_CASE("a fit or refit whose stop flag is set throws Interrupted and leaves the model as it was") {
  Synthetic s = make_synthetic(30, 200, 0.4, 1);
  cf::Features f{s.features.data(), s.n_cols, s.n_features};
  std::atomic<bool> stop{true};
  cf::Model m(small_config());
  CHECK_THROWS_AS(m.fit(observations(s), s.n_rows, s.n_cols, &f, nullptr, &stop), cf::Interrupted);
  CHECK_FALSE(m.fitted());
  m.fit(observations(s), s.n_rows, s.n_cols, &f);
  const std::vector<double> before = all_predictions(m);
  CHECK_THROWS_AS(m.refit(observations(s), cf::kUnchanged, cf::kUnchanged, nullptr, -1, nullptr, &stop),
                  cf::Interrupted);
  CHECK(all_predictions(m) == before);
  // set from another thread while the fit runs (as the Python binding does on Ctrl-C)
  cf::Config big = small_config();
  big.rank = 64;
  big.iterations = 100000;
  stop = false;
  std::thread later([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    stop = true;
  });
  CHECK_THROWS_AS(cf::Model(big).fit(observations(s), s.n_rows, s.n_cols, &f, nullptr, &stop), cf::Interrupted);
  later.join();
}

TEST_CASE("results do not depend on the thread count") {
  Synthetic s = make_synthetic(40, 300, 0.3, 2);
  cf::Features f{s.features.data(), s.n_cols, s.n_features};
  cf::Config c1 = small_config(), c4 = small_config();
  c1.threads = 1;
  c4.threads = 4;
  cf::Model a(c1), b(c4);
  a.fit(observations(s), s.n_rows, s.n_cols, &f);
  b.fit(observations(s), s.n_rows, s.n_cols, &f);
  CHECK(a.row_params() == b.row_params());
  CHECK(a.col_params() == b.col_params());
}

TEST_CASE("the same seed gives the same model, another seed a different start") {
  Synthetic s = make_synthetic(20, 100, 0.5, 3);
  cf::Config c = small_config();
  cf::Model a(c), b(c);
  a.fit(observations(s), s.n_rows, s.n_cols, nullptr);
  b.fit(observations(s), s.n_rows, s.n_cols, nullptr);
  CHECK(a.row_params() == b.row_params());
  c.seed = 8;
  cf::Model d(c);
  d.fit(observations(s), s.n_rows, s.n_cols, nullptr);
  CHECK(a.row_params() != d.row_params());
}

TEST_CASE("unmeasured columns are predicted from their features") {
  Synthetic s = make_synthetic(30, 200, 0.5, 4);
  // Drop every observation of columns >= 150: they are cold.
  Synthetic train = s;
  train.rows.clear();
  train.cols.clear();
  train.values.clear();
  for (std::size_t i = 0; i < s.values.size(); ++i)
    if (s.cols[i] < 150) {
      train.rows.push_back(s.rows[i]);
      train.cols.push_back(s.cols[i]);
      train.values.push_back(s.values[i]);
    }
  cf::Features f{s.features.data(), s.n_cols, s.n_features};
  cf::Model with(small_config()), without(small_config());
  with.fit(observations(train), s.n_rows, s.n_cols, &f);
  without.fit(observations(train), s.n_rows, s.n_cols, nullptr);
  CHECK(with.col_counts()[160] == 0);
  double se_with = 0, se_without = 0;
  std::vector<double> out(1);
  for (std::int64_t r = 0; r < s.n_rows; ++r)
    for (std::int64_t c = 150; c < s.n_cols; ++c) {
      double t = s.truth_log[r * s.n_cols + c];
      with.predict_log(&r, &c, 1, out.data());
      se_with += (out[0] - t) * (out[0] - t);
      without.predict_log(&r, &c, 1, out.data());
      se_without += (out[0] - t) * (out[0] - t);
    }
  CHECK(std::sqrt(se_with / (30 * 50)) < 0.15);
  CHECK(se_with < 0.1 * se_without);
}

TEST_CASE("without a ridge on the feature map, a constant feature or zero initial factors keep the prior") {
  // reg_features = 0 with a constant feature (standardised to 0), or with init_scale = 0 (every factor 0 at first):
  // the feature map's solve divided by a zero on its preconditioner's diagonal, the NaN stopped it at once and Theta
  // stayed 0, so unmeasured columns had no prior.
  Synthetic s = make_synthetic(20, 60, 0.6, 21);
  Synthetic train = s;  // columns >= 50 unmeasured
  train.rows.clear();
  train.cols.clear();
  train.values.clear();
  for (std::size_t i = 0; i < s.values.size(); ++i)
    if (s.cols[i] < 50) {
      train.rows.push_back(s.rows[i]);
      train.cols.push_back(s.cols[i]);
      train.values.push_back(s.values[i]);
    }
  std::vector<double> with_constant;
  for (std::int64_t c = 0; c < s.n_cols; ++c) {
    with_constant.insert(with_constant.end(), s.features.begin() + c * 3, s.features.begin() + c * 3 + 3);
    with_constant.push_back(7.0);
  }
  const cf::Features f{s.features.data(), s.n_cols, 3}, fc{with_constant.data(), s.n_cols, 4};
  cf::Config c = small_config();
  c.reg_features = 0;
  cf::Model plain(c), constant(c);
  plain.fit(observations(train), s.n_rows, s.n_cols, &f);
  constant.fit(observations(train), s.n_rows, s.n_cols, &fc);
  c.init_scale = 0;
  cf::Model zero(c);
  zero.fit(observations(train), s.n_rows, s.n_cols, &f);
  c.reg_features = 1e-12;
  cf::Model tiny(c);
  tiny.fit(observations(train), s.n_rows, s.n_cols, &f);
  const std::vector<double> zp = plain.col_params(), zc = constant.col_params(), z0 = zero.col_params(),
                            zt = tiny.col_params();
  const std::size_t d = static_cast<std::size_t>(c.rank + 1);
  double spread_constant = 0, spread_zero = 0;  // largest |bias| of an unmeasured column: 0 without a prior
  for (std::size_t col = 50; col < 60; ++col) {
    // The same prior as without the constant feature (to the solve's tolerance), and as with a tiny ridge.
    CHECK(zc[col * d] == doctest::Approx(zp[col * d]).epsilon(0.03));
    CHECK(z0[col * d] == doctest::Approx(zt[col * d]).epsilon(1e-6));
    spread_constant = std::max(spread_constant, std::fabs(zc[col * d]));
    spread_zero = std::max(spread_zero, std::fabs(z0[col * d]));
  }
  CHECK(spread_constant > 0.3);
  CHECK(spread_zero > 0.3);
}

TEST_CASE("fold_in_row adds a row close to the held-out truth") {
  Synthetic s = make_synthetic(31, 200, 1.0, 5);
  Synthetic train = s;
  train.rows.clear();
  train.cols.clear();
  train.values.clear();
  std::vector<std::int64_t> new_cols;
  std::vector<double> new_vals;
  for (std::size_t i = 0; i < s.values.size(); ++i) {
    if (s.rows[i] < 30) {
      train.rows.push_back(s.rows[i]);
      train.cols.push_back(s.cols[i]);
      train.values.push_back(s.values[i]);
    } else if (s.cols[i] % 10 == 0) {  // 20 revealed entries of the new row
      new_cols.push_back(s.cols[i]);
      new_vals.push_back(s.values[i]);
    }
  }
  cf::Features f{s.features.data(), s.n_cols, s.n_features};
  cf::Model m(small_config());
  m.fit(observations(train), 30, s.n_cols, &f);
  std::int64_t r = m.fold_in_row(new_cols.data(), new_vals.data(), new_cols.size());
  CHECK(r == 30);
  CHECK(m.n_rows() == 31);
  double se = 0;
  std::vector<double> out(1);
  for (std::int64_t c = 0; c < s.n_cols; ++c) {
    m.predict_log(&r, &c, 1, out.data());
    se += std::pow(out[0] - s.truth_log[30 * s.n_cols + c], 2);
  }
  CHECK(std::sqrt(se / s.n_cols) < 0.15);
}

TEST_CASE("fold_in_row with no entries is the mean fitted row, and folded rows do not join the prior") {
  Synthetic s = make_synthetic(20, 120, 0.5, 11);
  cf::Features f{s.features.data(), s.n_cols, s.n_features};
  cf::Model m(small_config());
  m.fit(observations(s), s.n_rows, s.n_cols, &f);
  const int d = m.config().rank + 1;
  std::int64_t empty = m.fold_in_row(nullptr, nullptr, 0);
  for (int i = 0; i < d; ++i) {
    double mean = 0;
    for (std::int64_t r = 0; r < 20; ++r) mean += m.row_params()[r * d + i] / 20.0;
    CHECK(m.row_params()[empty * d + i] == doctest::Approx(mean).epsilon(1e-12));
  }
  CHECK(m.row_scales()[empty] == 1.0);
  // The same three entries folded in twice give the same row: earlier fold-ins do not shift the prior.
  std::vector<std::int64_t> cols = {3, 50, 97};
  std::vector<double> vals = {2.0, 0.5, 4.0};
  std::int64_t a = m.fold_in_row(cols.data(), vals.data(), cols.size());
  std::int64_t b = m.fold_in_row(cols.data(), vals.data(), cols.size());
  for (int i = 0; i < d; ++i) CHECK(m.row_params()[a * d + i] == m.row_params()[b * d + i]);
  CHECK(m.row_scales()[a] == m.row_scales()[b]);
  CHECK(m.row_counts()[a] == 0);
  CHECK(m.row_counts()[0] > 0);
}

TEST_CASE("a new device that copies a fitted one, up to a scale, is recognised from a few entries") {
  Synthetic s = make_synthetic(20, 200, 0.6, 12);
  cf::Features f{s.features.data(), s.n_cols, s.n_features};
  cf::Model m(small_config());
  m.fit(observations(s), s.n_rows, s.n_cols, &f);
  auto new_row_rmse = [&](double offset, double slope, std::size_t n, double* scale) {
    std::vector<std::int64_t> cols;
    std::vector<double> vals;
    for (std::size_t i = 0; i < n; ++i) {
      cols.push_back(static_cast<std::int64_t>(i * 200 / n));
      vals.push_back(std::exp(offset + slope * s.truth_log[4 * s.n_cols + cols.back()]));
    }
    std::int64_t r = m.fold_in_row(cols.data(), vals.data(), n);
    *scale = m.row_scales()[r];
    double se = 0, out = 0;
    for (std::int64_t c = 0; c < s.n_cols; ++c) {
      m.predict_log(&r, &c, 1, &out);
      se += std::pow(out - (offset + slope * s.truth_log[4 * s.n_cols + c]), 2);
    }
    return std::sqrt(se / static_cast<double>(s.n_cols));
  };
  double scale = 0;
  CHECK(new_row_rmse(0.0, 1.0, 5, &scale) < 0.02);  // an exact copy of device 4
  CHECK(scale == doctest::Approx(1.0).epsilon(0.01));
  CHECK(new_row_rmse(0.4, 1.5, 10, &scale) < 0.05);  // 1.5x more sensitive to the column: g = 1.5
  CHECK(scale == doctest::Approx(1.5).epsilon(0.05));
}

TEST_CASE("warm-started refit with one sweep stays as good as the fit") {
  Synthetic s = make_synthetic(30, 200, 0.4, 6);
  cf::Features f{s.features.data(), s.n_cols, s.n_features};
  cf::Model m(small_config());
  m.fit(observations(s), s.n_rows, s.n_cols, &f);
  double before = log_rmse(m, s, s.n_rows);
  m.refit(observations(s), s.n_rows, s.n_cols, nullptr, 1);
  CHECK(log_rmse(m, s, s.n_rows) < before * 1.05 + 1e-3);
  CHECK_THROWS_AS(m.refit(observations(s), s.n_rows - 1, s.n_cols, nullptr, 1), cf::InvalidInput);
}

TEST_CASE("add_cols appends cold columns predicted from features") {
  Synthetic s = make_synthetic(20, 100, 0.5, 7);
  cf::Features f{s.features.data(), 80, s.n_features};
  Synthetic train = s;
  train.rows.clear();
  train.cols.clear();
  train.values.clear();
  for (std::size_t i = 0; i < s.values.size(); ++i)
    if (s.cols[i] < 80) {
      train.rows.push_back(s.rows[i]);
      train.cols.push_back(s.cols[i]);
      train.values.push_back(s.values[i]);
    }
  cf::Model m(small_config());
  m.fit(observations(train), s.n_rows, 80, &f);
  cf::Features extra{s.features.data() + 80 * 3, 20, 3};
  CHECK(m.add_cols(20, &extra) == 80);
  CHECK(m.n_cols() == 100);
  std::int64_t r = 3, c = 95;
  double out = 0;
  m.predict_log(&r, &c, 1, &out);
  CHECK(std::fabs(out - s.truth_log[3 * 100 + 95]) < 0.4);
  CHECK_THROWS_AS(m.add_cols(2, nullptr), cf::InvalidInput);
}

TEST_CASE("an unmeasured column far from every measured one is not extrapolated without bound") {
  // Four alike measured columns (feature 0 within 0.001 of 18.3, feature 1 spread over 0..3) on two rows, values
  // near 0.4 and 0.6; a column whose feature 0 is 0 (a Reshape's log FLOPs beside four convolutions') went to exp(-60)
  // through the prior, fitted at the measured columns' spread of 0.0004. Clipped to that range plus one standard
  // deviation it stays near the measured values, whether fitted unmeasured, added by add_cols or loaded.
  const std::vector<double> features = {18.3004, 0.0, 18.3001, 1.0, 18.2999, 2.0, 18.2996, 3.0, 0.0, 1.5};
  const std::vector<std::int64_t> rows = {0, 0, 0, 0, 1, 1, 1, 1}, cols = {0, 1, 2, 3, 0, 1, 2, 3};
  const std::vector<double> values = {0.39, 0.39, 0.40, 0.54, 0.58, 0.59, 0.60, 0.80};
  cf::Observations obs{rows.data(), cols.data(), values.data(), values.size()};
  cf::Config config;
  config.rank = 1;
  cf::Model fitted(config);
  cf::Features all{features.data(), 5, 2};
  fitted.fit(obs, 2, 5, &all);
  cf::Model added(config);
  cf::Features measured{features.data(), 4, 2}, cold{features.data() + 8, 1, 2};
  added.fit(obs, 2, 4, &measured);
  CHECK(added.add_cols(1, &cold) == 4);
  const std::string path = "cf_cpp_test_far_column.bin";
  added.save(path);
  const cf::Model loaded = cf::Model::load(path);
  std::remove(path.c_str());
  const cf::Model* models[] = {&fitted, &added, &loaded};
  for (const cf::Model* m : models)
    for (std::int64_t r = 0; r < 2; ++r) {
      const std::int64_t c = 4;
      double out = 0;
      m->predict_log(&r, &c, 1, &out);
      CHECK(std::fabs(out - std::log(r == 0 ? 0.43 : 0.64)) < std::log(3.0));
    }
}

TEST_CASE("invalid input raises InvalidInput with a clear message") {
  std::vector<std::int64_t> rows = {0, 1}, cols = {0, 5};
  std::vector<double> values = {1.0, 2.0};
  cf::Model m(small_config());
  CHECK_THROWS_WITH_AS(m.fit(cf::Observations{rows.data(), cols.data(), values.data(), 2}, 2, 3, nullptr),
                       "cols[1] = 5 is out of range [0, 3)", cf::InvalidInput);
  cols[1] = 1;
  values[0] = -1.0;
  CHECK_THROWS_AS(m.fit(cf::Observations{rows.data(), cols.data(), values.data(), 2}, 2, 3, nullptr),
                  cf::InvalidInput);
  values[0] = std::nan("");
  CHECK_THROWS_AS(m.fit(cf::Observations{rows.data(), cols.data(), values.data(), 2}, 2, 3, nullptr),
                  cf::InvalidInput);
  double out;
  CHECK_THROWS_WITH_AS(m.predict_log(rows.data(), cols.data(), 1, &out), "model is not fitted: call fit() first",
                       cf::InvalidInput);
  cf::Config bad;
  bad.rank = -1;
  CHECK_THROWS_AS(cf::Model{bad}, cf::InvalidInput);
}

TEST_CASE("error messages print values with %g") {
  std::vector<std::int64_t> rows = {0, 1}, cols = {0, 1};
  std::vector<double> values = {-1e-9, 2.0};
  cf::Model m(small_config());
  CHECK_THROWS_WITH_AS(m.fit(cf::Observations{rows.data(), cols.data(), values.data(), 2}, 2, 2, nullptr),
                       "values[0] = -1e-09 must be finite and > 0 (the model works in log space)", cf::InvalidInput);
}

TEST_CASE("overlapping calls on one model wait for each other") {
  // fold_in_row and add_cols grow the arrays that predict_log and the accessors read; before the model's lock they
  // reallocated them under a concurrent reader (use after free).
  Synthetic s = make_synthetic(60, 300, 0.3, 10);
  cf::Features f{s.features.data(), s.n_cols, s.n_features};
  cf::Config c = small_config();
  c.iterations = 2;
  c.threads = 1;
  cf::Model m(c);
  m.fit(observations(s), s.n_rows, s.n_cols, &f);
  std::atomic<bool> stop{false};
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  threads.emplace_back([&] {
    std::vector<std::int64_t> cols = {0, 10, 20, 30};
    std::vector<double> values = {1.0, 2.0, 3.0, 4.0};
    for (int k = 0; k < 150; ++k) m.fold_in_row(cols.data(), values.data(), cols.size());
  });
  threads.emplace_back([&] {
    const cf::Features one{s.features.data(), 1, s.n_features};  // the first column's features
    for (int k = 0; k < 150; ++k) m.add_cols(1, &one);
  });
  for (int t = 0; t < 2; ++t)
    threads.emplace_back([&] {
      std::vector<std::int64_t> rows(s.n_cols), cols(s.n_cols);
      std::vector<double> out(s.n_cols);
      while (!stop) {
        for (std::int64_t k = 0; k < s.n_cols; ++k) {
          rows[k] = k % s.n_rows;
          cols[k] = k;
        }
        m.predict_log(rows.data(), cols.data(), rows.size(), out.data());
        for (double v : out)
          if (!std::isfinite(v)) ++mismatches;
        if (m.row_params().size() % static_cast<std::size_t>(c.rank + 1) != 0) ++mismatches;
      }
    });
  threads[0].join();
  threads[1].join();
  stop = true;
  for (std::size_t t = 2; t < threads.size(); ++t) threads[t].join();
  CHECK(mismatches == 0);
  CHECK(m.n_rows() == 60 + 150);
  CHECK(m.n_cols() == 300 + 150);
  CHECK(m.row_params().size() == static_cast<std::size_t>((60 + 150) * (c.rank + 1)));
  CHECK(m.row_residuals().size() == static_cast<std::size_t>((60 + 150) * (300 + 150)));
}

TEST_CASE("sizes are checked up front, and a fit, refit or add_cols that fails changes nothing") {
  Synthetic s = make_synthetic(10, 40, 0.6, 11);
  cf::Model m(small_config());
  CHECK_THROWS_AS(m.fit(observations(s), s.n_rows, cf::kMaxDim + 1, nullptr), cf::InvalidInput);
  CHECK_THROWS_AS(m.fit(observations(s), cf::kMaxDim + 1, s.n_cols, nullptr), cf::InvalidInput);
  cf::Config huge = small_config();
  huge.rank = INT_MAX;  // dim() = rank + 1 overflowed
  CHECK_THROWS_AS(cf::Model{huge}, cf::InvalidInput);
  huge.rank = cf::kMaxRank + 1;
  CHECK_THROWS_AS(cf::Model{huge}, cf::InvalidInput);

  m.fit(observations(s), s.n_rows, s.n_cols, nullptr);
  const std::vector<double> before = all_predictions(m);
  CHECK_THROWS_AS(m.refit(observations(s), s.n_rows, s.n_cols, nullptr, -2), cf::InvalidInput);
  CHECK_THROWS_AS(m.add_cols(cf::kMaxDim, nullptr), cf::InvalidInput);
#if !CF_ASAN  // AddressSanitizer's operator new aborts on a failed allocation instead of throwing
  {
    AddressSpaceLimit limit;
    // Within the limits, but more memory than there is: the model stays as it was (it was left unfitted, or with
    // grown arrays and an old residual table).
    CHECK_THROWS_AS(m.refit(observations(s), s.n_rows, cf::kMaxDim, nullptr, 2), std::bad_alloc);
    CHECK_THROWS_AS(m.add_cols(cf::kMaxDim - s.n_cols, nullptr), std::bad_alloc);
    CHECK_THROWS_AS(m.fit(observations(s), cf::kMaxDim, s.n_cols, nullptr), std::bad_alloc);
  }
#endif
  CHECK(m.fitted());
  CHECK(m.n_rows() == s.n_rows);
  CHECK(m.n_cols() == s.n_cols);
  CHECK(all_predictions(m) == before);
}

TEST_CASE("features near the largest double are standardised without overflow") {
  // Feature 1 constant at 1e308 (dropped, as a constant 1 is), feature 2 at +-1e300: the same model as with
  // feature 1 constant at 1 and feature 2 at +-1, to rounding. Before, their sums overflowed: NaN predictions.
  Synthetic s = make_synthetic(12, 40, 0.6, 12);
  std::vector<double> huge = s.features, plain = s.features;
  for (std::int64_t c = 0; c < s.n_cols; ++c) {
    huge[c * 3 + 1] = 1e308;
    plain[c * 3 + 1] = 1.0;
    huge[c * 3 + 2] = c % 2 ? 1e300 : -1e300;
    plain[c * 3 + 2] = c % 2 ? 1.0 : -1.0;
  }
  cf::Features fh{huge.data(), s.n_cols, 3}, fp{plain.data(), s.n_cols, 3};
  cf::Model a(small_config()), b(small_config());
  a.fit(observations(s), s.n_rows, s.n_cols, &fh);
  b.fit(observations(s), s.n_rows, s.n_cols, &fp);
  const std::vector<double> pa = all_predictions(a), pb = all_predictions(b);
  for (std::size_t i = 0; i < pa.size(); ++i) CHECK(pa[i] == doctest::Approx(pb[i]).epsilon(1e-9));
  // A new column whose standardised features would overflow the prior and the kernel is rejected, unchanged model.
  std::vector<double> extreme = {1e308, 1e308, 1e300};
  cf::Features fe{extreme.data(), 1, 3};
  CHECK_THROWS_AS(b.add_cols(1, &fe), cf::InvalidInput);
  CHECK(b.n_cols() == s.n_cols);
  CHECK(all_predictions(b) == pb);
}

TEST_CASE("compress checks each index where it uses it (the caller's arrays may change after validation)") {
  std::vector<std::int64_t> major = {0, 1, 2}, minor = {0, 0, 7};
  std::vector<double> logv = {0.0, 0.0, 0.0};
  CHECK_THROWS_AS(cf::detail::compress(major.data(), minor.data(), logv.data(), 3, 2, 5), cf::InvalidInput);
  major[2] = 1;
  CHECK_THROWS_AS(cf::detail::compress(major.data(), minor.data(), logv.data(), 3, 2, 5), cf::InvalidInput);
  minor[2] = 4;
  const cf::detail::Compressed out = cf::detail::compress(major.data(), minor.data(), logv.data(), 3, 2, 5);
  CHECK(out.ptr == std::vector<std::int64_t>{0, 1, 3});
  CHECK(out.index == std::vector<std::int64_t>{0, 0, 4});
}
