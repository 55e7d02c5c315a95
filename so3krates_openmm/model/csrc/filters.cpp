// The filter networks of all layers and their backward, cache-blocked over pairs, on the CPU.
//
// Registered as TorchScript operators torch.ops.so3krates.radial_forward / radial_backward and
// spherical_forward / spherical_backward; the Python spec of each is the method of the same name of
// FastSO3krates in so3krates_openmm/model/fast.py (kernels="torch").
//
// Radial parts: they depend only on the pair distances, so one pass over blocks of pairs computes,
// for every filter of every layer,
//     e_k(d)  = exp(-beta (exp(-d) - mu_k)^2)                 (PhysNet basis, K functions)
//     a       = W_in [e; 1]                                   (2T F hidden pre-activations)
//     w_n     = W_out_n silu(a_n) + b_n                       (filter n, F outputs)
// and keeps silu'(a) for the backward pass, which goes from the filter gradients dE/dw_n back to
// dE/dd per pair. Spherical parts (layers after the first, where chi != 0): per pair
//     delta   = C^T (chi_j - chi_i)^2                         (n_D per-degree invariants)
//     w      += W_sph_out silu(W_sph_in delta + b_sph_in)     (both filters of the layer)
// and back to dE/dchi. A block's hidden features and their gradients stay in the cache; the
// products run in AVX2/FMA register tiles over weights packed once per call. Blocks run in parallel.
//
// Layouts (row-major, contiguous): distances (P,); centres (K,) = mu_k; in_weight (2T F, K + 1) with
// the bias as last column; out_weight (2T, F, F); out_bias (2T, F); filters (2T, P, F);
// slopes silu'(a) (2T, P, F); filter gradients: 2T tensors (P, F). Spherical: chi (N, m);
// contraction (m, n_D); sph_in_weight (2S, n_D) and sph_in_bias (2S,) of both filters
// (S = F/4 each); feature_out, euclidean_out (F, S); differences (P, m); sph_slopes (P, 2S).
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

// Spherical parts of the two filters of one layer, added to the filters in place; returns the pair
// differences chi_j - chi_i (P, m) and silu' of the hidden features (P, 2S) for the backward pass.
template <typename T>
void spherical_forward_blocks(const at::Tensor& chi, const at::Tensor& first, const at::Tensor& second,
                              const at::Tensor& contraction, const at::Tensor& in_weight, const at::Tensor& in_bias,
                              const at::Tensor& feature_out, const at::Tensor& euclidean_out,
                              at::Tensor& feature_filters, at::Tensor& euclidean_filters, at::Tensor& differences,
                              at::Tensor& slopes) {
    const int64_t P = first.size(0), M = chi.size(1), D = contraction.size(1), S2 = in_weight.size(0);
    const int64_t S = S2 / 2, F = feature_out.size(0);
    const int64_t blocks = (P + kBlock - 1) / kBlock;
    const T* x = chi.data_ptr<T>();
    const T* c = contraction.data_ptr<T>();
    const T* w_in = in_weight.data_ptr<T>();
    const T* b_in = in_bias.data_ptr<T>();
    const int64_t* fi = first.data_ptr<int64_t>();
    const int64_t* se = second.data_ptr<int64_t>();
    // w += h_feature W_f^T and h_euclidean W_e^T, (B x S) (S x F)
    const PackedMatrix<T> feature_layer(feature_out.data_ptr<T>(), S, F, 1, S, nullptr);
    const PackedMatrix<T> euclidean_layer(euclidean_out.data_ptr<T>(), S, F, 1, S, nullptr);
    T* w_f = feature_filters.data_ptr<T>();
    T* w_e = euclidean_filters.data_ptr<T>();
    T* diff = differences.data_ptr<T>();
    T* slope = slopes.data_ptr<T>();
    at::parallel_for(0, blocks, kBlocksPerTask, [&](int64_t begin, int64_t end) {
        at::Tensor pre_buffer = at::empty({kBlock, S2}, chi.options());
        at::Tensor sigma_buffer = at::empty({kBlock, S2}, chi.options());
        std::vector<T> invariants(D);
        for (int64_t b = begin; b < end; ++b) {
            const int64_t p0 = b * kBlock, rows = std::min(kBlock, P - p0);
            at::Tensor pre = pre_buffer.narrow(0, 0, rows), sigma = sigma_buffer.narrow(0, 0, rows);
            T* a = pre.data_ptr<T>();
            for (int64_t r = 0; r < rows; ++r) {
                const int64_t p = p0 + r;
                T* dp = diff + p * M;
                for (int64_t m = 0; m < M; ++m) dp[m] = x[se[p] * M + m] - x[fi[p] * M + m];
                for (int64_t l = 0; l < D; ++l) {
                    T sum = 0;
                    for (int64_t m = 0; m < M; ++m) sum += dp[m] * dp[m] * c[m * D + l];
                    invariants[l] = sum;
                }
                for (int64_t o = 0; o < S2; ++o) {
                    T sum = b_in[o];
                    for (int64_t l = 0; l < D; ++l) sum += invariants[l] * w_in[o * D + l];
                    a[r * S2 + o] = sum;
                }
            }
            at::sigmoid_out(sigma, pre);
            const T* sg = sigma.data_ptr<T>();
            T* g = slope + p0 * S2;
#pragma omp simd
            for (int64_t i = 0; i < rows * S2; ++i) {
                const T v = a[i], si = sg[i];
                g[i] = si * (T(1) + v * (T(1) - si));  // silu'(v)
                a[i] = v * si;                         // silu(v), in place
            }
            feature_layer.multiply(a, rows, S2, w_f + p0 * F, F, true);
            euclidean_layer.multiply(a + S, rows, S2, w_e + p0 * F, F, true);
        }
    });
}

std::tuple<at::Tensor, at::Tensor> spherical_forward(
    const at::Tensor& chi_in, const at::Tensor& first_in, const at::Tensor& second_in, const at::Tensor& contraction_in,
    const at::Tensor& in_weight_in, const at::Tensor& in_bias_in, const at::Tensor& feature_out_in,
    const at::Tensor& euclidean_out_in, at::Tensor& feature_filters, at::Tensor& euclidean_filters) {
    const at::Tensor chi = chi_in.contiguous(), first = first_in.contiguous(), second = second_in.contiguous(),
                     contraction = contraction_in.contiguous(), in_weight = in_weight_in.contiguous(),
                     in_bias = in_bias_in.contiguous(), feature_out = feature_out_in.contiguous(),
                     euclidean_out = euclidean_out_in.contiguous();
    const int64_t P = first.size(0), M = chi.size(1), F = feature_out.size(0), S = feature_out.size(1);
    TORCH_CHECK(chi.dim() == 2 && contraction.dim() == 2 && contraction.size(0) == M,
                "so3krates: contraction must be (m, n_D) for chi (N, m)");
    TORCH_CHECK(in_weight.dim() == 2 && in_weight.size(0) == 2 * S && in_weight.size(1) == contraction.size(1) &&
                    in_bias.numel() == 2 * S && euclidean_out.sizes() == feature_out.sizes(),
                "so3krates: spherical weights must be (2S, n_D), (2S,) and (F, S) twice");
    TORCH_CHECK(second.numel() == P && first.scalar_type() == at::kLong && second.scalar_type() == at::kLong,
                "so3krates: first and second must be int64 of one length");
    for (const at::Tensor* t : {&feature_filters, &euclidean_filters}) {
        TORCH_CHECK(t->is_contiguous() && t->sizes() == at::IntArrayRef({P, F}),
                    "so3krates: filters must be contiguous (P, F)");
    }
    const std::initializer_list<const at::Tensor*> floats{&contraction,   &in_weight,       &in_bias,          &feature_out,
                                                          &euclidean_out, &feature_filters, &euclidean_filters};
    for (const at::Tensor* t : floats) {
        TORCH_CHECK(t->scalar_type() == chi.scalar_type(), "so3krates: all float inputs must have one dtype");
    }
    at::Tensor differences = at::empty({P, M}, chi.options());
    at::Tensor slopes = at::empty({P, 2 * S}, chi.options());
    AT_DISPATCH_FLOATING_TYPES(chi.scalar_type(), "so3krates_spherical_forward", [&] {
        spherical_forward_blocks<scalar_t>(chi, first, second, contraction, in_weight, in_bias, feature_out,
                                           euclidean_out, feature_filters, euclidean_filters, differences, slopes);
    });
    return {differences, slopes};
}

// Backward of spherical_forward: dE/dchi (N, m) from the gradients of the two filters (P, F).
template <typename T>
void spherical_backward_blocks(const at::Tensor& feature_gradient, const at::Tensor& euclidean_gradient,
                               const at::Tensor& differences, const at::Tensor& slopes,
                               const at::Tensor& contraction, const at::Tensor& in_weight,
                               const at::Tensor& feature_out, const at::Tensor& euclidean_out,
                               const at::Tensor& first, const at::Tensor& second, at::Tensor& buffers) {
    const int64_t P = first.size(0), M = differences.size(1), D = contraction.size(1), S2 = in_weight.size(0);
    const int64_t S = S2 / 2, F = feature_out.size(0), atoms = buffers.size(1);
    const int64_t blocks = (P + kBlock - 1) / kBlock;
    const T* c = contraction.data_ptr<T>();
    const T* w_in = in_weight.data_ptr<T>();
    const T* diff = differences.data_ptr<T>();
    const T* slope = slopes.data_ptr<T>();
    const T* g_f = feature_gradient.data_ptr<T>();
    const T* g_e = euclidean_gradient.data_ptr<T>();
    const int64_t* fi = first.data_ptr<int64_t>();
    const int64_t* se = second.data_ptr<int64_t>();
    // dE/dh = dE/dw W (B x F) (F x S)
    const PackedMatrix<T> feature_layer(feature_out.data_ptr<T>(), F, S, S, 1, nullptr);
    const PackedMatrix<T> euclidean_layer(euclidean_out.data_ptr<T>(), F, S, S, 1, nullptr);
    at::parallel_for(0, blocks, kBlocksPerTask, [&](int64_t begin, int64_t end) {
        T* out = buffers.data_ptr<T>() + at::get_thread_num() * atoms * M;
        std::vector<T> hidden(kBlock * S2), invariants(D), weights(M);
        for (int64_t b = begin; b < end; ++b) {
            const int64_t p0 = b * kBlock, rows = std::min(kBlock, P - p0);
            T* h = hidden.data();
            feature_layer.multiply(g_f + p0 * F, rows, F, h, S2, false);
            euclidean_layer.multiply(g_e + p0 * F, rows, F, h + S, S2, false);
            for (int64_t r = 0; r < rows; ++r) {
                const int64_t p = p0 + r;
                const T* g = h + r * S2;
                const T* s = slope + p * S2;
                for (int64_t l = 0; l < D; ++l) invariants[l] = 0;
                for (int64_t o = 0; o < S2; ++o) {
                    const T ga = g[o] * s[o];
                    for (int64_t l = 0; l < D; ++l) invariants[l] += ga * w_in[o * D + l];
                }
                const T* dp = diff + p * M;
                T* oi = out + fi[p] * M;
                T* oj = out + se[p] * M;
                for (int64_t m = 0; m < M; ++m) {
                    T sum = 0;
                    for (int64_t l = 0; l < D; ++l) sum += invariants[l] * c[m * D + l];
                    const T gd = T(2) * dp[m] * sum;
                    oj[m] += gd;
                    oi[m] -= gd;
                }
            }
        }
    });
}

at::Tensor spherical_backward(const at::Tensor& feature_gradient_in, const at::Tensor& euclidean_gradient_in,
                              const at::Tensor& differences_in, const at::Tensor& slopes_in,
                              const at::Tensor& contraction_in, const at::Tensor& in_weight_in,
                              const at::Tensor& feature_out_in, const at::Tensor& euclidean_out_in,
                              const at::Tensor& first_in, const at::Tensor& second_in, int64_t atoms) {
    const at::Tensor feature_gradient = feature_gradient_in.contiguous(),
                     euclidean_gradient = euclidean_gradient_in.contiguous(), differences = differences_in.contiguous(),
                     slopes = slopes_in.contiguous(), contraction = contraction_in.contiguous(),
                     in_weight = in_weight_in.contiguous(), feature_out = feature_out_in.contiguous(),
                     euclidean_out = euclidean_out_in.contiguous(), first = first_in.contiguous(),
                     second = second_in.contiguous();
    const int64_t P = first.size(0), M = differences.size(1), F = feature_out.size(0), S = feature_out.size(1);
    TORCH_CHECK(feature_gradient.sizes() == at::IntArrayRef({P, F}) && euclidean_gradient.sizes() == feature_gradient.sizes(),
                "so3krates: filter gradients must be (P, F)");
    TORCH_CHECK(differences.size(0) == P && slopes.sizes() == at::IntArrayRef({P, 2 * S}) && second.numel() == P &&
                    contraction.size(0) == M && in_weight.size(0) == 2 * S && in_weight.size(1) == contraction.size(1),
                "so3krates: spherical backward inputs disagree in shape");
    for (const at::Tensor* t : {&euclidean_gradient, &differences, &slopes, &contraction, &in_weight, &feature_out,
                                &euclidean_out}) {
        TORCH_CHECK(t->scalar_type() == feature_gradient.scalar_type(), "so3krates: all float inputs must have one dtype");
    }
    at::Tensor buffers = at::zeros({at::get_num_threads(), atoms, M}, feature_gradient.options());
    AT_DISPATCH_FLOATING_TYPES(feature_gradient.scalar_type(), "so3krates_spherical_backward", [&] {
        spherical_backward_blocks<scalar_t>(feature_gradient, euclidean_gradient, differences, slopes, contraction,
                                            in_weight, feature_out, euclidean_out, first, second, buffers);
    });
    return buffers.size(0) == 1 ? buffers[0] : buffers.sum(0);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(so3krates, m) {
    m.def("radial_forward(Tensor distances, Tensor centres, float beta, Tensor in_weight, Tensor out_weight, "
          "Tensor out_bias) -> (Tensor, Tensor)");
    m.def("radial_backward(Tensor[] filter_gradients, Tensor distances, Tensor centres, float beta, "
          "Tensor in_weight, Tensor out_weight, Tensor slopes) -> Tensor");
    m.def("spherical_forward(Tensor chi, Tensor first, Tensor second, Tensor contraction, Tensor in_weight, "
          "Tensor in_bias, Tensor feature_out, Tensor euclidean_out, Tensor(a!) feature_filters, "
          "Tensor(b!) euclidean_filters) -> (Tensor, Tensor)");
    m.def("spherical_backward(Tensor feature_gradient, Tensor euclidean_gradient, Tensor differences, "
          "Tensor slopes, Tensor contraction, Tensor in_weight, Tensor feature_out, Tensor euclidean_out, "
          "Tensor first, Tensor second, int atoms) -> Tensor");
}

TORCH_LIBRARY_IMPL(so3krates, CPU, m) {
    m.impl("radial_forward", &radial_forward);
    m.impl("radial_backward", &radial_backward);
    m.impl("spherical_forward", &spherical_forward);
    m.impl("spherical_backward", &spherical_backward);
}
