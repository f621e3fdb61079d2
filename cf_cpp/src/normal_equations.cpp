#include "normal_equations.h"

#include <algorithm>

#include "linalg.h"

namespace cf::detail {

namespace {

// sums[i + u][j + v] += sum_k b_k[i + u] b_k[j + v] for u < 4, v < NV, over the block's first `fill` rows (stride w).
template <std::size_t NV>
void add_tile(const double* b, std::size_t w, std::size_t fill, std::size_t i, std::size_t j, double* sums) {
  double s[4][NV] = {};
  for (std::size_t k = 0; k < fill; ++k) {
    const double* y = b + k * w;
    for (std::size_t u = 0; u < 4; ++u)
      for (std::size_t v = 0; v < NV; ++v) s[u][v] += y[i + u] * y[j + v];
  }
  for (std::size_t u = 0; u < 4; ++u)
    for (std::size_t v = 0; v < NV; ++v) sums[(i + u) * w + j + v] += s[u][v];
}

}  // namespace

NormalEquations::NormalEquations(std::size_t d)
    : d_(d), m_(d - 1), mp_((d + 2) / 4 * 4), width_(mp_ + 2), block_((kBlock + kOverrunRows) * width_, 0.0),
      sums_(mp_ * width_, 0.0) {
  for (std::size_t k = 0; k < kBlock; ++k) block_[k * width_ + mp_] = 1.0;
}

void NormalEquations::reset() {
  fill_ = 0;
  count_ = target_sum_ = 0;
  std::fill(sums_.begin(), sums_.end(), 0.0);
}

void NormalEquations::flush() {
  if (fill_ == 0) return;
  const double* b = block_.data();
  count_ += static_cast<double>(fill_);
  for (std::size_t k = 0; k < fill_; ++k) target_sum_ += b[k * width_ + mp_ + 1];
  for (std::size_t i = 0; i < mp_; i += 4) {
    for (std::size_t j = i; j < mp_; j += 4) add_tile<4>(b, width_, fill_, i, j, sums_.data());
    add_tile<2>(b, width_, fill_, i, mp_, sums_.data());  // against [1, t]
  }
  fill_ = 0;
}

void NormalEquations::moments(double* a, double* out) {
  flush();
  a[0] = count_;
  out[0] = target_sum_;
  for (std::size_t i = 0; i < m_; ++i) {
    const double* si = sums_.data() + i * width_;
    a[i + 1] = a[(i + 1) * d_] = si[mp_];
    out[i + 1] = si[mp_ + 1];
    for (std::size_t j = i; j < m_; ++j) a[(i + 1) * d_ + j + 1] = a[(j + 1) * d_ + i + 1] = si[j];
  }
}

void NormalEquations::solve(const double* ridge, const double* prior, double* out) {
  std::vector<double> a(d_ * d_);
  moments(a.data(), out);
  if (prior)
    for (std::size_t i = 0; i < d_; ++i) out[i] += ridge[i] * prior[i];
  ridge_solve(a.data(), ridge, out, d_);
}

}  // namespace cf::detail
