// Built with -fno-tree-loop-vectorize where the compiler has it (CMakeLists.txt): GCC would otherwise vectorise the
// inner loop over j, gathering one parameter of 8 rows with shuffles, instead of the straight-line code over the
// block's 8 rows (2.3x slower for e = 18 in a scratch benchmark).
#include "expert_scores.h"

#include <algorithm>

namespace cf::detail {

std::vector<double> to_lanes(const std::vector<double>& rows, const std::vector<std::int64_t>& population, int dim) {
  const std::size_t d = static_cast<std::size_t>(dim), n = population.size();
  std::vector<double> lanes((n + kLanes - 1) / kLanes * kLanes * d, 0.0);
  for (std::size_t k = 0; k < n; ++k)
    for (std::size_t i = 0; i < d; ++i)
      lanes[(k / kLanes * d + i) * kLanes + k % kLanes] = rows[population[k] * dim + i];
  return lanes;
}

void gram_forms(const std::vector<double>& gram, std::size_t e, const std::vector<double>& lanes,
                std::vector<double>& quad, std::vector<double>& gsum) {
  const std::size_t d = e - 1, n_blocks = lanes.size() / (d * kLanes);
  const double* g = gram.data();
  quad.assign(n_blocks * kLanes, 0.0);
  gsum.assign(n_blocks * kLanes, 0.0);
  for (std::size_t b = 0; b < n_blocks; ++b) {
    const double* t = lanes.data() + b * d * kLanes;  // t + (i - 1) kLanes: theta_i of the block's rows
    double* q = quad.data() + b * kLanes;
    double* s = gsum.data() + b * kLanes;
    for (std::size_t u = 0; u < kLanes; ++u) q[u] = g[0], s[u] = g[e];  // theta_0 = 1
    for (std::size_t i = 1; i < e; ++i) {
      // theta' G theta = G_00 + sum_{i >= 1} theta_i (2 G_0i + G_ii theta_i + 2 sum_{j > i} G_ij theta_j)
      const double* ti = t + (i - 1) * kLanes;
      const double g0 = 2 * g[i], g1 = g[e + i], gii = g[i * e + i];
      double acc[kLanes];
      for (std::size_t u = 0; u < kLanes; ++u) {
        acc[u] = g0 + gii * ti[u];
        s[u] += g1 * ti[u];
      }
      for (std::size_t j = i + 1; j < e; ++j) {
        const double gij = 2 * g[i * e + j], *tj = t + (j - 1) * kLanes;
        for (std::size_t u = 0; u < kLanes; ++u) acc[u] += gij * tj[u];
      }
      for (std::size_t u = 0; u < kLanes; ++u) q[u] += ti[u] * acc[u];
    }
  }
}

}  // namespace cf::detail
