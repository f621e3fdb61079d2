#include "normal_equations.h"

#include <algorithm>

#include "linalg.h"

namespace cf::detail {

NormalEquations::NormalEquations(std::size_t d)
    : d_(d), m_(d - 1), mp_((d + 2) / 4 * 4), block_(mp_ * kBlock, 0.0), target_(kBlock, 0.0),
      gram_(mp_ * mp_, 0.0), sums_(mp_, 0.0), rhs_(mp_, 0.0) {}

void NormalEquations::reset() {
  fill_ = 0;
  count_ = target_sum_ = 0;
  std::fill(gram_.begin(), gram_.end(), 0.0);
  std::fill(sums_.begin(), sums_.end(), 0.0);
  std::fill(rhs_.begin(), rhs_.end(), 0.0);
}

void NormalEquations::flush() {
  if (fill_ == 0) return;
  if (fill_ < kBlock) {  // zero the unused tail so the fixed-size kernel can run over the whole block
    for (std::size_t i = 0; i < m_; ++i) std::fill(&block_[i * kBlock + fill_], &block_[(i + 1) * kBlock], 0.0);
    std::fill(target_.begin() + static_cast<std::ptrdiff_t>(fill_), target_.end(), 0.0);
  }
  count_ += static_cast<double>(fill_);
  double ts = 0;
  for (std::size_t k = 0; k < kBlock; ++k) ts += target_[k];
  target_sum_ += ts;
  const double* b = block_.data();
  for (std::size_t i = 0; i < mp_; i += 4) {
    const double *a0 = b + i * kBlock, *a1 = a0 + kBlock, *a2 = a1 + kBlock, *a3 = a2 + kBlock;
    for (std::size_t j = i; j < mp_; j += 4) {
      const double *c0 = b + j * kBlock, *c1 = c0 + kBlock, *c2 = c1 + kBlock, *c3 = c2 + kBlock;
      double s[16] = {0};
      for (std::size_t k = 0; k < kBlock; ++k) {
        s[0] += a0[k] * c0[k];
        s[1] += a0[k] * c1[k];
        s[2] += a0[k] * c2[k];
        s[3] += a0[k] * c3[k];
        s[4] += a1[k] * c0[k];
        s[5] += a1[k] * c1[k];
        s[6] += a1[k] * c2[k];
        s[7] += a1[k] * c3[k];
        s[8] += a2[k] * c0[k];
        s[9] += a2[k] * c1[k];
        s[10] += a2[k] * c2[k];
        s[11] += a2[k] * c3[k];
        s[12] += a3[k] * c0[k];
        s[13] += a3[k] * c1[k];
        s[14] += a3[k] * c2[k];
        s[15] += a3[k] * c3[k];
      }
      for (std::size_t u = 0; u < 4; ++u)
        for (std::size_t v = 0; v < 4; ++v) gram_[(i + u) * mp_ + j + v] += s[u * 4 + v];
    }
    for (std::size_t u = 0; u < 4; ++u) {
      const double* row = b + (i + u) * kBlock;
      double sum = 0;
      for (std::size_t k = 0; k < kBlock; ++k) sum += row[k];
      sums_[i + u] += sum;
      rhs_[i + u] += dot(row, target_.data(), kBlock);
    }
  }
  fill_ = 0;
}

void NormalEquations::moments(double* a, double* out) {
  flush();
  a[0] = count_;
  out[0] = target_sum_;
  for (std::size_t i = 0; i < m_; ++i) {
    a[i + 1] = a[(i + 1) * d_] = sums_[i];
    out[i + 1] = rhs_[i];
    for (std::size_t j = i; j < m_; ++j) a[(i + 1) * d_ + j + 1] = a[(j + 1) * d_ + i + 1] = gram_[i * mp_ + j];
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
