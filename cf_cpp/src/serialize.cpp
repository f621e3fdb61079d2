// Binary save / load of a fitted model: magic, format version, config, dimensions, then the parameter arrays, each
// prefixed by its length. Native byte order (little-endian on every supported platform).
// save writes a temporary file next to the target and renames it over the target once it is complete, so a failed
// save leaves the previous file. load checks every length against the bytes left in the file before allocating,
// that the file ends after the last field, every parameter for finiteness, the size of the residual table it builds
// and the work of filling it, and a bound of every prediction; any failure, running out of memory included, is an
// IoError. save refuses (InvalidInput) a model that load would refuse: the same checks (check_values, check_sizes,
// check_bounded).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <new>

#include "additive.h"
#include "cf_cpp/model.h"
#include "row_kernel.h"
#include "sparse.h"

namespace cf {

namespace {

constexpr char kMagic[8] = {'C', 'F', 'C', 'P', 'P', 'M', 'F', '\0'};
// Version 2 added the fold-in state after the row parameters: row scales g_r, row counts, the noise variance.
// Version 1 files still load (g_r = 1, every row in the fold-in population, kV1NoiseVar).
// Version 3 added config.kernel_residual and, at the end, each row's kernel residual: its expansion (cols, alpha)
// and its blend of experts (rows, weights).
// Version 1 and 2 files load without kernel residuals (kernel_residual = false: refits behave as when they were saved).
// Version 4 added, at the end, the additive features (count, raw values, scale) and each row's additive weights.
// Version 5 added, after the last field, a checksum (64-bit FNV-1a) of every byte before it: a damaged file whose
// values pass every other check (a corrupted scale of 1e270, say) is still caught. Older files load without.
constexpr std::uint32_t kVersion = 5;
constexpr double kV1NoiseVar = 0.0025;  // (0.05 log units)^2, the training residual on oneproxy_nb201
constexpr std::int64_t kMaxAdditiveFeatures = std::int64_t{1} << 20;  // additive features per column in a file
constexpr int kMaxLinks = 40;  // symbolic links followed by save (Linux's own limit)

std::uint64_t fnv1a(std::uint64_t hash, const char* p, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) hash = (hash ^ static_cast<unsigned char>(p[i])) * 0x100000001b3ULL;
  return hash;
}
constexpr std::uint64_t kFnvOffset = 0xcbf29ce484222325ULL;

void check_path(const std::string& path) {
  if (path.find('\0') != std::string::npos) throw InvalidInput("the model path contains a NUL byte");
}

// `path`, or the file its chain of symbolic links ends at, which need not exist yet (save creates it). A relative
// link target is taken from the link's directory, as the kernel takes it.
std::string through_links(const std::string& path) {
  check_path(path);
  std::string at = path;
  for (int links = 0;; ++links) {
    struct stat link;
    if (::lstat(at.c_str(), &link) != 0 || !S_ISLNK(link.st_mode)) return at;
    std::vector<char> target(PATH_MAX + 1);
    ssize_t size = -1;
    if (links == kMaxLinks)
      errno = ELOOP;
    else
      size = ::readlink(at.c_str(), target.data(), target.size());
    if (size >= static_cast<ssize_t>(target.size())) {
      errno = ENAMETOOLONG;
      size = -1;
    }
    if (size < 0) throw IoError("cannot save through the link '" + path + "': " + std::strerror(errno), errno);
    std::string next(target.data(), static_cast<std::size_t>(size));
    const std::size_t slash = at.rfind('/');
    if ((next.empty() || next[0] != '/') && slash != std::string::npos) next = at.substr(0, slash + 1) + next;
    at = next;
  }
}

// Writes to a new temporary file in the target's directory; commit() renames it over the target. Until then, and
// when anything fails, the target is untouched and the temporary file is removed.
// A symbolic link is written through (its target is replaced, the link kept); the temporary file has a short name
// of its own, so a target name near the file system's limit still saves.
class Writer {
 public:
  explicit Writer(const std::string& path) : path_(through_links(path)) {
    struct stat target;
    const bool exists = ::stat(path_.c_str(), &target) == 0;
    if (exists && (!S_ISREG(target.st_mode) || ::access(path_.c_str(), W_OK) != 0))
      throw IoError("cannot open '" + path + "' for writing" + (S_ISREG(target.st_mode) ? "" : ": not a regular file"),
                    S_ISREG(target.st_mode) ? EACCES : 0);
    const std::size_t slash = path_.rfind('/');
    const std::string dir = slash == std::string::npos ? "" : path_.substr(0, slash + 1);
    static std::atomic<unsigned> counter{0};
    int fd = -1;
    for (int attempt = 0; fd < 0; ++attempt) {
      tmp_ = dir + ".cf_cpp.tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
      fd = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (fd < 0 && (errno != EEXIST || attempt == 100))
        fail("cannot create a temporary file in '" + (dir.empty() ? std::string(".") : dir) + "' to write '" + path +
             "'");
    }
    if (exists) ::fchmod(fd, target.st_mode & 07777);  // the replacement keeps the target's permissions
    out_ = ::fdopen(fd, "wb");
    if (!out_) {
      ::close(fd);
      ::unlink(tmp_.c_str());
      fail("cannot open '" + path + "' for writing");
    }
  }
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;
  ~Writer() {
    if (out_) {
      std::fclose(out_);
      ::unlink(tmp_.c_str());
    }
  }
  template <class T>
  void put(const T& v) {
    raw(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  template <class T>
  void put_vec(const std::vector<T>& v) {
    put<std::uint64_t>(v.size());
    raw(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
  }
  void raw(const char* p, std::size_t n) {  // errors: checked by commit()
    if (n == 0) return;                       // an empty vector's data() may be null, which fwrite must not get
    std::fwrite(p, 1, n, out_);
    hash_ = fnv1a(hash_, p, n);
  }
  // Appends the checksum of everything written, then replaces the target.
  void commit() {
    std::fwrite(&hash_, sizeof(hash_), 1, out_);
    const bool written = std::fflush(out_) == 0 && !std::ferror(out_) && ::fsync(::fileno(out_)) == 0;
    const int err = errno;
    const bool closed = std::fclose(out_) == 0;
    out_ = nullptr;
    if (!written || !closed || std::rename(tmp_.c_str(), path_.c_str()) != 0) {
      const int code = written ? errno : err;
      ::unlink(tmp_.c_str());
      throw IoError(
          "failed writing '" + path_ + "': " + std::strerror(code) + " (the previous file, if any, is unchanged)", code);
    }
  }

 private:
  [[noreturn]] static void fail(const std::string& what) { throw IoError(what + ": " + std::strerror(errno), errno); }

  std::FILE* out_ = nullptr;
  std::string path_, tmp_;
  std::uint64_t hash_ = kFnvOffset;
};

class Reader {
 public:
  explicit Reader(const std::string& path) : path_(path) {
    check_path(path);
    struct stat file;  // a FIFO or a device would block or never end: only regular files are model files
    if (::stat(path.c_str(), &file) != 0) throw IoError("cannot read '" + path + "': " + std::strerror(errno), errno);
    if (!S_ISREG(file.st_mode)) throw IoError("cannot read '" + path + "': not a regular file");
    in_.open(path, std::ios::binary);
    if (!in_) throw IoError("cannot open '" + path + "' for reading: " + std::strerror(errno), errno);
    in_.seekg(0, std::ios::end);
    const std::streamoff size = in_.tellg();
    in_.seekg(0, std::ios::beg);
    if (!in_ || size < 0) fail();
    left_ = static_cast<std::uint64_t>(size);
  }
  template <class T>
  T get() {
    T v{};
    raw(reinterpret_cast<char*>(&v), sizeof(T));
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
    if (n > left_) fail();
    in_.read(p, static_cast<std::streamsize>(n));
    if (!in_) fail();
    left_ -= n;
    hash_ = fnv1a(hash_, p, n);
  }
  std::uint64_t hash() const { return hash_; }  // of every byte read so far
  bool at_end() const { return left_ == 0; }
  const std::string& path() const { return path_; }
  [[noreturn]] void fail(const char* why = "is truncated or not a cf_cpp model file") const {
    throw IoError("'" + path_ + "' " + why);
  }

 private:
  template <class T>
  std::vector<T> elements(std::uint64_t n) {
    if (n > left_ / sizeof(T)) fail();  // before allocating: a length prefix cannot promise more than the file holds
    std::vector<T> v(n);
    raw(reinterpret_cast<char*>(v.data()), n * sizeof(T));
    return v;
  }

  std::ifstream in_;
  std::string path_;
  std::uint64_t left_ = 0;  // bytes not read yet
  std::uint64_t hash_ = kFnvOffset;
};

// Whether every value is finite (and >= 0 where `nonnegative`).
template <class T>
bool valid(const std::vector<T>& v, bool nonnegative = false) {
  for (const T& x : v)
    if (!std::isfinite(static_cast<double>(x)) || (nonnegative && x < 0)) return false;
  return true;
}

// |v|, infinite for NaN (a maximum of magnitudes keeps it).
double magnitude(double v) { return std::isnan(v) ? INFINITY : std::fabs(v); }

}  // namespace

void Model::check_values() const {
  const auto require = [](bool ok, const std::string& what) {
    if (!ok) throw InvalidInput(what);
  };
  require(std::isfinite(mu_), "the global mean is not finite");
  require(std::isfinite(noise_var_) && noise_var_ >= 0, "the noise variance is not finite and >= 0");
  const std::size_t d = static_cast<std::size_t>(dim());
  const auto finite = [](double v) { return std::isfinite(v); };
  for (std::size_t r = 0; r < static_cast<std::size_t>(n_rows_); ++r) {
    const auto first = rows_.begin() + static_cast<std::ptrdiff_t>(r * d);
    const char* wrong = nullptr;
    if (!std::all_of(first, first + d, finite) || !finite(row_scale_[r]))
      wrong = "'s parameters are not finite";
    else if (row_counts_[r] < 0)
      wrong = "'s count is negative";
    else if (!valid(kernels_[r].alpha))
      wrong = "'s kernel residual is not finite";
    else if (!std::all_of(blends_[r].begin(), blends_[r].end(), [&](const auto& e) { return finite(e.second); }))
      wrong = "'s blend of residuals is not finite";
    else if (!valid(additive_rows_[r]))
      wrong = "'s additive weights are not finite";
    if (wrong) throw InvalidInput("row " + std::to_string(r) + wrong);
  }
  require(valid(dev_), "the column deviations are not finite");
  require(valid(col_counts_, true), "a column count is negative");
  require(valid(x_) && valid(feat_mean_) && valid(feat_scale_, true), "the column features are not finite");
  require(valid(theta_), "the feature map is not finite");
  require(valid(add_, true) && valid(add_scale_, true), "the additive features are not finite and >= 0");
}

void Model::check_sizes() const {
  if (n_add_ > kMaxAdditiveFeatures)
    throw InvalidInput(std::to_string(n_add_) + " additive features per column: a model file holds at most " +
                       std::to_string(kMaxAdditiveFeatures));
  if (n_features_ > kMaxFeatures)
    throw InvalidInput(std::to_string(n_features_) + " column features: a model holds at most " +
                       std::to_string(kMaxFeatures));
  const bool table =
      !x_.empty() && std::any_of(kernels_.begin(), kernels_.end(), [](const auto& h) { return !h.cols.empty(); });
  if (!table) return;
  if (n_rows_ > kMaxLoadedTable / n_cols_)
    throw InvalidInput("its kernel residuals' table of " + std::to_string(n_rows_) + " rows x " +
                       std::to_string(n_cols_) + " columns is larger than the " + std::to_string(kMaxLoadedTable) +
                       " entries a model file may have");
  // What refresh_residuals spends on it: evaluating the expansions (one of as many entries as features, each of
  // which the file holds once, costs F^3: a 563 KB file of 12,000 features and entries took half an hour and 1.1 GB),
  // then a row of the table per expert of a folded-in row.
  double work = 0;
  for (std::size_t r = 0; r < kernels_.size(); ++r)
    work += detail::evaluation_cost(kernels_[r].cols.size(), static_cast<int>(n_features_ + 1), n_cols_) +
            static_cast<double>(blends_[r].size()) * static_cast<double>(n_cols_);
  if (!(work <= kMaxLoadedWork))
    throw InvalidInput("its kernel residuals' table would cost " + detail::format_value(work) +
                       " multiply-adds to fill, more than the " + detail::format_value(kMaxLoadedWork) +
                       " a model file may need");
}

void Model::check_bounded() const {
  // |log prediction| <= |mu| + |b_r| + |g_r| max|z_c[0]| + sum_k |p_rk| max|z_c[k]| + max|h_r|: O(n_cols dim) for the
  // column maxima, O(dim) per row (and its row of the residual table).
  const int d = dim();
  std::vector<double> z_max(static_cast<std::size_t>(d), 0.0);
  for (std::int64_t c = 0; c < n_cols_; ++c)
    for (int k = 0; k < d; ++k) z_max[k] = std::max(z_max[k], magnitude(z_[c * d + k]));
  const std::vector<double> a_max = detail::additive_max(add_.data(), n_cols_, n_add_);
  for (std::int64_t r = 0; r < n_rows_; ++r) {
    const double* a = rows_.data() + r * d;
    double bound = std::fabs(mu_) + std::fabs(a[0]) + std::fabs(row_scale_[r]) * z_max[0];
    for (int k = 1; k < d; ++k) bound += std::fabs(a[k]) * z_max[k];
    if (!residuals_.empty()) {
      double h = 0;
      for (std::int64_t c = 0; c < n_cols_; ++c) h = std::max(h, magnitude(residuals_[r * n_cols_ + c]));
      bound += h;
    }
    if (!(bound <= kMaxPrediction))
      throw InvalidInput("row " + std::to_string(r) + "'s log predictions may overflow (its parameters bound them by " +
                         detail::format_value(bound) + ")");
    const std::vector<double>& w = additive_rows_[r];
    const double value = w.empty() ? 0.0 : detail::additive_bound(w.data(), a_max.data(), n_add_, add_scale_.data());
    if (!(value <= kMaxPrediction))
      throw InvalidInput("additive row " + std::to_string(r) + "'s values may overflow (its weights bound them by " +
                         detail::format_value(value) + ")");
  }
}

void Model::save(const std::string& path) const {
  std::shared_lock<std::shared_mutex> lock(mutex_.mutex);
  check_fitted();
  try {
    check_values();
    check_sizes();
    check_bounded();
  } catch (const InvalidInput& e) {
    throw InvalidInput(std::string("cannot save the model, which load would refuse: ") + e.what());
  }
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
  w.commit();
}

Model Model::load(const std::string& path) {
  Reader r(path);
  // The reading, as a lambda (it has the member's access) so that one handler maps what the model rejects.
  const auto read = [&r]() -> Model {
    char magic[sizeof(kMagic)];
    r.raw(magic, sizeof(magic));
    if (std::memcmp(magic, kMagic, sizeof(kMagic)) != 0) r.fail();
    const std::uint32_t version = r.get<std::uint32_t>();
    if (version < 1 || version > kVersion) throw IoError("'" + r.path() + "' has an unsupported cf_cpp format version");
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
    if (c.rank < 0 || c.rank > kMaxRank || c.iterations < 0 || c.threads < 0) r.fail();
    Model m(c);
    m.n_rows_ = r.get<std::int64_t>();
    m.n_cols_ = r.get<std::int64_t>();
    m.n_features_ = r.get<std::int64_t>();
    m.mu_ = r.get<double>();
    if (m.n_rows_ <= 0 || m.n_cols_ <= 0 || m.n_features_ < 0 || m.n_rows_ > kMaxDim || m.n_cols_ > kMaxDim) r.fail();
    const std::uint64_t d = static_cast<std::uint64_t>(c.rank + 1), nr = m.n_rows_, nc = m.n_cols_,
                        nf = m.n_features_;
    m.rows_ = r.get_vec<double>(nr * d);
    if (version >= 2) {
      m.row_scale_ = r.get_vec<double>(nr);
      m.row_counts_ = r.get_vec<std::int64_t>(nr);
      m.noise_var_ = r.get<double>();
    } else {
      m.row_scale_.assign(nr, 1.0);
      m.row_counts_.assign(nr, 1);
      m.noise_var_ = kV1NoiseVar;
    }
    m.dev_ = r.get_vec<double>(nc * d);
    m.x_ = r.get_vec_upto<double>(UINT64_MAX);
    const bool with_features = !m.x_.empty();
    if (with_features && (m.x_.size() % nc != 0 || m.x_.size() / nc != nf + 1)) r.fail();
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
          if (experts[k] < 0 || static_cast<std::uint64_t>(experts[k]) >= row || !m.blends_[experts[k]].empty())
            r.fail();
          m.blends_[row].emplace_back(experts[k], weights[k]);
        }
      }
    m.additive_rows_.resize(nr);
    if (version >= 4) {
      m.n_add_ = r.get<std::int64_t>();
      if (m.n_add_ < 0 || m.n_add_ > kMaxAdditiveFeatures) r.fail();
      const std::uint64_t na = static_cast<std::uint64_t>(m.n_add_);
      m.add_ = r.get_vec<double>(nc * na);
      m.add_scale_ = r.get_vec<double>(na);
      for (std::vector<double>& weights : m.additive_rows_) {
        weights = r.get_vec_upto<double>(na + 1);
        if (!weights.empty() && weights.size() != na + 1) r.fail();
      }
    }
    if (version >= 5) {
      const std::uint64_t expected = r.hash();
      if (r.get<std::uint64_t>() != expected) r.fail("does not match its checksum: the file is damaged");
    }
    if (!r.at_end()) r.fail("goes on past the model's end: damaged, or not a file save wrote");
    m.check_values();
    m.check_sizes();  // before anything is computed from the sizes: the residual table most
    if (with_features) m.set_feature_range();
    m.refresh_col_params();
    m.refresh_residuals();
    m.refresh_fold_in_prior();
    m.fitted_ = true;
    // Every value read is finite, yet a damaged magnitude (a feature of 1e300 in a file of a format before the
    // checksum) can still make predictions overflow: a model whose predictions could is not loaded. Bounded from the
    // parameters: checking every entry cost O(n_rows n_cols) for a file of O(n_rows + n_cols) bytes.
    m.check_bounded();
    return m;
  };
  try {
    return read();
  } catch (const InvalidInput& e) {  // a value the model rejects (a hyperparameter, say): the file is bad
    throw IoError("'" + path + "' is not a valid cf_cpp model file: " + e.what());
  } catch (const std::bad_alloc&) {  // sizes within every limit, past this machine's memory
    throw IoError("cannot load '" + path + "': out of memory");
  }
}

}  // namespace cf
