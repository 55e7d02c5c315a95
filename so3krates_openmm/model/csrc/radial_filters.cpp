// Radial parts of all 2T filter networks and their backward, cache-blocked over pairs, on the CPU.
//
// Registered as TorchScript operators torch.ops.so3krates.radial_forward / radial_backward; the
// Python spec of both is FastSO3krates.radial_forward / radial_backward in
// so3krates_openmm/model/fast.py (kernels="torch"). The radial filters depend only on the pair
// distances, so one pass over blocks of pairs computes, for every filter of every layer,
//     e_k(d)  = exp(-beta (exp(-d) - mu_k)^2)                 (PhysNet basis, K functions)
//     a       = W_in [e; 1]                                   (2T F hidden pre-activations)
//     w_n     = W_out_n silu(a_n) + b_n                       (filter n, F outputs)
// and keeps silu'(a) for the backward pass, which goes from the filter gradients dE/dw_n back to
// dE/dd per pair. A block's basis, hidden features and their gradients stay in the cache; only the
// filters, the slopes silu'(a) and the distance gradient are written to memory. The products are
// ATen matrix products on the blocks (MKL/oneDNN); blocks run in parallel, each product on one thread.
//
// Layouts (row-major, contiguous): distances (P,); centres (K,) = mu_k; in_weight (2T F, K + 1) with
// the bias as last column; out_weight (2T, F, F); out_bias (2T, F); filters (2T, P, F);
// slopes silu'(a) (2T, P, F); filter gradients: 2T tensors (P, F).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

namespace {

// Pairs per block: a block's hidden features of one filter (B x F) stay in the L2 cache, and the
// products have enough rows to run near the BLAS peak.
constexpr int64_t kBlock = 256;
// Blocks per parallel task: fewer pairs run on one thread (waking an OpenMP thread costs more).
constexpr int64_t kBlocksPerTask = 2;

void check_radial(const at::Tensor& distances, const at::Tensor& centres, const at::Tensor& in_weight,
                  const at::Tensor& out_weight) {
    TORCH_CHECK(distances.dim() == 1, "so3krates: distances must be (P,)");
    TORCH_CHECK(centres.dim() == 1 && in_weight.dim() == 2 && in_weight.size(1) == centres.size(0) + 1,
                "so3krates: in_weight must be (2T F, K + 1) for K basis centres");
    TORCH_CHECK(out_weight.dim() == 3 && out_weight.size(1) == out_weight.size(2) &&
                    in_weight.size(0) == out_weight.size(0) * out_weight.size(1),
                "so3krates: out_weight must be (2T, F, F) with in_weight (2T F, K + 1)");
    for (const at::Tensor* t : {&centres, &in_weight, &out_weight}) {
        TORCH_CHECK(t->scalar_type() == distances.scalar_type(), "so3krates: all float inputs must have one dtype");
    }
}

// The basis [e_k(d); 1] (rows, K + 1) of the distances d[0:rows].
template <typename T>
at::Tensor block_basis(const T* d, int64_t rows, const T* mu, int64_t K, T beta, const at::TensorOptions& options) {
    at::Tensor basis = at::empty({rows, K + 1}, options);
    T* e = basis.data_ptr<T>();
    for (int64_t r = 0; r < rows; ++r) {
        const T decay = std::exp(-d[r]);
        for (int64_t k = 0; k < K; ++k) {
            const T offset = decay - mu[k];
            e[r * (K + 1) + k] = -beta * offset * offset;
        }
        e[r * (K + 1) + K] = 0;  // exp(0) = 1: the bias column
    }
    return basis.exp_();
}

template <typename T>
void forward_blocks(const at::Tensor& distances, const at::Tensor& centres, double beta, const at::Tensor& in_weight,
                    const at::Tensor& out_weight, const at::Tensor& out_bias, at::Tensor& filters, at::Tensor& slopes) {
    const int64_t P = distances.size(0), K = centres.size(0), N = out_weight.size(0), F = out_weight.size(1);
    const int64_t blocks = (P + kBlock - 1) / kBlock;
    const T* d = distances.data_ptr<T>();
    const T* mu = centres.data_ptr<T>();
    const T* bias = out_bias.data_ptr<T>();
    at::parallel_for(0, blocks, kBlocksPerTask, [&](int64_t begin, int64_t end) {
        at::Tensor pre_buffer = at::empty({kBlock, F}, distances.options());
        at::Tensor sigma_buffer = at::empty({kBlock, F}, distances.options());
        for (int64_t b = begin; b < end; ++b) {
            const int64_t p0 = b * kBlock, rows = std::min(kBlock, P - p0);
            const at::Tensor basis = block_basis<T>(d + p0, rows, mu, K, static_cast<T>(beta), distances.options());
            at::Tensor pre = pre_buffer.narrow(0, 0, rows), sigma = sigma_buffer.narrow(0, 0, rows);
            for (int64_t n = 0; n < N; ++n) {
                at::mm_out(pre, basis, in_weight.narrow(0, n * F, F).t());  // (rows, F)
                at::sigmoid_out(sigma, pre);
                T* a = pre.data_ptr<T>();
                const T* s = sigma.data_ptr<T>();
                T* g = slopes.data_ptr<T>() + (n * P + p0) * F;
#pragma omp simd
                for (int64_t i = 0; i < rows * F; ++i) {
                    const T x = a[i], si = s[i];
                    g[i] = si * (T(1) + x * (T(1) - si));  // silu'(x)
                    a[i] = x * si;                         // silu(x), in place
                }
                at::Tensor out = filters[n].narrow(0, p0, rows);
                at::mm_out(out, pre, out_weight[n].t());
                T* w = out.data_ptr<T>();
                const T* bn = bias + n * F;
                for (int64_t r = 0; r < rows; ++r) {
#pragma omp simd
                    for (int64_t f = 0; f < F; ++f) w[r * F + f] += bn[f];
                }
            }
        }
    });
}

std::tuple<at::Tensor, at::Tensor> radial_forward(const at::Tensor& distances_in, const at::Tensor& centres_in,
                                                  double beta, const at::Tensor& in_weight_in,
                                                  const at::Tensor& out_weight_in, const at::Tensor& out_bias_in) {
    const at::Tensor distances = distances_in.contiguous(), centres = centres_in.contiguous(),
                     in_weight = in_weight_in.contiguous(), out_weight = out_weight_in.contiguous(),
                     out_bias = out_bias_in.contiguous();
    check_radial(distances, centres, in_weight, out_weight);
    const int64_t P = distances.size(0), N = out_weight.size(0), F = out_weight.size(1);
    TORCH_CHECK(out_bias.sizes() == at::IntArrayRef({N, F}) && out_bias.scalar_type() == distances.scalar_type(),
                "so3krates: out_bias must be (2T, F)");
    at::Tensor filters = at::empty({N, P, F}, distances.options());
    at::Tensor slopes = at::empty({N, P, F}, distances.options());
    AT_DISPATCH_FLOATING_TYPES(distances.scalar_type(), "so3krates_radial_forward", [&] {
        forward_blocks<scalar_t>(distances, centres, beta, in_weight, out_weight, out_bias, filters, slopes);
    });
    return {filters, slopes};
}

template <typename T>
void backward_blocks(const std::vector<at::Tensor>& filter_gradients, const at::Tensor& distances,
                     const at::Tensor& centres, double beta, const at::Tensor& in_weight,
                     const at::Tensor& out_weight, const at::Tensor& slopes, at::Tensor& distance_gradient) {
    const int64_t P = distances.size(0), K = centres.size(0), N = out_weight.size(0), F = out_weight.size(1);
    const int64_t blocks = (P + kBlock - 1) / kBlock;
    const T* d = distances.data_ptr<T>();
    const T* mu = centres.data_ptr<T>();
    T* out = distance_gradient.data_ptr<T>();
    const T factor = static_cast<T>(-2.0 * beta);
    at::parallel_for(0, blocks, kBlocksPerTask, [&](int64_t begin, int64_t end) {
        at::Tensor hidden_buffer = at::empty({kBlock, F}, distances.options());
        at::Tensor basis_buffer = at::empty({kBlock, K}, distances.options());
        for (int64_t b = begin; b < end; ++b) {
            const int64_t p0 = b * kBlock, rows = std::min(kBlock, P - p0);
            at::Tensor hidden_gradient = hidden_buffer.narrow(0, 0, rows);
            at::Tensor basis_gradient = basis_buffer.narrow(0, 0, rows);  // (rows, K)
            for (int64_t n = 0; n < N; ++n) {
                at::mm_out(hidden_gradient, filter_gradients[n].narrow(0, p0, rows), out_weight[n]);
                T* g = hidden_gradient.data_ptr<T>();
                const T* s = slopes.data_ptr<T>() + (n * P + p0) * F;
#pragma omp simd
                for (int64_t i = 0; i < rows * F; ++i) g[i] *= s[i];
                const at::Tensor basis_weight = in_weight.narrow(0, n * F, F).narrow(1, 0, K);  // bias column dropped
                if (n == 0) {
                    at::mm_out(basis_gradient, hidden_gradient, basis_weight);
                } else {
                    basis_gradient.addmm_(hidden_gradient, basis_weight);
                }
            }
            const at::Tensor basis = block_basis<T>(d + p0, rows, mu, K, static_cast<T>(beta), distances.options());
            const T* ge = basis_gradient.data_ptr<T>();
            const T* e = basis.data_ptr<T>();
            for (int64_t r = 0; r < rows; ++r) {
                const T decay = std::exp(-d[p0 + r]);
                T sum = 0;
                for (int64_t k = 0; k < K; ++k) sum += ge[r * K + k] * e[r * (K + 1) + k] * (decay - mu[k]);
                // d e_k / d d = e_k (-2 beta) (exp(-d) - mu_k) (-exp(-d))
                out[p0 + r] = sum * factor * (-decay);
            }
        }
    });
}

at::Tensor radial_backward(at::TensorList filter_gradients_in, const at::Tensor& distances_in,
                           const at::Tensor& centres_in, double beta, const at::Tensor& in_weight_in,
                           const at::Tensor& out_weight_in, const at::Tensor& slopes_in) {
    const at::Tensor distances = distances_in.contiguous(), centres = centres_in.contiguous(),
                     in_weight = in_weight_in.contiguous(), out_weight = out_weight_in.contiguous(),
                     slopes = slopes_in.contiguous();
    check_radial(distances, centres, in_weight, out_weight);
    const int64_t P = distances.size(0), N = out_weight.size(0), F = out_weight.size(1);
    TORCH_CHECK(static_cast<int64_t>(filter_gradients_in.size()) == N,
                "so3krates: one filter gradient per filter (2T) is needed");
    std::vector<at::Tensor> filter_gradients;
    for (const at::Tensor& gradient : filter_gradients_in) {
        TORCH_CHECK(gradient.sizes() == at::IntArrayRef({P, F}) && gradient.scalar_type() == distances.scalar_type(),
                    "so3krates: filter gradients must be (P, F) each");
        filter_gradients.push_back(gradient.contiguous());
    }
    TORCH_CHECK(slopes.sizes() == at::IntArrayRef({N, P, F}) && slopes.scalar_type() == distances.scalar_type(),
                "so3krates: slopes must be (2T, P, F)");
    at::Tensor distance_gradient = at::empty({P}, distances.options());
    AT_DISPATCH_FLOATING_TYPES(distances.scalar_type(), "so3krates_radial_backward", [&] {
        backward_blocks<scalar_t>(filter_gradients, distances, centres, beta, in_weight, out_weight, slopes,
                                  distance_gradient);
    });
    return distance_gradient;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(so3krates, m) {
    m.def("radial_forward(Tensor distances, Tensor centres, float beta, Tensor in_weight, Tensor out_weight, "
          "Tensor out_bias) -> (Tensor, Tensor)");
    m.def("radial_backward(Tensor[] filter_gradients, Tensor distances, Tensor centres, float beta, "
          "Tensor in_weight, Tensor out_weight, Tensor slopes) -> Tensor");
}

TORCH_LIBRARY_IMPL(so3krates, CPU, m) {
    m.impl("radial_forward", &radial_forward);
    m.impl("radial_backward", &radial_backward);
}
