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

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SO3KRATES_PACKED_PRODUCTS 1
#endif

namespace {

#ifdef SO3KRATES_PACKED_PRODUCTS
// AVX2/FMA vectors of float and double for the packed products below.
template <typename T>
struct Simd;
template <>
struct Simd<float> {
    using V = __m256;
    static constexpr int64_t width = 8;
    static V zero() { return _mm256_setzero_ps(); }
    static V load(const float* p) { return _mm256_loadu_ps(p); }
    static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
    static V broadcast(const float* p) { return _mm256_broadcast_ss(p); }
    static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
};
template <>
struct Simd<double> {
    using V = __m256d;
    static constexpr int64_t width = 4;
    static V zero() { return _mm256_setzero_pd(); }
    static V load(const double* p) { return _mm256_loadu_pd(p); }
    static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
    static V broadcast(const double* p) { return _mm256_broadcast_sd(p); }
    static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
};
#endif

// A constant matrix B (K x N), B(k, n) = source[k * k_stride + n * n_stride], ready to multiply
// blocks of rows from the left: C = A B (+ bias per column) (+ C). The weights are the same for
// every block, so they are packed once per call of an operator into panels of kPanel columns
// (K x kPanel each, zero-padded) that a 6 x kPanel register tile streams through; without AVX2/FMA
// the product is an ATen matrix product.
template <typename T>
class PackedMatrix {
   public:
    PackedMatrix(const T* source, int64_t K, int64_t N, int64_t k_stride, int64_t n_stride, const T* bias)
        : K_(K), N_(N), has_bias_(bias != nullptr) {
#ifdef SO3KRATES_PACKED_PRODUCTS
        panels_ = (N + kPanel - 1) / kPanel;
        data_.assign(panels_ * K * kPanel, T(0));
        bias_.assign(panels_ * kPanel, T(0));
        zeros_.assign(kPanel, T(0));
        for (int64_t j = 0; j < panels_; ++j) {
            for (int64_t c = 0; c < kPanel && j * kPanel + c < N; ++c) {
                const int64_t n = j * kPanel + c;
                for (int64_t k = 0; k < K; ++k) data_[(j * K + k) * kPanel + c] = source[k * k_stride + n * n_stride];
                if (bias) bias_[n] = bias[n];
            }
        }
#else
        const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
        matrix_ = at::empty({K, N}, options);
        T* m = matrix_.data_ptr<T>();
        for (int64_t k = 0; k < K; ++k)
            for (int64_t n = 0; n < N; ++n) m[k * N + n] = source[k * k_stride + n * n_stride];
        if (bias) bias_tensor_ = at::from_blob(const_cast<T*>(bias), {N}, options).clone();
#endif
    }

    // C (M x N, row stride ldc) = A (M x K, row stride lda) B [+ bias] [+ C when accumulate].
    void multiply(const T* A, int64_t M, int64_t lda, T* C, int64_t ldc, bool accumulate) const {
#ifdef SO3KRATES_PACKED_PRODUCTS
        using S = Simd<T>;
        using V = typename S::V;
        constexpr int64_t W = S::width;
        const int64_t K = K_;
        for (int64_t j = 0; j < panels_; ++j) {
            const int64_t columns = std::min(kPanel, N_ - j * kPanel);
            const bool full = columns == kPanel;
            const T* panel = data_.data() + j * K * kPanel;
            const T* bias = bias_.data() + j * kPanel;
            for (int64_t i0 = 0; i0 < M; i0 += kRows) {
                const int64_t rows = std::min(kRows, M - i0);
                T* c0 = C + i0 * ldc + j * kPanel;
                // The tile in registers: every index below is a constant after unrolling. Partial tiles
                // (last rows or columns) go through memory.
                const bool direct = full && rows == kRows;
                T tile[kRows * kPanel];
                const T* start = has_bias_ ? bias : zeros_.data();  // every row starts from the bias (or 0)
                int64_t stride = 0;
                if (accumulate && direct) {
                    start = c0;
                    stride = ldc;
                } else if (accumulate) {
                    std::fill(tile, tile + kRows * kPanel, T(0));
                    for (int64_t r = 0; r < rows; ++r)
                        for (int64_t c = 0; c < columns; ++c) tile[r * kPanel + c] = c0[r * ldc + c];
                    start = tile;
                    stride = kPanel;
                }
                const T* a0 = A + i0 * lda;
                const T* a1 = A + (i0 + std::min<int64_t>(1, rows - 1)) * lda;
                const T* a2 = A + (i0 + std::min<int64_t>(2, rows - 1)) * lda;
                const T* a3 = A + (i0 + std::min<int64_t>(3, rows - 1)) * lda;
                const T* a4 = A + (i0 + std::min<int64_t>(4, rows - 1)) * lda;
                const T* a5 = A + (i0 + std::min<int64_t>(5, rows - 1)) * lda;
                V c00 = S::load(start), c01 = S::load(start + W);
                V c10 = S::load(start + stride), c11 = S::load(start + stride + W);
                V c20 = S::load(start + 2 * stride), c21 = S::load(start + 2 * stride + W);
                V c30 = S::load(start + 3 * stride), c31 = S::load(start + 3 * stride + W);
                V c40 = S::load(start + 4 * stride), c41 = S::load(start + 4 * stride + W);
                V c50 = S::load(start + 5 * stride), c51 = S::load(start + 5 * stride + W);
                for (int64_t k = 0; k < K; ++k) {
                    const V b0 = S::load(panel + k * kPanel), b1 = S::load(panel + k * kPanel + W);
                    V x = S::broadcast(a0 + k);
                    c00 = S::fma(x, b0, c00);
                    c01 = S::fma(x, b1, c01);
                    x = S::broadcast(a1 + k);
                    c10 = S::fma(x, b0, c10);
                    c11 = S::fma(x, b1, c11);
                    x = S::broadcast(a2 + k);
                    c20 = S::fma(x, b0, c20);
                    c21 = S::fma(x, b1, c21);
                    x = S::broadcast(a3 + k);
                    c30 = S::fma(x, b0, c30);
                    c31 = S::fma(x, b1, c31);
                    x = S::broadcast(a4 + k);
                    c40 = S::fma(x, b0, c40);
                    c41 = S::fma(x, b1, c41);
                    x = S::broadcast(a5 + k);
                    c50 = S::fma(x, b0, c50);
                    c51 = S::fma(x, b1, c51);
                }
                if (direct) {
                    S::store(c0, c00), S::store(c0 + W, c01);
                    S::store(c0 + ldc, c10), S::store(c0 + ldc + W, c11);
                    S::store(c0 + 2 * ldc, c20), S::store(c0 + 2 * ldc + W, c21);
                    S::store(c0 + 3 * ldc, c30), S::store(c0 + 3 * ldc + W, c31);
                    S::store(c0 + 4 * ldc, c40), S::store(c0 + 4 * ldc + W, c41);
                    S::store(c0 + 5 * ldc, c50), S::store(c0 + 5 * ldc + W, c51);
                } else {
                    S::store(tile, c00), S::store(tile + W, c01);
                    S::store(tile + kPanel, c10), S::store(tile + kPanel + W, c11);
                    S::store(tile + 2 * kPanel, c20), S::store(tile + 2 * kPanel + W, c21);
                    S::store(tile + 3 * kPanel, c30), S::store(tile + 3 * kPanel + W, c31);
                    S::store(tile + 4 * kPanel, c40), S::store(tile + 4 * kPanel + W, c41);
                    S::store(tile + 5 * kPanel, c50), S::store(tile + 5 * kPanel + W, c51);
                    for (int64_t r = 0; r < rows; ++r)
                        for (int64_t c = 0; c < columns; ++c) c0[r * ldc + c] = tile[r * kPanel + c];
                }
            }
        }
#else
        const auto options = matrix_.options();
        const at::Tensor a = at::from_blob(const_cast<T*>(A), {M, K_}, {lda, 1}, options);
        at::Tensor c = at::from_blob(C, {M, N_}, {ldc, 1}, options);
        if (accumulate) {
            c.addmm_(a, matrix_);
        } else {
            at::mm_out(c, a, matrix_);
        }
        if (has_bias_) c.add_(bias_tensor_);
#endif
    }

   private:
#ifdef SO3KRATES_PACKED_PRODUCTS
    static constexpr int64_t kRows = 6;
    static constexpr int64_t kPanel = 2 * Simd<T>::width;
    int64_t panels_ = 0;
    std::vector<T> data_, bias_, zeros_;
#else
    at::Tensor matrix_, bias_tensor_;
#endif
    int64_t K_, N_;
    bool has_bias_;
};

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
    const T* w_in = in_weight.data_ptr<T>();
    const T* w_out = out_weight.data_ptr<T>();
    const T* bias = out_bias.data_ptr<T>();
    std::vector<PackedMatrix<T>> hidden_layers, output_layers;
    for (int64_t n = 0; n < N; ++n) {
        // a = [e; 1] W_in_n^T and w = silu(a) W_out_n^T + b_n
        hidden_layers.emplace_back(w_in + n * F * (K + 1), K + 1, F, 1, K + 1, nullptr);
        output_layers.emplace_back(w_out + n * F * F, F, F, 1, F, bias + n * F);
    }
    T* filter = filters.data_ptr<T>();
    T* slope = slopes.data_ptr<T>();
    at::parallel_for(0, blocks, kBlocksPerTask, [&](int64_t begin, int64_t end) {
        at::Tensor pre_buffer = at::empty({kBlock, F}, distances.options());
        at::Tensor sigma_buffer = at::empty({kBlock, F}, distances.options());
        for (int64_t b = begin; b < end; ++b) {
            const int64_t p0 = b * kBlock, rows = std::min(kBlock, P - p0);
            const at::Tensor basis = block_basis<T>(d + p0, rows, mu, K, static_cast<T>(beta), distances.options());
            at::Tensor pre = pre_buffer.narrow(0, 0, rows), sigma = sigma_buffer.narrow(0, 0, rows);
            T* a = pre.data_ptr<T>();
            const T* s = sigma.data_ptr<T>();
            for (int64_t n = 0; n < N; ++n) {
                hidden_layers[n].multiply(basis.data_ptr<T>(), rows, K + 1, a, F, false);
                at::sigmoid_out(sigma, pre);
                T* g = slope + (n * P + p0) * F;
#pragma omp simd
                for (int64_t i = 0; i < rows * F; ++i) {
                    const T x = a[i], si = s[i];
                    g[i] = si * (T(1) + x * (T(1) - si));  // silu'(x)
                    a[i] = x * si;                         // silu(x), in place
                }
                output_layers[n].multiply(a, rows, F, filter + (n * P + p0) * F, F, false);
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
    const T* w_in = in_weight.data_ptr<T>();
    const T* w_out = out_weight.data_ptr<T>();
    const T* slope = slopes.data_ptr<T>();
    T* out = distance_gradient.data_ptr<T>();
    const T factor = static_cast<T>(-2.0 * beta);
    std::vector<PackedMatrix<T>> output_layers, hidden_layers;
    for (int64_t n = 0; n < N; ++n) {
        // dE/dh = dE/dw W_out_n, then dE/de = dE/da W_in_n (the bias column dropped)
        output_layers.emplace_back(w_out + n * F * F, F, F, F, 1, nullptr);
        hidden_layers.emplace_back(w_in + n * F * (K + 1), F, K, K + 1, 1, nullptr);
    }
    at::parallel_for(0, blocks, kBlocksPerTask, [&](int64_t begin, int64_t end) {
        std::vector<T> hidden_gradient(kBlock * F), basis_gradient(kBlock * K);
        for (int64_t b = begin; b < end; ++b) {
            const int64_t p0 = b * kBlock, rows = std::min(kBlock, P - p0);
            T* g = hidden_gradient.data();
            T* ge = basis_gradient.data();
            for (int64_t n = 0; n < N; ++n) {
                output_layers[n].multiply(filter_gradients[n].data_ptr<T>() + p0 * F, rows, F, g, F, false);
                const T* s = slope + (n * P + p0) * F;
#pragma omp simd
                for (int64_t i = 0; i < rows * F; ++i) g[i] *= s[i];
                hidden_layers[n].multiply(g, rows, F, ge, K, n > 0);
            }
            const at::Tensor basis = block_basis<T>(d + p0, rows, mu, K, static_cast<T>(beta), distances.options());
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
