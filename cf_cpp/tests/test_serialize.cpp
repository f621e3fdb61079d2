#include <doctest/doctest.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "cf_cpp/model.h"
#include "synthetic.h"

TEST_CASE("save / load round-trips predictions exactly") {
  Synthetic s = make_synthetic(15, 60, 0.5, 9);
  cf::Features f{s.features.data(), s.n_cols, s.n_features};
  cf::Config c;
  c.rank = 3;
  c.iterations = 5;
  cf::Model m(c);
  m.fit(observations(s), s.n_rows, s.n_cols, &f);
  std::vector<std::int64_t> fold_cols = {1, 20, 40, 55};
  std::vector<double> fold_vals = {1.5, 3.0, 0.7, 2.2};
  const std::int64_t folded = m.fold_in_row(fold_cols.data(), fold_vals.data(), fold_cols.size());
  const std::string path = "cf_cpp_test_model.bin";
  m.save(path);
  cf::Model back = cf::Model::load(path);
  std::remove(path.c_str());
  CHECK(back.n_rows() == m.n_rows());
  CHECK(back.n_features() == 3);
  CHECK(back.row_scales() == m.row_scales());
  CHECK(back.row_counts() == m.row_counts());
  CHECK(back.noise_var() == m.noise_var());
  std::vector<std::int64_t> rows = {0, 14, 7, folded}, cols = {0, 59, 30, 20};
  std::vector<double> a(4), b(4);
  m.predict_log(rows.data(), cols.data(), 4, a.data());
  back.predict_log(rows.data(), cols.data(), 4, b.data());
  CHECK(a == b);
  // The loaded model folds in exactly like the original (same prior).
  const std::int64_t again = m.fold_in_row(fold_cols.data(), fold_vals.data(), 4);
  CHECK(back.fold_in_row(fold_cols.data(), fold_vals.data(), 4) == again);
  CHECK(back.row_params() == m.row_params());
}

TEST_CASE("load rejects missing and foreign files") {
  CHECK_THROWS_AS(cf::Model::load("/nonexistent/dir/model.bin"), cf::IoError);
  const std::string path = "cf_cpp_test_garbage.bin";
  std::ofstream(path) << "not a model";
  CHECK_THROWS_AS(cf::Model::load(path), cf::IoError);
  std::remove(path.c_str());
}
