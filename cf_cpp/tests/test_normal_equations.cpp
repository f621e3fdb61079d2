#include <doctest/doctest.h>

#include <random>
#include <vector>

#include "linalg.h"
#include "normal_equations.h"

using cf::detail::NormalEquations;

TEST_CASE("NormalEquations matches a direct ridge solve across block boundaries") {
  for (std::size_t d : {1u, 2u, 3u, 5u, 8u, 10u, 17u}) {  // every rank modulo 4
    for (std::size_t n : {1u, 63u, 64u, 65u, 300u}) {
      std::mt19937 gen(static_cast<unsigned>(d * 1000 + n));
      std::normal_distribution<double> normal;
      std::vector<double> x(n * d), t(n), gram(d * d, 0.0), rhs(d, 0.0), ridge(d, 0.5), prior(d, 0.25);
      for (auto& v : x) v = normal(gen);
      for (std::size_t e = 0; e < n; ++e) x[e * d] = 1.0;  // the constant (bias) regressor
      for (auto& v : t) v = normal(gen);
      NormalEquations ne(d);
      for (std::size_t e = 0; e < n; ++e) {
        ne.add_with_bias(&x[e * d], t[e]);
        for (std::size_t i = 0; i < d; ++i) {
          rhs[i] += x[e * d + i] * t[e];
          for (std::size_t j = 0; j < d; ++j) gram[i * d + j] += x[e * d + i] * x[e * d + j];
        }
      }
      for (std::size_t i = 0; i < d; ++i) rhs[i] += ridge[i] * prior[i];
      cf::detail::ridge_solve(gram.data(), ridge.data(), rhs.data(), d);
      std::vector<double> out(d);
      ne.solve(ridge.data(), prior.data(), out.data());
      for (std::size_t i = 0; i < d; ++i) REQUIRE(out[i] == doctest::Approx(rhs[i]).epsilon(1e-9));
      ne.reset();  // reusable: an empty system with a ridge solves to the prior
      ne.solve(ridge.data(), prior.data(), out.data());
      for (std::size_t i = 0; i < d; ++i) REQUIRE(out[i] == doctest::Approx(prior[i]));
    }
  }
}
