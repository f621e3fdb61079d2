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
  const std::string path = "cf_cpp_test_model.bin";
  m.save(path);
  cf::Model back = cf::Model::load(path);
  std::remove(path.c_str());
  CHECK(back.n_rows() == m.n_rows());
  CHECK(back.n_features() == 3);
  std::vector<std::int64_t> rows = {0, 14, 7}, cols = {0, 59, 30};
  std::vector<double> a(3), b(3);
  m.predict_log(rows.data(), cols.data(), 3, a.data());
  back.predict_log(rows.data(), cols.data(), 3, b.data());
  CHECK(a == b);
}

TEST_CASE("load rejects missing and foreign files") {
  CHECK_THROWS_AS(cf::Model::load("/nonexistent/dir/model.bin"), cf::IoError);
  const std::string path = "cf_cpp_test_garbage.bin";
  std::ofstream(path) << "not a model";
  CHECK_THROWS_AS(cf::Model::load(path), cf::IoError);
  std::remove(path.c_str());
}
