#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "additive.h"
#include "cf_cpp/model.h"
#include "synthetic.h"

using namespace cf::detail;

namespace {

constexpr std::int64_t kAdd = 3;

// Counts 0..5 per column (n_cols x kAdd), like op counts of a block.
std::vector<double> random_counts(std::int64_t n_cols, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> count(0, 5);
  std::vector<double> a(static_cast<std::size_t>(n_cols * kAdd));
  for (double& v : a) v = count(gen);
  return a;
}

double additive_truth(const std::vector<double>& a, std::int64_t c) {
  return 2.0 + 1.5 * a[c * kAdd] + 0.5 * a[c * kAdd + 1] + 3.0 * a[c * kAdd + 2];
}

// A model fitted on a synthetic low-rank matrix, with random counts as its additive features.
struct Fitted {
  Synthetic s = make_synthetic(30, 200, 0.4, 3);
  std::vector<double> counts = random_counts(200, 4);
  cf::Model model;
  Fitted() {
    const cf::Features f{s.features.data(), s.n_cols, s.n_features}, a{counts.data(), s.n_cols, kAdd};
    model.fit(observations(s), s.n_rows, s.n_cols, &f, &a);
  }
  // Folds in the first n columns with the values of `value(c)`; returns the new row.
  template <class F>
  std::int64_t fold_in(std::size_t n, F value) {
    std::vector<std::int64_t> cols;
    std::vector<double> values;
    for (std::size_t c = 0; c < n; ++c) {
      cols.push_back(static_cast<std::int64_t>(c));
      values.push_back(value(static_cast<std::int64_t>(c)));
    }
    return model.fold_in_row(cols.data(), values.data(), n);
  }
  double predict(std::int64_t r, std::int64_t c) const {
    double out;
    model.predict_log(&r, &c, 1, &out);
    return std::exp(out);
  }
};

}  // namespace

TEST_CASE("the additive regression recovers an additive device (to its small ridge) and cross-validates on it") {
  const std::vector<double> a = random_counts(40, 1);
  const std::vector<double> scale = additive_scale(a.data(), 40, kAdd);
  std::vector<std::int64_t> cols;
  std::vector<double> values;
  for (std::int64_t c = 0; c < 15; ++c) {
    cols.push_back(c);
    values.push_back(additive_truth(a, c));
  }
  const std::vector<double> w = fit_additive(cols.data(), values.data(), cols.size(), a.data(), kAdd, scale.data());
  for (std::int64_t c = 15; c < 40; ++c)
    CHECK(additive_value(w.data(), a.data() + c * kAdd, kAdd, scale.data()) ==
          doctest::Approx(additive_truth(a, c)).epsilon(1e-3));
  const std::vector<double> cv = additive_cv(cols.data(), values.data(), cols.size(), a.data(), kAdd, scale.data());
  CHECK(log_rms_error(cv.data(), values.data(), cv.size()) < 1e-3);
}

TEST_CASE("additive helpers: scale of an all-zero feature, non-positive predictions, folds") {
  const std::vector<double> a = {0, 3, 0, 4};  // 2 columns x 2 features, the first all zero
  const std::vector<double> scale = additive_scale(a.data(), 2, 2);
  CHECK(scale[0] == 1.0);
  CHECK(scale[1] == doctest::Approx(std::sqrt(12.5)));
  const double pred[] = {1.0, -0.5}, truth[] = {1.0, 1.0};
  CHECK(log_rms_error(pred, truth, 2) == std::numeric_limits<double>::infinity());
  CHECK(log_rms_error(pred, truth, 1) == 0.0);
  CHECK(cv_folds(4) == 4);
  CHECK(cv_folds(1000) == kAdditiveFolds);
}

TEST_CASE("additive_scale of values whose squares overflow is still their root mean square") {
  const std::vector<double> a = {1e200, 2, 3e200, 2};  // 2 columns x 2 features, the first's squares past 1e308
  const std::vector<double> scale = additive_scale(a.data(), 2, 2);
  CHECK(scale[0] == doctest::Approx(std::sqrt(5.0) * 1e200));  // it was inf: save refused the model fit built
  CHECK(scale[1] == 2.0);
}

TEST_CASE("distinct_entries: one entry per column, at the geometric mean of its values, by column") {
  const std::vector<std::int64_t> cols = {4, 2, 4, 7, 4};
  const std::vector<double> values = {1.0, 3.0, 4.0, 0.1, 16.0};
  std::vector<std::int64_t> out_cols = {99};  // replaced
  std::vector<double> out_values;
  distinct_entries(cols.data(), values.data(), cols.size(), out_cols, out_values);
  CHECK(out_cols == std::vector<std::int64_t>{2, 4, 7});  // whatever order they came in
  REQUIRE(out_values.size() == 3);
  CHECK(out_values[0] == 3.0);                   // a column given once keeps its value exactly
  CHECK(out_values[1] == doctest::Approx(4.0));  // (1 x 4 x 16)^(1/3)
  CHECK(out_values[2] == 0.1);
}

TEST_CASE("values near the largest double keep the additive regression finite where its sums do not overflow") {
  const std::vector<double> a = random_counts(40, 2);
  const std::vector<double> scale = additive_scale(a.data(), 40, kAdd);
  std::vector<std::int64_t> cols;
  std::vector<double> values;
  for (std::int64_t c = 0; c < 12; ++c) {
    cols.push_back(c);
    values.push_back(1e300 * additive_truth(a, c));
  }
  // Its ridge, 1e-6 mean^2, overflowed: NaN weights. Now capped where it leaves the slopes ~0, the intercept the mean.
  const std::vector<double> w = fit_additive(cols.data(), values.data(), cols.size(), a.data(), kAdd, scale.data());
  double mean = 0;
  for (double v : values) mean += v / 12;
  CHECK(w[0] == doctest::Approx(mean).epsilon(1e-4));
  for (std::size_t j = 1; j < w.size(); ++j) CHECK(std::fabs(w[j]) < 1e-4 * mean);
  const std::vector<double> a_max = additive_max(a.data(), 40, kAdd);
  CHECK(additive_bound(w.data(), a_max.data(), kAdd, scale.data()) <= cf::kMaxPrediction);
  CHECK(a_max == std::vector<double>{5, 5, 5});
}

TEST_CASE("a device that is a weighted sum of the additive features folds in as an additive row") {
  Fitted f;
  // As few entries as the cross-validation allows.
  const std::int64_t r = f.fold_in(kAdd + 1 + kAdditiveSpare, [&](std::int64_t c) { return additive_truth(f.counts, c); });
  REQUIRE(f.model.additive_rows()[r].size() == kAdd + 1);
  for (std::int64_t c = 0; c < 200; ++c)
    CHECK(f.predict(r, c) == doctest::Approx(additive_truth(f.counts, c)).epsilon(1e-3));
}

TEST_CASE("a device like the fitted ones stays a collaborative fold-in") {
  Fitted f;
  // A device of the synthetic family: row 0's truth, shifted.
  const std::int64_t r = f.fold_in(12, [&](std::int64_t c) { return 1.3 * std::exp(f.s.truth_log[c]); });
  CHECK(f.model.additive_rows()[r].empty());
}

TEST_CASE("with more entries than the choice cross-validates on, it still tells the two kinds apart") {
  Fitted f;
  const std::size_t n = kAdditiveCvEntries + 50;
  const std::int64_t additive = f.fold_in(n, [&](std::int64_t c) { return additive_truth(f.counts, c); });
  const std::int64_t alike = f.fold_in(n, [&](std::int64_t c) { return 1.3 * std::exp(f.s.truth_log[c]); });
  CHECK(f.model.additive_rows()[additive].size() == kAdd + 1);
  CHECK(f.model.additive_rows()[alike].empty());
  for (std::int64_t c = 0; c < 200; ++c)
    CHECK(f.predict(additive, c) == doctest::Approx(additive_truth(f.counts, c)).epsilon(1e-3));
}

TEST_CASE("repeated measurements of a column are one entry of the additive choice") {
  Fitted f;
  // Ten measurements of one column cross-validated perfectly (each fold had copies of the others): an additive row
  // whose slopes only the tiny ridge fixed, predicting that one value at every column.
  const std::vector<std::int64_t> one(10, 3);
  const std::vector<double> same(10, additive_truth(f.counts, 3));
  const std::int64_t copies = f.model.fold_in_row(one.data(), same.data(), one.size());
  CHECK(f.model.additive_rows()[copies].empty());
  // As many distinct columns as the choice needs, each given twice: additive, as from each once.
  const std::int64_t needed = kAdd + 1 + kAdditiveSpare;
  std::vector<std::int64_t> cols;
  std::vector<double> values;
  for (std::int64_t c = 0; c < needed; ++c)
    for (int copy = 0; copy < 2; ++copy) {
      cols.push_back(c);
      values.push_back(additive_truth(f.counts, c));
    }
  const std::int64_t r = f.model.fold_in_row(cols.data(), values.data(), cols.size());
  REQUIRE(f.model.additive_rows()[r].size() == kAdd + 1);
  for (std::int64_t c = 0; c < 200; ++c)
    CHECK(f.predict(r, c) == doctest::Approx(additive_truth(f.counts, c)).epsilon(1e-3));
  // One distinct column fewer, each given three times (more entries than it needs): not additive.
  cols.clear();
  values.clear();
  for (std::int64_t c = 0; c < needed - 1; ++c)
    for (int copy = 0; copy < 3; ++copy) {
      cols.push_back(c);
      values.push_back(additive_truth(f.counts, c));
    }
  const std::int64_t short_of_columns = f.model.fold_in_row(cols.data(), values.data(), cols.size());
  CHECK(f.model.additive_rows()[short_of_columns].empty());
}

TEST_CASE("an additive fold-in of values near the largest double stays finite, and saves") {
  Fitted f;
  // 150 entries: the choice is cross-validated on every second one, which are additive. The others, at 1e300,
  // overflowed the ridge of the regression kept (1e-6 mean^2): NaN weights, in a file that load refused.
  const std::int64_t big = f.fold_in(150, [&](std::int64_t c) { return c % 2 ? 1e300 : additive_truth(f.counts, c); });
  const std::vector<double> weights = f.model.additive_rows()[big];
  REQUIRE(weights.size() == kAdd + 1);
  for (double w : weights) CHECK(std::isfinite(w));
  // At 1e308 the regression's sums overflow: the row stays the collaborative fold-in.
  const std::int64_t huge = f.fold_in(150, [&](std::int64_t c) { return c % 2 ? 1e308 : additive_truth(f.counts, c); });
  CHECK(f.model.additive_rows()[huge].empty());
  const std::string path = "cf_additive_huge_test.bin";
  f.model.save(path);
  const cf::Model loaded = cf::Model::load(path);
  std::remove(path.c_str());
  CHECK(loaded.additive_rows() == f.model.additive_rows());
  for (std::int64_t row : {big, huge})
    for (std::int64_t c = 0; c < 200; ++c) {
      double a, b;
      f.model.predict_log(&row, &c, 1, &a);
      loaded.predict_log(&row, &c, 1, &b);
      CHECK(std::isfinite(a));
      CHECK(a == b);
    }
}

TEST_CASE("too few entries for the regression to be cross-validated: no additive row") {
  Fitted f;
  const std::size_t n = kAdd + 1 + kAdditiveSpare - 1;
  const std::int64_t r = f.fold_in(n, [&](std::int64_t c) { return additive_truth(f.counts, c); });
  CHECK(f.model.additive_rows()[r].empty());
}

TEST_CASE("additive rows reach added columns, survive save / load and leave at a refit") {
  Fitted f;
  const std::int64_t r = f.fold_in(12, [&](std::int64_t c) { return additive_truth(f.counts, c); });
  // A device that gets faster with the first feature: positive on the counts seen (0..5), not beyond 15.
  const std::int64_t q = f.fold_in(12, [&](std::int64_t c) { return 30.0 - 2.0 * f.counts[c * kAdd]; });
  REQUIRE(!f.model.additive_rows()[q].empty());
  // New columns: their additive features decide an additive row's prediction; where its regression is not
  // positive, the row's collaborative prediction stands in.
  const std::vector<double> feats = {0.1, -0.2, 0.3, 0.0, 0.0, 0.0}, counts = {4, 1, 2, 20, 0, 0};
  const cf::Features nf{feats.data(), 2, 3}, na{counts.data(), 2, kAdd};
  CHECK_THROWS_AS(f.model.add_cols(2, &nf, nullptr), cf::InvalidInput);
  CHECK(f.model.n_cols() == 200);
  const std::int64_t first = f.model.add_cols(2, &nf, &na);
  CHECK(f.predict(r, first) == doctest::Approx(2.0 + 1.5 * 4 + 0.5 * 1 + 3.0 * 2).epsilon(1e-3));
  CHECK(f.predict(r, first + 1) == doctest::Approx(2.0 + 1.5 * 20).epsilon(1e-3));
  CHECK(f.predict(q, first) == doctest::Approx(30.0 - 2.0 * 4).epsilon(1e-3));
  CHECK(std::isfinite(f.predict(q, first + 1)));
  CHECK(f.predict(q, first + 1) > 0);

  const std::string path = "cf_additive_test.bin";
  f.model.save(path);
  const cf::Model loaded = cf::Model::load(path);
  std::remove(path.c_str());
  CHECK(loaded.n_additive() == kAdd);
  CHECK(loaded.additive_rows() == f.model.additive_rows());
  for (std::int64_t row : {r, q})
    for (std::int64_t c = 0; c < f.model.n_cols(); ++c) {
      double a, b;
      f.model.predict_log(&row, &c, 1, &a);
      loaded.predict_log(&row, &c, 1, &b);
      CHECK(a == b);
    }

  std::vector<double> all_counts = f.counts;
  all_counts.insert(all_counts.end(), counts.begin(), counts.end());
  const cf::Features all_a{all_counts.data(), 202, kAdd};
  f.model.refit(observations(f.s), f.s.n_rows + 2, 202, nullptr, 2, &all_a);
  for (const auto& w : f.model.additive_rows()) CHECK(w.empty());
}

TEST_CASE("invalid additive features are refused and change nothing") {
  Synthetic s = make_synthetic(10, 50, 0.5, 5);
  const cf::Features f{s.features.data(), s.n_cols, s.n_features};
  std::vector<double> counts = random_counts(50, 6);
  cf::Model model;
  counts[7] = -1;
  cf::Features a{counts.data(), 50, kAdd};
  CHECK_THROWS_AS(model.fit(observations(s), s.n_rows, s.n_cols, &f, &a), cf::InvalidInput);
  counts[7] = std::nan("");
  CHECK_THROWS_AS(model.fit(observations(s), s.n_rows, s.n_cols, &f, &a), cf::InvalidInput);
  counts[7] = 1;
  a.n_cols = 49;
  CHECK_THROWS_AS(model.fit(observations(s), s.n_rows, s.n_cols, &f, &a), cf::InvalidInput);
  CHECK(!model.fitted());
  a.n_cols = 50;
  model.fit(observations(s), s.n_rows, s.n_cols, &f, &a);
  // A refit with new columns needs their additive features; a refused refit leaves the model as it was.
  CHECK_THROWS_AS(model.refit(observations(s), s.n_rows, 51, nullptr, 1), cf::InvalidInput);
  CHECK(model.n_cols() == 50);
  CHECK(model.n_additive() == kAdd);
}
