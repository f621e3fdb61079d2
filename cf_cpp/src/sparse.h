// Compressed sparse storage of the observed log values, by row and by column, plus input validation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cf_cpp/model.h"

namespace cf::detail {

struct Compressed {
  std::vector<std::int64_t> ptr;    // n_major + 1 offsets
  std::vector<std::int64_t> index;  // minor index per entry
  std::vector<double> value;        // log value per entry
};

// A value for an error message (%g: "-1e-09", not std::to_string's "-0.000000").
std::string format_value(double v);

// Throws InvalidInput unless 0 < n_rows, n_cols <= kMaxDim, all indices are in range and all values are finite and
// > 0.
void validate(const Observations& obs, std::int64_t n_rows, std::int64_t n_cols);

// Stable counting sort by major index of the entries (major[i], minor[i]) -> logv[i]. The indices were validated,
// but the caller's arrays may change during the call: both are checked again where they are used (InvalidInput).
Compressed compress(const std::int64_t* major, const std::int64_t* minor, const double* logv, std::size_t n,
                    std::int64_t n_major, std::int64_t n_minor);

struct Storage {
  Compressed by_row, by_col;
};

// The same entries by minor index, each minor's by major index, an index given more than once by value.
Compressed transpose(const Compressed& by_major, std::int64_t n_minor);

// The observations (validated) in log space, by row (each row's entries by column) and by column (each column's by
// row), whatever order they came in: a fit does not depend on it (the kernel residual's held-out fifth of a row, chosen
// by position, had). The logs and the sorts run on up to `threads` threads (the two orders at once).
Storage compress_both(const Observations& obs, std::int64_t n_rows, std::int64_t n_cols, int threads);

}  // namespace cf::detail
