// Accumulates the normal equations (X^T X, X^T t) of one ridge regression entry by entry, in cache-sized blocks
// with a register-tiled Gram kernel, then solves them. Used for every row / column solve of ALS.
#pragma once

#include <cstddef>
#include <vector>

namespace cf::detail {

class NormalEquations {
 public:
  static constexpr std::size_t kBlock = 64;  // entries per block (the block stays in L1)

  explicit NormalEquations(std::size_t d);

  void reset();


  // Adds one entry: regressor vector x (d values) with target t.
  void add(const double* x, double t) {
    for (std::size_t i = 0; i < d_; ++i) block_[i * kBlock + fill_] = x[i];
    target_[fill_] = t;
    if (++fill_ == kBlock) flush();
  }

  // Adds one entry whose regressors are [1, y[1..d-1]] (bias column first).
  void add_with_bias(const double* y, double t) {
    block_[fill_] = 1.0;
    for (std::size_t i = 1; i < d_; ++i) block_[i * kBlock + fill_] = y[i];
    target_[fill_] = t;
    if (++fill_ == kBlock) flush();
  }

  // Solves (X^T X + diag(ridge)) a = X^T t + diag(ridge) prior (prior may be null); writes d values to out.
  void solve(const double* ridge, const double* prior, double* out);

 private:
  void flush();

  std::size_t d_, dp_, fill_ = 0;  // dp_: d rounded up to a multiple of 4 (zero rows)
  std::vector<double> block_, target_, gram_, rhs_;
};

}  // namespace cf::detail
