#include "normal_equations.h"

#include <algorithm>

#include "linalg.h"

namespace cf::detail {

NormalEquations::NormalEquations(std::size_t d)
    : d_(d), dp_((d + 3) / 4 * 4), block_(dp_ * kBlock, 0.0), target_(kBlock, 0.0), gram_(dp_ * dp_, 0.0),
      rhs_(dp_, 0.0) {}

void NormalEquations::reset() {
  fill_ = 0;
  std::fill(gram_.begin(), gram_.end(), 0.0);
  std::fill(rhs_.begin(), rhs_.end(), 0.0);
}

void NormalEquations::flush() {
  if (fill_ == 0) return;
  if (fill_ < kBlock) {  // zero the unused tail so the fixed-size kernel can run over the whole block
    for (std::size_t i = 0; i < d_; ++i) std::fill(&block_[i * kBlock + fill_], &block_[(i + 1) * kBlock], 0.0);
    std::fill(target_.begin() + static_cast<std::ptrdiff_t>(fill_), target_.end(), 0.0);
  }
  const double* b = block_.data();
  for (std::size_t i = 0; i < dp_; i += 4) {
    const double *a0 = b + i * kBlock, *a1 = a0 + kBlock, *a2 = a1 + kBlock, *a3 = a2 + kBlock;
    for (std::size_t j = i; j < dp_; j += 4) {
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
        for (std::size_t v = 0; v < 4; ++v) gram_[(i + u) * dp_ + j + v] += s[u * 4 + v];
    }
    for (std::size_t u = 0; u < 4; ++u) rhs_[i + u] += dot(b + (i + u) * kBlock, target_.data(), kBlock);
  }
  fill_ = 0;
}

void NormalEquations::solve(const double* ridge, const double* prior, double* out) {
  flush();
  std::vector<double> a(d_ * d_);
  for (std::size_t i = 0; i < d_; ++i)
    for (std::size_t j = i; j < d_; ++j) a[i * d_ + j] = a[j * d_ + i] = gram_[i * dp_ + j];
  std::copy(rhs_.begin(), rhs_.begin() + static_cast<std::ptrdiff_t>(d_), out);
  if (prior)
    for (std::size_t i = 0; i < d_; ++i) out[i] += ridge[i] * prior[i];
  ridge_solve(a.data(), ridge, out, d_);
}

}  // namespace cf::detail
