// Binary save / load of a fitted model: magic, format version, config, dimensions, then the parameter arrays, each
// prefixed by its length. Native byte order (little-endian on every supported platform).
#include <cmath>
#include <cstring>
#include <fstream>

#include "cf_cpp/model.h"

namespace cf {

namespace {

constexpr char kMagic[8] = {'C', 'F', 'C', 'P', 'P', 'M', 'F', '\0'};
// Version 2 added the fold-in state after the row parameters: row scales g_r, row counts, the noise variance.
// Version 1 files still load (g_r = 1, every row in the fold-in population, kV1NoiseVar).
// Version 3 added config.kernel_residual and, at the end, each row's kernel residual: its expansion (cols, alpha)
// and its blend of experts (rows, weights).
// Version 1 and 2 files load without kernel residuals (kernel_residual = false: refits behave as when they were saved).
// Version 4 added, at the end, the additive features (count, raw values, scale) and each row's additive weights.
constexpr std::uint32_t kVersion = 4;
constexpr double kV1NoiseVar = 0.0025;  // (0.05 log units)^2, the training residual on oneproxy_nb201

class Writer {
 public:
  explicit Writer(const std::string& path) : out_(path, std::ios::binary | std::ios::trunc), path_(path) {
    if (!out_) throw IoError("cannot open '" + path + "' for writing");
  }
  template <class T>
  void put(const T& v) {
    out_.write(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  template <class T>
  void put_vec(const std::vector<T>& v) {
    put<std::uint64_t>(v.size());
    out_.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(T)));
  }
  void raw(const char* p, std::size_t n) { out_.write(p, static_cast<std::streamsize>(n)); }
  void close() {
    out_.close();
    if (!out_) throw IoError("failed writing '" + path_ + "'");
  }

 private:
  std::ofstream out_;
  std::string path_;
};

class Reader {
 public:
  explicit Reader(const std::string& path) : in_(path, std::ios::binary), path_(path) {
    if (!in_) throw IoError("cannot open '" + path + "' for reading");
  }
  template <class T>
  T get() {
    T v{};
    in_.read(reinterpret_cast<char*>(&v), sizeof(T));
    if (!in_) fail();
    return v;
  }
  template <class T>
  std::vector<T> get_vec(std::uint64_t expected) {
    const std::uint64_t n = get<std::uint64_t>();
    if (n != expected) fail();
    return elements<T>(n);
  }
  // A vector whose length is only bounded (at most `most` elements).
  template <class T>
  std::vector<T> get_vec_upto(std::uint64_t most) {
    const std::uint64_t n = get<std::uint64_t>();
    if (n > most) fail();
    return elements<T>(n);
  }
  void raw(char* p, std::size_t n) {
    in_.read(p, static_cast<std::streamsize>(n));
    if (!in_) fail();
  }
  [[noreturn]] void fail() const { throw IoError("'" + path_ + "' is truncated or not a cf_cpp model file"); }

 private:
  template <class T>
  std::vector<T> elements(std::uint64_t n) {
    std::vector<T> v(n);
    raw(reinterpret_cast<char*>(v.data()), n * sizeof(T));
    return v;
  }

  std::ifstream in_;
  std::string path_;
};

}  // namespace

void Model::save(const std::string& path) const {
  check_fitted();
  Writer w(path);
  w.raw(kMagic, sizeof(kMagic));
  w.put(kVersion);
  w.put<std::int32_t>(config_.rank);
  w.put(config_.reg);
  w.put(config_.reg_bias);
  w.put(config_.reg_col);
  w.put(config_.reg_col_bias);
  w.put(config_.reg_features);
  w.put<std::int32_t>(config_.iterations);
  w.put(config_.seed);
  w.put<std::int32_t>(config_.threads);
  w.put(config_.init_scale);
  w.put<std::uint8_t>(config_.kernel_residual ? 1 : 0);
  w.put(n_rows_);
  w.put(n_cols_);
  w.put(n_features_);
  w.put(mu_);
  w.put_vec(rows_);
  w.put_vec(row_scale_);
  w.put_vec(row_counts_);
  w.put(noise_var_);
  w.put_vec(dev_);
  w.put_vec(x_);
  w.put_vec(feat_mean_);
  w.put_vec(feat_scale_);
  w.put_vec(theta_);
  w.put_vec(col_counts_);
  for (std::size_t r = 0; r < kernels_.size(); ++r) {
    w.put_vec(kernels_[r].cols);
    w.put_vec(kernels_[r].alpha);
    std::vector<std::int64_t> experts;
    std::vector<double> weights;
    for (const auto& [expert, weight] : blends_[r]) {
      experts.push_back(expert);
      weights.push_back(weight);
    }
    w.put_vec(experts);
    w.put_vec(weights);
  }
  w.put(n_add_);
  w.put_vec(add_);
  w.put_vec(add_scale_);
  for (const std::vector<double>& weights : additive_rows_) w.put_vec(weights);
  w.close();
}

Model Model::load(const std::string& path) {
  Reader r(path);
  char magic[sizeof(kMagic)];
  r.raw(magic, sizeof(magic));
  if (std::memcmp(magic, kMagic, sizeof(kMagic)) != 0) r.fail();
  const std::uint32_t version = r.get<std::uint32_t>();
  if (version < 1 || version > kVersion)
    throw IoError("'" + path + "' has an unsupported cf_cpp format version");
  Config c;
  c.rank = r.get<std::int32_t>();
  c.reg = r.get<double>();
  c.reg_bias = r.get<double>();
  c.reg_col = r.get<double>();
  c.reg_col_bias = r.get<double>();
  c.reg_features = r.get<double>();
  c.iterations = r.get<std::int32_t>();
  c.seed = r.get<std::uint64_t>();
  c.threads = r.get<std::int32_t>();
  c.init_scale = r.get<double>();
  c.kernel_residual = version >= 3 && r.get<std::uint8_t>() != 0;
  if (c.rank < 0 || c.iterations < 0 || c.threads < 0) r.fail();
  Model m(c);
  m.n_rows_ = r.get<std::int64_t>();
  m.n_cols_ = r.get<std::int64_t>();
  m.n_features_ = r.get<std::int64_t>();
  m.mu_ = r.get<double>();
  if (m.n_rows_ <= 0 || m.n_cols_ <= 0 || m.n_features_ < 0 || m.n_rows_ > (1LL << 40) || m.n_cols_ > (1LL << 40))
    r.fail();
  const std::uint64_t d = static_cast<std::uint64_t>(c.rank + 1), nr = m.n_rows_, nc = m.n_cols_,
                      nf = m.n_features_;
  m.rows_ = r.get_vec<double>(nr * d);
  if (version >= 2) {
    m.row_scale_ = r.get_vec<double>(nr);
    m.row_counts_ = r.get_vec<std::int64_t>(nr);
    m.noise_var_ = r.get<double>();
    if (!std::isfinite(m.noise_var_) || m.noise_var_ < 0) r.fail();
  } else {
    m.row_scale_.assign(nr, 1.0);
    m.row_counts_.assign(nr, 1);
    m.noise_var_ = kV1NoiseVar;
  }
  m.dev_ = r.get_vec<double>(nc * d);
  std::uint64_t nx = r.get<std::uint64_t>();
  const bool with_features = nx != 0;
  if (with_features && nx != nc * (nf + 1)) r.fail();
  m.x_.resize(nx);
  r.raw(reinterpret_cast<char*>(m.x_.data()), nx * sizeof(double));
  m.feat_mean_ = r.get_vec<double>(with_features ? nf : 0);
  m.feat_scale_ = r.get_vec<double>(with_features ? nf : 0);
  m.theta_ = r.get_vec<double>(with_features ? d * (nf + 1) : 0);
  m.col_counts_ = r.get_vec<std::int64_t>(nc);
  if (!with_features) m.n_features_ = 0;
  m.kernels_.resize(nr);
  m.blends_.resize(nr);
  if (version >= 3)
    for (std::uint64_t row = 0; row < nr; ++row) {
      KernelExpansion& h = m.kernels_[row];
      h.cols = r.get_vec_upto<std::int64_t>(std::uint64_t{1} << 32);
      h.alpha = r.get_vec<double>(h.cols.size());
      for (std::int64_t col : h.cols)
        if (col < 0 || static_cast<std::uint64_t>(col) >= nc) r.fail();
      if (!h.cols.empty() && !with_features) r.fail();
      const std::vector<std::int64_t> experts = r.get_vec_upto<std::int64_t>(nr);
      const std::vector<double> weights = r.get_vec<double>(experts.size());
      for (std::size_t k = 0; k < experts.size(); ++k) {
        // experts: fitted rows, which precede every row folded in against them
        if (experts[k] < 0 || static_cast<std::uint64_t>(experts[k]) >= row || !m.blends_[experts[k]].empty()) r.fail();
        m.blends_[row].emplace_back(experts[k], weights[k]);
      }
    }
  m.additive_rows_.resize(nr);
  if (version >= 4) {
    m.n_add_ = r.get<std::int64_t>();
    if (m.n_add_ < 0 || m.n_add_ > (1LL << 20)) r.fail();
    const std::uint64_t na = static_cast<std::uint64_t>(m.n_add_);
    m.add_ = r.get_vec<double>(nc * na);
    m.add_scale_ = r.get_vec<double>(na);
    for (std::vector<double>& weights : m.additive_rows_) {
      weights = r.get_vec_upto<double>(na + 1);
      if (!weights.empty() && weights.size() != na + 1) r.fail();
    }
  }
  m.refresh_col_params();
  m.refresh_residuals();
  m.refresh_fold_in_prior();
  m.fitted_ = true;
  return m;
}

}  // namespace cf
