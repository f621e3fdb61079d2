// Synthetic low-rank positive matrices with feature-driven columns, shared by the C++ tests.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

struct Synthetic {
  std::int64_t n_rows, n_cols, n_features;
  std::vector<double> truth_log;  // n_rows x n_cols
  std::vector<double> features;   // n_cols x n_features
  std::vector<std::int64_t> rows, cols;
  std::vector<double> values;
};

// log y = row bias + column effect given by the features + a small rank-2 interaction; observed with prob. fill.
inline Synthetic make_synthetic(std::int64_t n_rows, std::int64_t n_cols, double fill, unsigned seed) {
  Synthetic s{n_rows, n_cols, 3, {}, {}, {}, {}, {}};
  std::mt19937 gen(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> unif(0.0, 1.0);
  std::vector<double> rb(n_rows), rf(n_rows * 2);
  for (auto& v : rb) v = 0.5 * normal(gen);
  for (auto& v : rf) v = 0.5 * normal(gen);
  s.features.resize(n_cols * 3);
  for (auto& v : s.features) v = normal(gen);
  s.truth_log.resize(n_rows * n_cols);
  for (std::int64_t c = 0; c < n_cols; ++c) {
    const double* x = &s.features[c * 3];
    double bias = 1.0 + 0.8 * x[0] - 0.3 * x[1];
    double q0 = 0.5 * x[1] + 0.2 * x[2], q1 = 0.4 * x[2];
    for (std::int64_t r = 0; r < n_rows; ++r) {
      double v = bias + rb[r] + rf[r * 2] * q0 + rf[r * 2 + 1] * q1;
      s.truth_log[r * n_cols + c] = v;
      if (unif(gen) < fill) {
        s.rows.push_back(r);
        s.cols.push_back(c);
        s.values.push_back(std::exp(v));
      }
    }
  }
  return s;
}

inline cf::Observations observations(const Synthetic& s) {
  return cf::Observations{s.rows.data(), s.cols.data(), s.values.data(), s.values.size()};
}
