// Platform-independent deterministic normal samples (splitmix64 + Box-Muller), so a seed means the same
// initialisation with any standard library.
#pragma once

#include <cmath>
#include <cstdint>

namespace cf::detail {

class NormalRng {
 public:
  explicit NormalRng(std::uint64_t seed) : state_(seed ^ 0x9E3779B97F4A7C15ULL) {}

  double next() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u1 = uniform(), u2 = uniform();
    double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(6.283185307179586 * u2);
    has_spare_ = true;
    return r * std::cos(6.283185307179586 * u2);
  }

  // Uniform integer in [0, n), n > 0 (modulo bias below 2^-40 for any n a model can have).
  std::uint64_t index(std::uint64_t n) { return bits() % n; }

 private:
  std::uint64_t bits() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  double uniform() { return (static_cast<double>(bits() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }  // (0, 1)

  std::uint64_t state_;
  double spare_ = 0;
  bool has_spare_ = false;
};

}  // namespace cf::detail
