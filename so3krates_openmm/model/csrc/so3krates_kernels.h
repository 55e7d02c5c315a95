// The operators of the fused fast path as C++ functions, for the whole-model operator (model.cpp);
// each is also registered as torch.ops.so3krates.<name> (pair_attention.cpp, filters.cpp), whose
// Python spec is the method of the same name of FastSO3krates in so3krates_openmm/model/fast.py.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>

namespace so3krates {

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
