// Accumulates the normal equations of one ridge regression with a leading constant regressor (the bias),
//     x = [1, y_1 .. y_m],  X^T X and X^T t,
// entry by entry in cache-sized blocks, then solves them. Used for every row / column solve of ALS and by the
// fold-in. A block holds one row per entry, [y_1 .. y_m, 0 (padding to a multiple of 4), 1, t]; a register-tiled
// kernel adds its products y y' (upper triangle, 4 x 4 tiles) and y [1, t] (the regressors' sums and X^T t) to the
// totals. The constant regressor is kept out of the tiles so that they stay at m = rank (a multiple of 4 for the
// usual ranks, so no padding work).
#pragma once

#include <cstddef>
#include <vector>

namespace cf::detail {

class NormalEquations {
 public:
  static constexpr std::size_t kBlock = 64;  // entries per block (the block stays in L1)
  // Rows allocated past the block, never written nor summed: GCC 12's vectorised add_tile<2> (-O3 -march=native,
  // AVX-512) loads rows k to k + 3 in the iteration of row k and uses only row k's values, so it read up to three
  // rows past the block; where the block ended a heap mapping (a worker thread's arena), a fit of rank 256 or more
  // crashed the process (review).
  static constexpr std::size_t kOverrunRows = 8;  // twice what this build reads: room for another vector width

  // d = 1 + m regressors in total (constant first).
  explicit NormalEquations(std::size_t d);

  void reset();

  // Adds one entry with regressors [1, y[1], ..., y[d-1]] (y[0] is ignored) and target t.
  void add_with_bias(const double* y, double t) {
    double* row = block_.data() + fill_ * width_;
    for (std::size_t i = 0; i < m_; ++i) row[i] = y[i + 1];
    row[mp_ + 1] = t;
    if (++fill_ == kBlock) flush();
  }

  // The accumulated X^T X (d x d, row-major, into gram) and X^T t (d values, into rhs).
  void moments(double* gram, double* rhs);

  // Solves (X^T X + diag(ridge)) a = X^T t + diag(ridge) prior (prior may be null); writes d values to out.
  void solve(const double* ridge, const double* prior, double* out);

 private:
  void flush();

  std::size_t d_, m_, mp_, width_, fill_ = 0;  // mp_: m rounded up to a multiple of 4; width_ = mp_ + 2
  double count_ = 0, target_sum_ = 0;
  std::vector<double> block_;  // (kBlock + kOverrunRows) x width_
  std::vector<double> sums_;   // mp_ x width_: [sum y y' (upper triangle), sum y, sum y t] per regressor
};

}  // namespace cf::detail
