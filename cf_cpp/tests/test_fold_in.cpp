#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "expert_scores.h"
#include "fold_in.h"
#include "rng.h"

using namespace cf::detail;

namespace {

constexpr double kTwoPi = 6.283185307179586;

// Solves A x = b (n x n, Gauss-Jordan with partial pivoting) and returns log |det A|: the dense reference.
double solve_dense(std::vector<double> a, std::vector<double>& b, std::size_t n) {
  double log_det = 0;
  for (std::size_t c = 0; c < n; ++c) {
    std::size_t p = c;
    for (std::size_t r = c + 1; r < n; ++r)
      if (std::fabs(a[r * n + c]) > std::fabs(a[p * n + c])) p = r;
    for (std::size_t k = 0; k < n; ++k) std::swap(a[c * n + k], a[p * n + k]);
    std::swap(b[c], b[p]);
    log_det += std::log(std::fabs(a[c * n + c]));
    for (std::size_t r = 0; r < n; ++r) {
      if (r == c) continue;
      const double f = a[r * n + c] / a[c * n + c];
      for (std::size_t k = 0; k < n; ++k) a[r * n + k] -= f * a[c * n + k];
      b[r] -= f * b[c];
    }
  }
  for (std::size_t c = 0; c < n; ++c) b[c] /= a[c * n + c];
  return log_det;
}

// A random fitted model: n_cols column parameters z and n_pop population rows [b, p], dim = 4.
struct Population {
  static constexpr int dim = 4;
  std::int64_t n_cols = 300;
  double mu = 1.0;
  std::vector<double> z, rows;
  std::vector<std::int64_t> counts;
  Population(std::int64_t n_pop, std::uint64_t seed) {
    NormalRng rng(seed);
    for (std::int64_t i = 0; i < n_cols * dim; ++i) z.push_back(rng.next());
    for (std::int64_t i = 0; i < n_pop * dim; ++i) rows.push_back(0.5 * rng.next());
    counts.assign(static_cast<std::size_t>(n_pop), 10);
  }
  // log y of the row a = [g, b, p] at column c.
  double log_y(const std::vector<double>& a, std::int64_t c) const {
    double s = mu + a[1] + a[0] * z[c * dim];
    for (int k = 1; k < dim; ++k) s += a[k + 1] * z[c * dim + k];
    return s;
  }
};

}  // namespace

TEST_CASE("a component's posterior and evidence match the dense Gaussian formulas") {
  Population pop(3, 1);
  const std::size_t e = Population::dim + 1, d = e - 1, n = 7;
  std::vector<std::int64_t> cols = {0, 5, 9, 40, 77, 120, 299};
  std::vector<double> logy = {1.2, 0.3, 2.0, 1.1, -0.4, 0.9, 1.7};
  const FoldInMoments m = fold_in_moments(cols.data(), logy.data(), n, pop.z.data(), pop.mu, Population::dim);
  // W (n x e): rows w_c = [z_c[0], 1, z_c[1:]]; t = log y - mu.
  std::vector<double> w(n * e), t(n);
  for (std::size_t i = 0; i < n; ++i) {
    w[i * e] = pop.z[cols[i] * Population::dim];
    w[i * e + 1] = 1.0;
    for (int k = 1; k < Population::dim; ++k) w[i * e + k + 1] = pop.z[cols[i] * Population::dim + k];
    t[i] = logy[i] - pop.mu;
  }
  // The prior: mean theta = [1, bp], covariance S = sigma_s^2 v v' + [0, 0; 0, A], v = [1, 0, bp[1:]], A = L_A L_A'.
  const std::vector<double> bp = {0.2, -0.1, 0.3, 0.05};
  std::vector<double> root(d * d, 0.0), theta = {1.0, 0.2, -0.1, 0.3, 0.05}, v = {1.0, 0.0, -0.1, 0.3, 0.05};
  for (std::size_t i = 0; i < d; ++i)
    for (std::size_t j = 0; j <= i; ++j) root[i * d + j] = 0.3 * std::exp(-std::fabs(double(i) - double(j))) + (i == j);
  std::vector<double> cov(e * e, 0.0);
  for (std::size_t i = 0; i < e; ++i)
    for (std::size_t j = 0; j < e; ++j) {
      cov[i * e + j] = kFoldInSlopeStd * kFoldInSlopeStd * v[i] * v[j];
      if (i > 0 && j > 0)
        for (std::size_t k = 0; k < d; ++k) cov[i * e + j] += root[(i - 1) * d + k] * root[(j - 1) * d + k];
    }
  const double s2 = 0.05;
  const FoldInPosterior post = component_posterior(m, component_family(m, root, s2), bp.data(), s2);

  // Dense: K = W cov W' + s2 I, alpha = K^-1 (t - W theta), mean = theta + cov W' alpha.
  std::vector<double> k(n * n, 0.0), alpha(n);
  for (std::size_t i = 0; i < n; ++i) {
    double pred = 0;
    for (std::size_t a = 0; a < e; ++a) pred += w[i * e + a] * theta[a];
    alpha[i] = t[i] - pred;
    for (std::size_t j = 0; j < n; ++j) {
      for (std::size_t a = 0; a < e; ++a)
        for (std::size_t b = 0; b < e; ++b) k[i * n + j] += w[i * e + a] * cov[a * e + b] * w[j * e + b];
      if (i == j) k[i * n + j] += s2;
    }
  }
  const std::vector<double> resid = alpha;
  const double log_det = solve_dense(k, alpha, n);
  double quad = 0;
  for (std::size_t i = 0; i < n; ++i) quad += resid[i] * alpha[i];
  for (std::size_t a = 0; a < e; ++a) {
    double mean = theta[a];
    for (std::size_t b = 0; b < e; ++b)
      for (std::size_t i = 0; i < n; ++i) mean += cov[a * e + b] * w[i * e + b] * alpha[i];
    CHECK(post.mean[a] == doctest::Approx(mean).epsilon(1e-9));
  }
  const double log_n = -0.5 * (quad + log_det + double(n) * std::log(kTwoPi));
  const double shift = 0.5 * ((double(n) - double(e)) * std::log(s2) + double(n) * std::log(kTwoPi));
  CHECK(post.log_evidence == doctest::Approx(log_n + shift).epsilon(1e-9));
}

TEST_CASE("with many revealed entries the fold-in reaches the least-squares row") {
  Population pop(12, 2);
  const FoldInPrior prior = make_prior(pop.rows, pop.counts, Population::dim);
  const std::vector<double> truth = {1.3, -0.7, 0.9, -1.2, 0.4};  // [g, b, p]: unlike every population row
  std::vector<std::int64_t> cols;
  std::vector<double> logy;
  for (std::int64_t c = 0; c < pop.n_cols; ++c) {
    cols.push_back(c);
    logy.push_back(pop.log_y(truth, c));
  }
  const FoldedRow out = fold_in(cols.data(), logy.data(), cols.size(), pop.z.data(), pop.mu, Population::dim,
                                pop.rows.data(), prior, 1e-4);
  CHECK(out.scale == doctest::Approx(truth[0]).epsilon(1e-3));
  for (int i = 0; i < Population::dim; ++i) CHECK(out.params[i] == doctest::Approx(truth[i + 1]).epsilon(1e-3));
}

TEST_CASE("an offset copy of one fitted row is recognised from a few entries, also in a population too large to "
          "score every row exactly") {
  for (std::int64_t n_pop : {std::int64_t{10}, std::int64_t{3 * kMaxExperts}}) {
    Population pop(n_pop, 3);
    const FoldInPrior prior = make_prior(pop.rows, pop.counts, Population::dim);
    const std::int64_t like = n_pop - 3;
    std::vector<double> truth = {1.0};
    for (int i = 0; i < Population::dim; ++i) truth.push_back(pop.rows[like * Population::dim + i]);
    truth[1] += 0.5;  // slower by a constant factor
    std::vector<std::int64_t> cols = {31, 64, 150, 222, 260};
    std::vector<double> logy;
    for (std::int64_t c : cols) logy.push_back(pop.log_y(truth, c));
    const FoldedRow out = fold_in(cols.data(), logy.data(), cols.size(), pop.z.data(), pop.mu, Population::dim,
                                  pop.rows.data(), prior, 1e-3);
    double se = 0;
    std::vector<double> got = {out.scale};
    got.insert(got.end(), out.params.begin(), out.params.end());
    for (std::int64_t c = 0; c < pop.n_cols; ++c) se += std::pow(pop.log_y(got, c) - pop.log_y(truth, c), 2);
    CHECK(std::sqrt(se / double(pop.n_cols)) < 0.02);
  }
}

TEST_CASE("the fold-in does not depend on the order of the fitted rows, even from one entry") {
  // With one entry every row fits it exactly after a free offset; the pre-selection of the experts must still be
  // decided by the data (the offset each row needs), not by the rows' order or by rounding.
  Population pop(3 * kMaxExperts, 5);
  Population reversed = pop;
  const std::int64_t n_pop = 3 * kMaxExperts;
  for (std::int64_t r = 0; r < n_pop; ++r)
    for (int i = 0; i < Population::dim; ++i)
      reversed.rows[r * Population::dim + i] = pop.rows[(n_pop - 1 - r) * Population::dim + i];
  const std::vector<double> truth = {1.0, 0.3, 0.2, -0.4, 0.1};
  for (std::vector<std::int64_t> cols : {std::vector<std::int64_t>{77}, std::vector<std::int64_t>{5, 150, 290}}) {
    std::vector<double> logy;
    for (std::int64_t c : cols) logy.push_back(pop.log_y(truth, c));
    const FoldedRow a = fold_in(cols.data(), logy.data(), cols.size(), pop.z.data(), pop.mu, Population::dim,
                                pop.rows.data(), make_prior(pop.rows, pop.counts, Population::dim), 1e-3);
    const FoldedRow b = fold_in(cols.data(), logy.data(), cols.size(), reversed.z.data(), reversed.mu,
                                Population::dim, reversed.rows.data(),
                                make_prior(reversed.rows, reversed.counts, Population::dim), 1e-3);
    CHECK(a.scale == doctest::Approx(b.scale).epsilon(1e-9));
    for (int i = 0; i < Population::dim; ++i) CHECK(a.params[i] == doctest::Approx(b.params[i]).epsilon(1e-9));
  }
}

TEST_CASE("the experts' scores: theta' G theta and (G theta)[1] for every row, in blocks with a padded tail") {
  for (std::int64_t n_pop : {1, 8, 13}) {  // one partial block, one whole block, a whole and a partial one
    Population pop(n_pop, 7);
    const std::size_t e = Population::dim + 1;
    std::vector<std::int64_t> population(static_cast<std::size_t>(n_pop));
    for (std::int64_t k = 0; k < n_pop; ++k) population[k] = n_pop - 1 - k;  // any order
    NormalRng rng(11);
    std::vector<double> x(3 * e * e), gram(e * e, 0.0), quad, gsum;
    for (double& v : x) v = rng.next();
    for (std::size_t i = 0; i < e; ++i)  // symmetric: sum of outer products
      for (std::size_t j = 0; j < e; ++j)
        for (std::size_t k = 0; k < 3 * e; ++k) gram[i * e + j] += x[k * e + i] * x[k * e + j];
    gram_forms(gram, e, to_lanes(pop.rows, population, Population::dim), quad, gsum);
    REQUIRE(quad.size() == (static_cast<std::size_t>(n_pop) + kLanes - 1) / kLanes * kLanes);
    for (std::int64_t k = 0; k < n_pop; ++k) {
      std::vector<double> theta = {1.0};
      for (int i = 0; i < Population::dim; ++i) theta.push_back(pop.rows[population[k] * Population::dim + i]);
      double q = 0, s = 0;
      for (std::size_t i = 0; i < e; ++i) {
        s += gram[e + i] * theta[i];
        for (std::size_t j = 0; j < e; ++j) q += theta[i] * gram[i * e + j] * theta[j];
      }
      CHECK(quad[k] == doctest::Approx(q).epsilon(1e-12));
      CHECK(gsum[k] == doctest::Approx(s).epsilon(1e-12));
    }
  }
}
