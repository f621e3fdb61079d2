#include <doctest/doctest.h>

#include <sys/resource.h>

#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
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

namespace {

// A small model without features, saved: its bytes, and where its fields are (layout: src/serialize.cpp).
struct Saved {
  std::vector<char> bytes;
  std::size_t reg, mu, rows, row_scales, row0_kernel_cols;
};

Saved saved_model(cf::Model* model = nullptr) {
  Synthetic s = make_synthetic(6, 10, 0.8, 13);
  cf::Config c;
  c.rank = 2;
  c.iterations = 3;
  cf::Model m(c);
  m.fit(observations(s), s.n_rows, s.n_cols, nullptr);
  const std::string path = "cf_cpp_test_layout.bin";
  m.save(path);
  std::ifstream in(path, std::ios::binary);
  Saved out{std::vector<char>(std::istreambuf_iterator<char>(in), {}), 0, 0, 0, 0, 0};
  std::remove(path.c_str());
  const std::size_t nr = 6, nc = 10, d = 3;
  out.reg = 8 + 4 + 4;                   // magic, version, rank
  const std::size_t dims = 81;           // .. the kernel_residual flag
  out.mu = dims + 3 * 8;                 // n_rows, n_cols, n_features
  out.rows = out.mu + 8;                 // length prefix of the row parameters
  out.row_scales = out.rows + 8 + nr * d * 8;
  out.row0_kernel_cols = out.rows + 8 + nr * d * 8 + 2 * (8 + nr * 8) + 8  // rows, scales, counts, noise
                         + 8 + nc * d * 8 + 3 * 8 + 8 + 8 + nc * 8;          // dev, x, mean, scale, theta, counts
  if (model) *model = m;
  return out;
}

template <class T>
void put(std::vector<char>& bytes, std::size_t at, T v) {
  std::memcpy(bytes.data() + at, &v, sizeof(T));
}

// load of the bytes: "ok", "IoError" or the other exception's type.
std::string load_result(const std::vector<char>& bytes) {
  const std::string path = "cf_cpp_test_damaged.bin";
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  std::string result = "ok";
  try {
    cf::Model::load(path);
  } catch (const cf::IoError&) {
    result = "IoError";
  } catch (const cf::InvalidInput&) {
    result = "InvalidInput";
  } catch (const std::bad_alloc&) {
    result = "bad_alloc";
  }
  std::remove(path.c_str());
  return result;
}

}  // namespace

TEST_CASE("load checks lengths against the file before allocating") {
  Saved s = saved_model();
  REQUIRE(load_result(s.bytes) == "ok");
  std::vector<char> b = s.bytes;
  put<std::uint64_t>(b, s.row0_kernel_cols, 0);  // sanity: the layout above is right
  CHECK(load_result(b) == "ok");
  // A kernel expansion of 2^32 columns (the bound it had): 32 GiB were allocated before the read failed.
  put<std::uint64_t>(b, s.row0_kernel_cols, std::uint64_t{1} << 32);
  CHECK(load_result(b) == "IoError");
}

TEST_CASE("load rejects trailing bytes, relabelled versions and non-finite or rejected values as IoError") {
  Saved s = saved_model();
  std::vector<char> b = s.bytes;
  b.push_back('x');
  CHECK(load_result(b) == "IoError");
  b = s.bytes;
  put<std::uint32_t>(b, 8, 3);  // a version 4 file read as version 3
  CHECK(load_result(b) == "IoError");
  b = s.bytes;
  put<double>(b, s.reg, -1.0);  // the model rejects the hyperparameter: InvalidInput before
  CHECK(load_result(b) == "IoError");
  b = s.bytes;
  put<double>(b, s.mu, std::numeric_limits<double>::quiet_NaN());
  CHECK(load_result(b) == "IoError");
  b = s.bytes;
  put<double>(b, s.rows + 8 + 8, std::numeric_limits<double>::infinity());  // the first row's first factor
  CHECK(load_result(b) == "IoError");
  // Finite but absurd (every prediction of the row overflows): only the checksum of format 5 catches it.
  b = s.bytes;
  put<double>(b, s.row_scales + 8, -1e270);
  CHECK(load_result(b) == "IoError");
  // A format 4 file (the same, without the checksum) still loads, and so does the damaged one.
  b = s.bytes;
  put<std::uint32_t>(b, 8, 4);
  b.resize(b.size() - 8);
  CHECK(load_result(b) == "ok");
  put<double>(b, s.row_scales + 8, -1e270);
  CHECK(load_result(b) == "ok");
}

TEST_CASE("a failed save leaves the previous file; a path with a NUL byte is rejected") {
  cf::Model m;
  saved_model(&m);
  const std::string path = "cf_cpp_test_atomic.bin";
  m.save(path);
  std::ifstream in(path, std::ios::binary);
  const std::vector<char> before{std::istreambuf_iterator<char>(in), {}};
  in.close();
  // Stands in for a full disk: the file size limit stops the write after 200 bytes.
  rlimit saved{};
  getrlimit(RLIMIT_FSIZE, &saved);
  rlimit small = saved;
  small.rlim_cur = 200;
  auto* const handler = std::signal(SIGXFSZ, SIG_IGN);
  setrlimit(RLIMIT_FSIZE, &small);
  CHECK_THROWS_AS(m.save(path), cf::IoError);
  setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, handler);
  std::ifstream again(path, std::ios::binary);
  CHECK(std::vector<char>(std::istreambuf_iterator<char>(again), {}) == before);
  CHECK_NOTHROW(cf::Model::load(path));
  std::remove(path.c_str());
  CHECK_THROWS_AS(m.save(std::string("cf_cpp_test\0x.bin", 17)), cf::InvalidInput);
  CHECK_THROWS_AS(cf::Model::load(std::string("cf_cpp_test\0x.bin", 17)), cf::InvalidInput);
}
