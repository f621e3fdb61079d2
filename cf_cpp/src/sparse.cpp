#include "sparse.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include "parallel.h"

namespace cf::detail {

std::string format_value(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

void validate(const Observations& obs, std::int64_t n_rows, std::int64_t n_cols) {
  if (n_rows <= 0 || n_cols <= 0 || n_rows > kMaxDim || n_cols > kMaxDim)
    throw InvalidInput("n_rows and n_cols must be in [1, " + std::to_string(kMaxDim) + "], got " +
                       std::to_string(n_rows) + " and " + std::to_string(n_cols));
  for (std::size_t i = 0; i < obs.size; ++i) {
    if (obs.rows[i] < 0 || obs.rows[i] >= n_rows)
      throw InvalidInput("rows[" + std::to_string(i) + "] = " + std::to_string(obs.rows[i]) + " is out of range [0, " +
                         std::to_string(n_rows) + ")");
    if (obs.cols[i] < 0 || obs.cols[i] >= n_cols)
      throw InvalidInput("cols[" + std::to_string(i) + "] = " + std::to_string(obs.cols[i]) + " is out of range [0, " +
                         std::to_string(n_cols) + ")");
    double v = obs.values[i];
    if (!std::isfinite(v) || v <= 0)
      throw InvalidInput("values[" + std::to_string(i) + "] = " + format_value(v) +
                         " must be finite and > 0 (the model works in log space)");
  }
}

namespace {

[[noreturn]] void changed() { throw InvalidInput("rows / cols changed during the call (another thread wrote them)"); }

}  // namespace

Compressed compress(const std::int64_t* major, const std::int64_t* minor, const double* logv, std::size_t n,
                    std::int64_t n_major, std::int64_t n_minor) {
  Compressed out;
  out.ptr.assign(static_cast<std::size_t>(n_major) + 1, 0);
  for (std::size_t i = 0; i < n; ++i) {
    const std::int64_t m = major[i];
    if (m < 0 || m >= n_major) changed();
    ++out.ptr[static_cast<std::size_t>(m) + 1];
  }
  for (std::int64_t m = 0; m < n_major; ++m) out.ptr[m + 1] += out.ptr[m];
  std::vector<std::int64_t> fill(out.ptr.begin(), out.ptr.end() - 1);
  out.index.resize(n);
  out.value.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    const std::int64_t m = major[i], k = minor[i];
    if (m < 0 || m >= n_major || k < 0 || k >= n_minor || fill[static_cast<std::size_t>(m)] == out.ptr[m + 1])
      changed();
    std::int64_t pos = fill[static_cast<std::size_t>(m)]++;
    out.index[pos] = k;
    out.value[pos] = logv[i];
  }
  return out;
}

Compressed transpose(const Compressed& by_major, std::int64_t n_minor) {
  Compressed out;
  out.ptr.assign(static_cast<std::size_t>(n_minor) + 1, 0);
  for (std::int64_t k : by_major.index) ++out.ptr[static_cast<std::size_t>(k) + 1];
  for (std::int64_t k = 0; k < n_minor; ++k) out.ptr[k + 1] += out.ptr[k];
  std::vector<std::int64_t> fill(out.ptr.begin(), out.ptr.end() - 1);
  out.index.resize(by_major.index.size());
  out.value.resize(by_major.value.size());
  const auto n_major = static_cast<std::int64_t>(by_major.ptr.size()) - 1;
  for (std::int64_t m = 0; m < n_major; ++m)
    for (std::int64_t e = by_major.ptr[m]; e < by_major.ptr[m + 1]; ++e) {
      const std::int64_t pos = fill[static_cast<std::size_t>(by_major.index[e])]++;
      out.index[pos] = m;
      out.value[pos] = by_major.value[e];
    }
  // An entry given more than once comes in its input order: its values by size instead (the fit may not depend on it).
  for (std::int64_t k = 0; k < n_minor; ++k)
    for (std::int64_t b = out.ptr[k], e = b; b < out.ptr[k + 1]; b = e) {
      while (e < out.ptr[k + 1] && out.index[e] == out.index[b]) ++e;
      if (e - b > 1) std::sort(out.value.begin() + b, out.value.begin() + e);
    }
  return out;
}

Storage compress_both(const Observations& obs, std::int64_t n_rows, std::int64_t n_cols, int threads) {
  std::vector<double> logv(obs.size);
  parallel_chunks(static_cast<std::int64_t>(obs.size), threads, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t i = lo; i < hi; ++i) {
      logv[i] = std::log(obs.values[i]);
      if (!std::isfinite(logv[i])) throw InvalidInput("values changed during the call (another thread wrote them)");
    }
  }, 4096);
  Storage out;
  parallel_chunks(2, threads, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t k = lo; k < hi; ++k)
      if (k == 0)
        out.by_row = transpose(compress(obs.cols, obs.rows, logv.data(), obs.size, n_cols, n_rows), n_rows);
      else
        out.by_col = transpose(compress(obs.rows, obs.cols, logv.data(), obs.size, n_rows, n_cols), n_cols);
  }, 1);
  return out;
}

}  // namespace cf::detail
