// The fold-in's pre-selection of experts (fold_in.h): a cheap score for every fitted row, computed for many rows at a
// time. Rows are stored in blocks of kLanes, parameter-major within a block, so that a block's kLanes values of one
// parameter are contiguous and the scoring keeps the block's sums in vector registers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace cf::detail {

constexpr std::size_t kLanes = 8;  // rows per block

// The rows `rows[population[k] * dim ..]` in blocks: block b, parameter i, row u at (b dim + i) kLanes + u, the last
// block zero-padded.
std::vector<double> to_lanes(const std::vector<double>& rows, const std::vector<std::int64_t>& population, int dim);

// For every row k of `lanes` (dim = e - 1 parameters), with theta = [1, row k]: theta' G theta into quad[k] and
// (G theta)[1] into gsum[k] (G: a symmetric e x e matrix). Both get a multiple of kLanes values (the padding rows
// included). O(e^2 / 2) per row, from the upper triangle of G.
void gram_forms(const std::vector<double>& gram, std::size_t e, const std::vector<double>& lanes,
                std::vector<double>& quad, std::vector<double>& gsum);

}  // namespace cf::detail
