// The operators of the fused fast path as C++ functions, for the whole-model operator (model.cpp);
// each is also registered as torch.ops.so3krates.<name> (pair_attention.cpp, filters.cpp), whose
// Python spec is the method of the same name of FastSO3krates in so3krates_openmm/model/fast.py.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

namespace so3krates {

// How the operators' loops over pairs are split between threads. Waking a sleeping OpenMP thread
// (OMP_WAIT_POLICY=PASSIVE) costs about as much as a few dozen pairs of work, so a task gets at least
// kMinPairsPerTask pairs; above that every thread gets an equal share (42 atoms, 423 pairs: two tasks).
constexpr int64_t kMinPairsPerTask = 128;

// Number of parallel tasks for `pairs` pairs: 1 to the number of threads.
inline int64_t pair_tasks(int64_t pairs) {
    return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), pairs / kMinPairsPerTask));
}

// Grain of at::parallel_for(0, pairs, grain, ...) that makes pair_tasks(pairs) equal tasks.
inline int64_t pair_grain(int64_t pairs) {
    const int64_t tasks = pair_tasks(pairs);
    return std::max<int64_t>(1, (pairs + tasks - 1) / tasks);
}

// Blocks of at most max_rows consecutive pairs, as many in each task: `count` blocks of `rows` pairs
// (the last one shorter), run by at::parallel_for(0, count, grain, ...).
struct PairBlocks {
    int64_t rows, count, grain;
};

inline PairBlocks pair_blocks(int64_t pairs, int64_t max_rows) {
    if (pairs == 0) return {max_rows, 0, 1};
    const int64_t tasks = pair_tasks(pairs);
    const int64_t count = ((pairs + max_rows - 1) / max_rows + tasks - 1) / tasks * tasks;
    const int64_t rows = (pairs + count - 1) / count, blocks = (pairs + rows - 1) / rows;
    return {rows, blocks, (blocks + tasks - 1) / tasks};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pair_forward(
    const at::Tensor& projections, const at::Tensor& feature_filters, const at::Tensor& euclidean_filters,
    const at::Tensor& cutoff, const at::Tensor& harmonics, const at::Tensor& parity,
    const at::Tensor& component_degree, const at::Tensor& first, const at::Tensor& second, int64_t heads,
    int64_t degrees);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> pair_backward(
    const at::Tensor& update_grad, const at::Tensor& ev_update_grad, const at::Tensor& projections,
    const at::Tensor& feature_filters, const at::Tensor& euclidean_filters, const at::Tensor& cutoff,
    const at::Tensor& harmonics, const at::Tensor& parity, const at::Tensor& component_degree,
    const at::Tensor& scores, const at::Tensor& first, const at::Tensor& second, int64_t heads, int64_t degrees);

std::tuple<at::Tensor, at::Tensor> radial_forward(const at::Tensor& distances, const at::Tensor& centres, double beta,
                                                  const at::Tensor& in_weight, const at::Tensor& out_weight,
                                                  const at::Tensor& out_bias);

at::Tensor radial_backward(at::TensorList filter_gradients, const at::Tensor& distances, const at::Tensor& centres,
                           double beta, const at::Tensor& in_weight, const at::Tensor& out_weight,
                           const at::Tensor& slopes);

std::tuple<at::Tensor, at::Tensor> spherical_forward(
    const at::Tensor& chi, const at::Tensor& first, const at::Tensor& second, const at::Tensor& contraction,
    const at::Tensor& in_weight, const at::Tensor& in_bias, const at::Tensor& feature_out,
    const at::Tensor& euclidean_out, at::Tensor& feature_filters, at::Tensor& euclidean_filters);

at::Tensor spherical_backward(const at::Tensor& feature_gradient, const at::Tensor& euclidean_gradient,
                              const at::Tensor& differences, const at::Tensor& slopes, const at::Tensor& contraction,
                              const at::Tensor& in_weight, const at::Tensor& feature_out,
                              const at::Tensor& euclidean_out, const at::Tensor& first, const at::Tensor& second,
                              int64_t atoms);

}  // namespace so3krates
