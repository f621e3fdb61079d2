#include "als.h"

#include <algorithm>

#include "normal_equations.h"
#include "parallel.h"

namespace cf::detail {

namespace {

constexpr std::int64_t kPrefetchAhead = 8;  // entries: a row solve gathers column parameters in random order

inline void prefetch(const double* p, int n) {
#if defined(__GNUC__) || defined(__clang__)
  for (int k = 0; k < n; k += 8) __builtin_prefetch(p + k);  // one 64-byte line per 8 doubles
#else
  (void)p;
  (void)n;
#endif
}

void solve_row_with(NormalEquations& ne, const std::int64_t* cols, const double* logy, std::int64_t n,
                    const double* z, double mu, int dim, const double* ridge, const double* prior, double* out) {
  ne.reset();
  for (std::int64_t e = 0; e < n; ++e) {
    if (e + kPrefetchAhead < n) prefetch(z + cols[e + kPrefetchAhead] * dim, dim);
    const double* zc = z + cols[e] * dim;
    ne.add_with_bias(zc, logy[e] - mu - zc[0]);
  }
  ne.solve(ridge, prior, out);
}

}  // namespace

void solve_row(const std::int64_t* cols, const double* logy, std::int64_t n, const double* z, double mu, int dim,
               const double* ridge, const double* prior, double* out) {
  NormalEquations ne(static_cast<std::size_t>(dim));
  solve_row_with(ne, cols, logy, n, z, mu, dim, ridge, prior, out);
}

void solve_rows(const Compressed& by_row, const double* z, double mu, int dim, const double* ridge, double* rows,
                int threads, const std::atomic<bool>* stop) {
  const std::int64_t n_rows = static_cast<std::int64_t>(by_row.ptr.size()) - 1;
  parallel_chunks(n_rows, threads, [&](std::int64_t lo, std::int64_t hi) {
    NormalEquations ne(static_cast<std::size_t>(dim));
    for (std::int64_t r = lo; r < hi && !stopped(stop); ++r) {
      std::int64_t b = by_row.ptr[r], n = by_row.ptr[r + 1] - b;
      if (n == 0) continue;  // a row without observations keeps its parameters
      solve_row_with(ne, by_row.index.data() + b, by_row.value.data() + b, n, z, mu, dim, ridge, nullptr,
                     rows + r * dim);
    }
  }, 1);
}

void solve_cols(const Compressed& by_col, const double* rows, const double* prior, double mu, int dim,
                const double* ridge, double* dev, int threads, const std::atomic<bool>* stop) {
  const std::int64_t n_cols = static_cast<std::int64_t>(by_col.ptr.size()) - 1;
  parallel_chunks(n_cols, threads, [&](std::int64_t lo, std::int64_t hi) {
    NormalEquations ne(static_cast<std::size_t>(dim));
    for (std::int64_t c = lo; c < hi && !stopped(stop); ++c) {
      double* out = dev + c * dim;
      const std::int64_t b = by_col.ptr[c], e_end = by_col.ptr[c + 1];
      if (e_end == b) {
        std::fill(out, out + dim, 0.0);
        continue;
      }
      const double* pc = prior ? prior + c * dim : nullptr;
      ne.reset();
      for (std::int64_t e = b; e < e_end; ++e) {
        const double* a = rows + by_col.index[e] * dim;  // [b_r, p_r]
        double t = by_col.value[e] - mu - a[0];
        if (pc) {
          t -= pc[0];
          for (int i = 1; i < dim; ++i) t -= a[i] * pc[i];
        }
        ne.add_with_bias(a, t);
      }
      ne.solve(ridge, nullptr, out);
    }
  });
}

}  // namespace cf::detail
