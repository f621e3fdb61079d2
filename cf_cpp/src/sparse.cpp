#include "sparse.h"

#include <cmath>
#include <string>

#include "parallel.h"

namespace cf::detail {

void validate(const Observations& obs, std::int64_t n_rows, std::int64_t n_cols) {
  if (n_rows <= 0 || n_cols <= 0)
    throw InvalidInput("n_rows and n_cols must be positive, got " + std::to_string(n_rows) + " and " +
                       std::to_string(n_cols));
  for (std::size_t i = 0; i < obs.size; ++i) {
    if (obs.rows[i] < 0 || obs.rows[i] >= n_rows)
      throw InvalidInput("rows[" + std::to_string(i) + "] = " + std::to_string(obs.rows[i]) + " is out of range [0, " +
                         std::to_string(n_rows) + ")");
    if (obs.cols[i] < 0 || obs.cols[i] >= n_cols)
      throw InvalidInput("cols[" + std::to_string(i) + "] = " + std::to_string(obs.cols[i]) + " is out of range [0, " +
                         std::to_string(n_cols) + ")");
    double v = obs.values[i];
    if (!std::isfinite(v) || v <= 0)
      throw InvalidInput("values[" + std::to_string(i) + "] = " + std::to_string(v) +
                         " must be finite and > 0 (the model works in log space)");
  }
}

Compressed compress(const std::int64_t* major, const std::int64_t* minor, const double* logv, std::size_t n,
                    std::int64_t n_major) {
  Compressed out;
  out.ptr.assign(static_cast<std::size_t>(n_major) + 1, 0);
  for (std::size_t i = 0; i < n; ++i) ++out.ptr[static_cast<std::size_t>(major[i]) + 1];
  for (std::int64_t m = 0; m < n_major; ++m) out.ptr[m + 1] += out.ptr[m];
  std::vector<std::int64_t> fill(out.ptr.begin(), out.ptr.end() - 1);
  out.index.resize(n);
  out.value.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    std::int64_t pos = fill[static_cast<std::size_t>(major[i])]++;
    out.index[pos] = minor[i];
    out.value[pos] = logv[i];
  }
  return out;
}

Storage compress_both(const Observations& obs, std::int64_t n_rows, std::int64_t n_cols, int threads) {
  std::vector<double> logv(obs.size);
  parallel_chunks(static_cast<std::int64_t>(obs.size), threads, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t i = lo; i < hi; ++i) logv[i] = std::log(obs.values[i]);
  }, 4096);
  Storage out;
  parallel_chunks(2, threads, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t k = lo; k < hi; ++k)
      if (k == 0)
        out.by_row = compress(obs.rows, obs.cols, logv.data(), obs.size, n_rows);
      else
        out.by_col = compress(obs.cols, obs.rows, logv.data(), obs.size, n_cols);
  }, 1);
  return out;
}

}  // namespace cf::detail
