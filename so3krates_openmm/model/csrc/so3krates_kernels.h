// The operators of the fused fast path as C++ functions, for the whole-model operator (model.cpp);
// each is also registered as torch.ops.so3krates.<name> (pair_attention.cpp, filters.cpp), whose
// Python spec is the method of the same name of FastSO3krates in so3krates_openmm/model/fast.py.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

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

// Per-task accumulation buffers (tasks, rows, columns) of the loops over pairs that scatter onto atoms:
// each task zeroes and fills its own (`local`, inside at::parallel_for), `sum` adds those that were
// used, without ATen's parallel fill and sum (each another wake-up of the threads).
class TaskBuffers {
   public:
    TaskBuffers(int64_t tasks, int64_t rows, int64_t columns, const at::TensorOptions& options)
        : buffers_(at::empty({tasks, rows, columns}, options)), size_(rows * columns), used_(tasks, 0) {}

    // The calling task's buffer, zeroed.
    template <typename T>
    T* local() {
        const int64_t task = at::get_thread_num();
        TORCH_CHECK(task < static_cast<int64_t>(used_.size()), "so3krates: more parallel tasks than buffers");
        used_[task] = 1;
        T* data = buffers_.data_ptr<T>() + task * size_;
        std::fill(data, data + size_, T(0));
        return data;
    }

    // The sum (rows, columns) of the buffers of the tasks that ran (zero if none did).
    template <typename T>
    at::Tensor sum() const {
        at::Tensor result;
        for (size_t task = 0; task < used_.size(); ++task) {
            if (!used_[task]) continue;
            if (!result.defined()) {
                result = buffers_[task];
                continue;
            }
            T* __restrict__ out = result.data_ptr<T>();
            const T* __restrict__ in = buffers_.data_ptr<T>() + task * size_;
#pragma omp simd
            for (int64_t k = 0; k < size_; ++k) out[k] += in[k];
        }
        return result.defined() ? result : at::zeros(buffers_.sizes().slice(1), buffers_.options());
    }

   private:
    at::Tensor buffers_;
    int64_t size_;
    std::vector<char> used_;
};

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
