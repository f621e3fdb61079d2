// Accumulates the normal equations of one ridge regression with a leading constant regressor (the bias),
//     x = [1, y_1 .. y_m],  X^T X and X^T t,
// entry by entry in cache-sized blocks with a register-tiled Gram kernel, then solves them. Used for every row /
// column solve of ALS; treating the constant column apart keeps the tiled part at m = rank (a multiple of 4 for the
// usual ranks, so no padding work).
#pragma once

#include <cstddef>
#include <vector>

namespace cf::detail {

class NormalEquations {
 public:
  static constexpr std::size_t kBlock = 64;  // entries per block (the block stays in L1)

  // d = 1 + m regressors in total (constant first).
  explicit NormalEquations(std::size_t d);

  void reset();

  // Adds one entry with regressors [1, y[1], ..., y[d-1]] (y[0] is ignored) and target t.
  void add_with_bias(const double* y, double t) {
    for (std::size_t i = 0; i < m_; ++i) block_[i * kBlock + fill_] = y[i + 1];
    target_[fill_] = t;
    if (++fill_ == kBlock) flush();
  }

  // The accumulated X^T X (d x d, row-major, into gram) and X^T t (d values, into rhs).
  void moments(double* gram, double* rhs);

  // Solves (X^T X + diag(ridge)) a = X^T t + diag(ridge) prior (prior may be null); writes d values to out.
  void solve(const double* ridge, const double* prior, double* out);

 private:
  void flush();

  std::size_t d_, m_, mp_, fill_ = 0;  // mp_: m rounded up to a multiple of 4 (zero rows)
  double count_ = 0, target_sum_ = 0;
  std::vector<double> block_, target_, gram_, sums_, rhs_;
};

}  // namespace cf::detail
