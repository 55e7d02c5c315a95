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
// products run in AVX2/FMA register tiles over packed weights (packed_matrix.h), with SiLU and its slope
// (forward) or the product by the slope (backward) applied to each tile while it is in registers'
// reach (L1); no ATen call inside the blocks. Blocks run in parallel.
//
// Layouts (row-major, contiguous): distances (P,); centres (K,) = mu_k; in_weight (2T F, K + 1) with
// the bias as last column; out_weight (2T, F, F); out_bias (2T, F); filters (2T, P, F);
// slopes silu'(a) (2T, P, F); filter gradients: 2T tensors (P, F). Spherical: chi (N, m);
// contraction (m, n_D); sph_in_weight (2S, n_D) and sph_in_bias (2S,) of both filters
// (S = F/4 each); feature_out, euclidean_out (F, S); differences (P, m); sph_slopes (P, 2S).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "packed_matrix.h"
#include "so3krates_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <tuple>
#include <vector>

namespace {

using so3krates::Layers;
using so3krates::layers_of;
using so3krates::packed;
using so3krates::PackedMatrix;
using so3krates::Role;

// Elementwise passes of the blocks: exp, and SiLU with its slope silu'. float runs in AVX2/FMA vectors
// (exp by range reduction and a degree-7 polynomial, relative error ~2 float32 roundings); double
// (the accuracy tests) and machines without AVX2/FMA by std::exp.
template <typename T>
inline T sigmoid(T x) {
    return T(1) / (T(1) + std::exp(-x));
}

template <typename T>
void exp_in_place(T* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i]);
}

// x <- silu(x) = x sigmoid(x), slope <- silu'(x) = sigmoid(x) (1 + x (1 - sigmoid(x))).
template <typename T>
void silu_with_slope(T* x, T* slope, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        const T v = x[i], s = sigmoid(v);
        slope[i] = s * (T(1) + v * (T(1) - s));
        x[i] = v * s;
    }
}

#ifdef SO3KRATES_PACKED_PRODUCTS
inline __m256 exp8(__m256 x) {
    // e^x = 2^n e^r, n = round(x / ln 2), |r| <= ln(2) / 2; x clamped to the normal range of float
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(scale));
}

// Apply a function of 8-vectors to n floats of x (in place) and y (written), the tail through padded vectors.
template <typename Function>
inline void for_vectors(float* x, float* y, int64_t n, const Function& function) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) function(x + i, y + i);
    if (i < n) {
        float xt[8] = {0}, yt[8] = {0};
        std::copy(x + i, x + n, xt);
        function(xt, yt);
        std::copy(xt, xt + (n - i), x + i);
        std::copy(yt, yt + (n - i), y + i);
    }
}

template <>
void exp_in_place<float>(float* x, int64_t n) {
    float unused[8];
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, exp8(_mm256_loadu_ps(x + i)));
    if (i < n) for_vectors(x + i, unused, n - i, [](float* a, float*) { _mm256_storeu_ps(a, exp8(_mm256_loadu_ps(a))); });
}

template <>
void silu_with_slope<float>(float* x, float* slope, int64_t n) {
    for_vectors(x, slope, n, [](float* a, float* g) {
        const __m256 one = _mm256_set1_ps(1.0f), v = _mm256_loadu_ps(a);
        const __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), v))));
        _mm256_storeu_ps(g, _mm256_mul_ps(s, _mm256_fmadd_ps(v, _mm256_sub_ps(one, s), one)));
        _mm256_storeu_ps(a, _mm256_mul_ps(v, s));
    });
}
#endif

// What the filter operators' products do to each finished tile of C (see NoEpilogue):
// C <- silu(C) with silu'(C) into `slope` (same layout, row stride ld); C <- C * scale.
template <typename T>
struct SiluEpilogue {
    T* slope;
    int64_t ld;
    void operator()(T* c, int64_t ldc, int64_t row, int64_t column, int64_t rows, int64_t columns) const {
        for (int64_t r = 0; r < rows; ++r) silu_with_slope(c + r * ldc, slope + (row + r) * ld + column, columns);
    }
    void prefetch(int64_t, int64_t, int64_t, int64_t) const {}
};

template <typename T>
struct ScaleEpilogue {
    const T* scale;
    int64_t ld;
    // The factors of the tile come from memory (written by the forward pass long before): ask for
    // them while the tile's products run.
    void prefetch(int64_t row, int64_t column, int64_t rows, int64_t columns) const {
        for (int64_t r = 0; r < rows; ++r) {
            const T* factor = scale + (row + r) * ld + column;
            __builtin_prefetch(factor);
            __builtin_prefetch(factor + columns - 1);
        }
    }
    void operator()(T* c, int64_t ldc, int64_t row, int64_t column, int64_t rows, int64_t columns) const {
        for (int64_t r = 0; r < rows; ++r) {
            T* __restrict__ out = c + r * ldc;
            const T* __restrict__ factor = scale + (row + r) * ld + column;
#pragma omp simd
            for (int64_t k = 0; k < columns; ++k) out[k] *= factor[k];
        }
    }
};

// Pairs per block: a block's hidden features of one filter (B x F) stay in the L2 cache, and the
// products have enough rows to run near the BLAS peak.
constexpr int64_t kBlock = 256;
// Blocks per parallel task: fewer pairs run on one thread (waking an OpenMP thread costs more).
constexpr int64_t kBlocksPerTask = 2;

// The radial operators' parallel work items are (filter group, block of pairs). With fewer blocks
// than twice the threads (small molecules: 42 atoms have 2 blocks) the 2T filters are split into
// groups as well, so that every thread gets work; one thread, or fewer than one block of pairs, runs
// one group.
int64_t filter_groups(int64_t pairs, int64_t blocks, int64_t filters) {
    const int64_t threads = at::get_num_threads();
    if (threads == 1 || pairs < kBlock || blocks >= 2 * threads) return 1;
    return std::min(filters, (2 * threads + blocks - 1) / blocks);
}

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

// The basis [e_k(d); 1] (rows, K + 1) of the distances d[0:rows], into e.
template <typename T>
void block_basis(const T* d, int64_t rows, const T* mu, int64_t K, T beta, T* e) {
    for (int64_t r = 0; r < rows; ++r) {
        const T decay = std::exp(-d[r]);
        for (int64_t k = 0; k < K; ++k) {
            const T offset = decay - mu[k];
            e[r * (K + 1) + k] = -beta * offset * offset;
        }
        e[r * (K + 1) + K] = 0;  // exp(0) = 1: the bias column
    }
    exp_in_place(e, rows * (K + 1));
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
    // a = [e; 1] W_in_n^T and w = silu(a) W_out_n^T + b_n
    const auto hidden_packed = packed<T>(Role::kRadialHidden, in_weight, at::Tensor(), [&] {
        return layers_of<T>(N, [&](int64_t n) { return PackedMatrix<T>(w_in + n * F * (K + 1), K + 1, F, 1, K + 1, nullptr); });
    });
    const auto output_packed = packed<T>(Role::kRadialOutput, out_weight, out_bias, [&] {
        return layers_of<T>(N, [&](int64_t n) { return PackedMatrix<T>(w_out + n * F * F, F, F, 1, F, bias + n * F); });
    });
    const Layers<T>& hidden_layers = *hidden_packed;
    const Layers<T>& output_layers = *output_packed;
    T* filter = filters.data_ptr<T>();
    T* slope = slopes.data_ptr<T>();
    const int64_t groups = filter_groups(P, blocks, N);
    at::parallel_for(0, groups * blocks, groups > 1 ? 1 : kBlocksPerTask, [&](int64_t begin, int64_t end) {
        std::vector<T> basis(kBlock * (K + 1)), hidden(kBlock * F);
        for (int64_t item = begin; item < end; ++item) {
            const int64_t group = item / blocks, b = item % blocks;
            const int64_t p0 = b * kBlock, rows = std::min(kBlock, P - p0);
            block_basis<T>(d + p0, rows, mu, K, static_cast<T>(beta), basis.data());
            T* a = hidden.data();
            for (int64_t n = group * N / groups; n < (group + 1) * N / groups; ++n) {
                // a = silu([e; 1] W_in_n^T), silu' kept
                hidden_layers[n].multiply(basis.data(), rows, K + 1, a, F, false,
                                          SiluEpilogue<T>{slope + (n * P + p0) * F, F});
                output_layers[n].multiply(a, rows, F, filter + (n * P + p0) * F, F, false);
            }
        }
    });
}

}  // namespace

namespace so3krates {

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

}  // namespace so3krates

namespace {

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
    // dE/dh = dE/dw W_out_n, then dE/de = dE/da W_in_n (the bias column dropped)
    const auto output_packed = packed<T>(Role::kRadialOutputBackward, out_weight, at::Tensor(), [&] {
        return layers_of<T>(N, [&](int64_t n) { return PackedMatrix<T>(w_out + n * F * F, F, F, F, 1, nullptr); });
    });
    const auto hidden_packed = packed<T>(Role::kRadialHiddenBackward, in_weight, at::Tensor(), [&] {
        return layers_of<T>(N, [&](int64_t n) { return PackedMatrix<T>(w_in + n * F * (K + 1), F, K, K + 1, 1, nullptr); });
    });
    const Layers<T>& output_layers = *output_packed;
    const Layers<T>& hidden_layers = *hidden_packed;
    // each filter group's part of dE/dd (linear in dE/de), summed after the parallel loop
    const int64_t groups = filter_groups(P, blocks, N);
    std::vector<T> group_parts(groups > 1 ? groups * P : 0);
    at::parallel_for(0, groups * blocks, groups > 1 ? 1 : kBlocksPerTask, [&](int64_t begin, int64_t end) {
        std::vector<T> hidden_gradient(kBlock * F), basis_gradient(kBlock * K), basis(kBlock * (K + 1));
        for (int64_t item = begin; item < end; ++item) {
            const int64_t group = item / blocks, b = item % blocks;
            const int64_t p0 = b * kBlock, rows = std::min(kBlock, P - p0);
            T* g = hidden_gradient.data();
            T* ge = basis_gradient.data();
            T* part = groups > 1 ? group_parts.data() + group * P : out;
            const int64_t n0 = group * N / groups;
            for (int64_t n = n0; n < (group + 1) * N / groups; ++n) {
                // dE/da = (dE/dw W_out_n) silu'(a)
                output_layers[n].multiply(filter_gradients[n].data_ptr<T>() + p0 * F, rows, F, g, F, false,
                                          ScaleEpilogue<T>{slope + (n * P + p0) * F, F});
                hidden_layers[n].multiply(g, rows, F, ge, K, n > n0);
            }
            block_basis<T>(d + p0, rows, mu, K, static_cast<T>(beta), basis.data());
            const T* e = basis.data();
            for (int64_t r = 0; r < rows; ++r) {
                const T decay = std::exp(-d[p0 + r]);
                T sum = 0;
                for (int64_t k = 0; k < K; ++k) sum += ge[r * K + k] * e[r * (K + 1) + k] * (decay - mu[k]);
                // d e_k / d d = e_k (-2 beta) (exp(-d) - mu_k) (-exp(-d))
                part[p0 + r] = sum * factor * (-decay);
            }
        }
    });
    if (groups > 1) {
        for (int64_t p = 0; p < P; ++p) {
            T sum = 0;
            for (int64_t group = 0; group < groups; ++group) sum += group_parts[group * P + p];
            out[p] = sum;
        }
    }
}

}  // namespace

namespace so3krates {

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

}  // namespace so3krates

namespace {

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
    const so3krates::PairBlocks blocks = so3krates::pair_blocks(P, kBlock);
    const T* x = chi.data_ptr<T>();
    const T* c = contraction.data_ptr<T>();
    const T* w_in = in_weight.data_ptr<T>();
    const T* b_in = in_bias.data_ptr<T>();
    const int64_t* fi = first.data_ptr<int64_t>();
    const int64_t* se = second.data_ptr<int64_t>();
    // w += h_feature W_f^T and h_euclidean W_e^T, (B x S) (S x F)
    const auto feature_packed = packed<T>(Role::kSphericalFeature, feature_out, at::Tensor(), [&] {
        return layers_of<T>(1, [&](int64_t) { return PackedMatrix<T>(feature_out.data_ptr<T>(), S, F, 1, S, nullptr); });
    });
    const auto euclidean_packed = packed<T>(Role::kSphericalEuclidean, euclidean_out, at::Tensor(), [&] {
        return layers_of<T>(1, [&](int64_t) { return PackedMatrix<T>(euclidean_out.data_ptr<T>(), S, F, 1, S, nullptr); });
    });
    const PackedMatrix<T>& feature_layer = (*feature_packed)[0];
    const PackedMatrix<T>& euclidean_layer = (*euclidean_packed)[0];
    T* w_f = feature_filters.data_ptr<T>();
    T* w_e = euclidean_filters.data_ptr<T>();
    T* diff = differences.data_ptr<T>();
    T* slope = slopes.data_ptr<T>();
    // W_sph_in transposed (n_D, 2S): the hidden pre-activations of a pair are n_D vector updates
    std::vector<T> w_in_t(D * S2);
    for (int64_t o = 0; o < S2; ++o)
        for (int64_t l = 0; l < D; ++l) w_in_t[l * S2 + o] = w_in[o * D + l];
    at::parallel_for(0, blocks.count, blocks.grain, [&](int64_t begin, int64_t end) {
        std::vector<T> hidden(blocks.rows * S2), invariants(D);
        for (int64_t b = begin; b < end; ++b) {
            const int64_t p0 = b * blocks.rows, rows = std::min(blocks.rows, P - p0);
            T* a = hidden.data();
            for (int64_t r = 0; r < rows; ++r) {
                const int64_t p = p0 + r;
                T* __restrict__ dp = diff + p * M;
                const T* xi = x + fi[p] * M;
                const T* xj = x + se[p] * M;
                for (int64_t l = 0; l < D; ++l) invariants[l] = 0;
                for (int64_t m = 0; m < M; ++m) {
                    const T v = xj[m] - xi[m];
                    dp[m] = v;
                    for (int64_t l = 0; l < D; ++l) invariants[l] += v * v * c[m * D + l];
                }
                T* __restrict__ ar = a + r * S2;
#pragma omp simd
                for (int64_t o = 0; o < S2; ++o) ar[o] = b_in[o];
                for (int64_t l = 0; l < D; ++l) {
                    const T v = invariants[l];
                    const T* __restrict__ wl = w_in_t.data() + l * S2;
#pragma omp simd
                    for (int64_t o = 0; o < S2; ++o) ar[o] += v * wl[o];
                }
            }
            silu_with_slope(a, slope + p0 * S2, rows * S2);
            feature_layer.multiply(a, rows, S2, w_f + p0 * F, F, true);
            euclidean_layer.multiply(a + S, rows, S2, w_e + p0 * F, F, true);
        }
    });
}

}  // namespace

namespace so3krates {

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

}  // namespace so3krates

namespace {

// Backward of spherical_forward: dE/dchi (N, m) from the gradients of the two filters (P, F).
template <typename T>
void spherical_backward_blocks(const at::Tensor& feature_gradient, const at::Tensor& euclidean_gradient,
                               const at::Tensor& differences, const at::Tensor& slopes,
                               const at::Tensor& contraction, const at::Tensor& in_weight,
                               const at::Tensor& feature_out, const at::Tensor& euclidean_out,
                               const at::Tensor& first, const at::Tensor& second, so3krates::TaskBuffers& buffers) {
    const int64_t P = first.size(0), M = differences.size(1), D = contraction.size(1), S2 = in_weight.size(0);
    const int64_t S = S2 / 2, F = feature_out.size(0);
    const so3krates::PairBlocks blocks = so3krates::pair_blocks(P, kBlock);
    const T* c = contraction.data_ptr<T>();
    const T* w_in = in_weight.data_ptr<T>();
    const T* diff = differences.data_ptr<T>();
    const T* slope = slopes.data_ptr<T>();
    const T* g_f = feature_gradient.data_ptr<T>();
    const T* g_e = euclidean_gradient.data_ptr<T>();
    const int64_t* fi = first.data_ptr<int64_t>();
    const int64_t* se = second.data_ptr<int64_t>();
    // dE/dh = dE/dw W (B x F) (F x S)
    const auto feature_packed = packed<T>(Role::kSphericalFeatureBackward, feature_out, at::Tensor(), [&] {
        return layers_of<T>(1, [&](int64_t) { return PackedMatrix<T>(feature_out.data_ptr<T>(), F, S, S, 1, nullptr); });
    });
    const auto euclidean_packed = packed<T>(Role::kSphericalEuclideanBackward, euclidean_out, at::Tensor(), [&] {
        return layers_of<T>(1, [&](int64_t) { return PackedMatrix<T>(euclidean_out.data_ptr<T>(), F, S, S, 1, nullptr); });
    });
    const PackedMatrix<T>& feature_layer = (*feature_packed)[0];
    const PackedMatrix<T>& euclidean_layer = (*euclidean_packed)[0];
    std::vector<T> w_in_t(D * S2);  // W_sph_in transposed (n_D, 2S)
    for (int64_t o = 0; o < S2; ++o)
        for (int64_t l = 0; l < D; ++l) w_in_t[l * S2 + o] = w_in[o * D + l];
    at::parallel_for(0, blocks.count, blocks.grain, [&](int64_t begin, int64_t end) {
        T* out = buffers.local<T>();
        std::vector<T> hidden(blocks.rows * S2), invariants(D);
        for (int64_t b = begin; b < end; ++b) {
            const int64_t p0 = b * blocks.rows, rows = std::min(blocks.rows, P - p0);
            T* h = hidden.data();
            feature_layer.multiply(g_f + p0 * F, rows, F, h, S2, false);
            euclidean_layer.multiply(g_e + p0 * F, rows, F, h + S, S2, false);
            for (int64_t r = 0; r < rows; ++r) {
                const int64_t p = p0 + r;
                T* __restrict__ g = h + r * S2;
                const T* __restrict__ s = slope + p * S2;
#pragma omp simd
                for (int64_t o = 0; o < S2; ++o) g[o] *= s[o];
                for (int64_t l = 0; l < D; ++l) {
                    const T* __restrict__ wl = w_in_t.data() + l * S2;
                    T sum = 0;
#pragma omp simd reduction(+ : sum)
                    for (int64_t o = 0; o < S2; ++o) sum += g[o] * wl[o];
                    invariants[l] = sum;
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

}  // namespace

namespace so3krates {

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
    so3krates::TaskBuffers buffers(so3krates::pair_tasks(P), atoms, M, feature_gradient.options());
    at::Tensor chi_gradient;
    AT_DISPATCH_FLOATING_TYPES(feature_gradient.scalar_type(), "so3krates_spherical_backward", [&] {
        spherical_backward_blocks<scalar_t>(feature_gradient, euclidean_gradient, differences, slopes, contraction,
                                            in_weight, feature_out, euclidean_out, first, second, buffers);
        chi_gradient = buffers.sum<scalar_t>();
    });
    return chi_gradient;
}

}  // namespace so3krates

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
    m.impl("radial_forward", &so3krates::radial_forward);
    m.impl("radial_backward", &so3krates::radial_backward);
    m.impl("spherical_forward", &so3krates::spherical_forward);
    m.impl("spherical_backward", &so3krates::spherical_backward);
}
