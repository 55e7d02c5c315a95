// Products C = A B of row blocks A with constant weight matrices B in AVX2/FMA register tiles, and the
// cache that keeps the packed weights between operator calls: used by the filter operators
// (filters.cpp) and by the per-atom products of the whole-model operator (model.cpp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SO3KRATES_PACKED_PRODUCTS 1
#endif

namespace so3krates {

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

// What a product does to each finished tile of C (rows x columns at C(row, column), row stride ldc)
// while it is in the L1 cache, and what it reads then, requested (`prefetch`) before the tile's
// products start: nothing here; the filter operators define others.
struct NoEpilogue {
    template <typename T>
    void operator()(T*, int64_t, int64_t, int64_t, int64_t, int64_t) const {}
    void prefetch(int64_t, int64_t, int64_t, int64_t) const {}
};

// A constant matrix B (K x N), B(k, n) = source[k * k_stride + n * n_stride], ready to multiply
// blocks of rows from the left: C = A B (+ bias per column) (+ C). The weights are the same for
// every block and every call, so they are packed once (and kept: `packed` below) into panels of kPanel
// columns (K x kPanel each, zero-padded) that a 6 x kPanel register tile streams through; without
// AVX2/FMA the product is an ATen matrix product.
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

    int64_t depth() const { return K_; }
    int64_t columns() const { return N_; }
    // Column panels (the unit of work of multiply's panel range); 1 without AVX2/FMA.
    int64_t panels() const {
#ifdef SO3KRATES_PACKED_PRODUCTS
        return panels_;
#else
        return 1;
#endif
    }

    // C (M x N, row stride ldc) = A (M x K, row stride lda) B [+ bias] [+ C when accumulate], then the
    // epilogue on each tile while it is in the L1 cache; only the columns of panels [first_panel,
    // end_panel) (all by default).
    template <typename Epilogue = NoEpilogue>
    void multiply(const T* A, int64_t M, int64_t lda, T* C, int64_t ldc, bool accumulate,
                  const Epilogue& epilogue = Epilogue(), int64_t first_panel = 0, int64_t end_panel = -1) const {
#ifdef SO3KRATES_PACKED_PRODUCTS
        using S = Simd<T>;
        using V = typename S::V;
        constexpr int64_t W = S::width;
        const int64_t K = K_;
        for (int64_t j = first_panel; j < (end_panel < 0 ? panels_ : end_panel); ++j) {
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
                epilogue.prefetch(i0, j * kPanel, rows, columns);
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
                epilogue(c0, ldc, i0, j * kPanel, rows, columns);
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
        epilogue(C, ldc, 0, 0, M, N_);
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

// Packed weights are kept between calls (an MD run passes the same weight tensors every step): per
// role (which product of which operator) and weight tensor, while the tensor's storage is alive and
// its version counter and sizes unchanged, so an in-place change of the weights packs them again.
// Inference tensors (no version counter) are packed on every call.
enum class Role { kRadialHidden, kRadialOutput, kRadialOutputBackward, kRadialHiddenBackward, kSphericalFeature,
                  kSphericalEuclidean, kSphericalFeatureBackward, kSphericalEuclideanBackward, kProjection,
                  kProjectionBackward, kExchange, kExchangeBackward, kReadout, kReadoutBackward, kHarmonics,
                  kHarmonicDerivatives };

template <typename T>
using Layers = std::vector<PackedMatrix<T>>;

struct WeightState {
    c10::weak_intrusive_ptr<c10::StorageImpl> storage;
    int64_t offset = 0, version = 0;
    std::vector<int64_t> sizes;

    explicit WeightState(const at::Tensor& t)
        : storage(t.storage().getWeakStorageImpl()), offset(t.storage_offset()), version(t._version()),
          sizes(t.sizes().vec()) {}
    bool describes(const at::Tensor& t) const {
        return !storage.expired() && storage._unsafe_get_target() == t.storage().unsafeGetStorageImpl() &&
               offset == t.storage_offset() && version == t._version() && sizes == t.sizes().vec();
    }
};

template <typename T, typename Make>
std::shared_ptr<const Layers<T>> packed(Role role, const at::Tensor& weight, const at::Tensor& bias, const Make& make) {
    const bool with_bias = bias.defined();
    if (weight.is_inference() || (with_bias && bias.is_inference())) return std::make_shared<const Layers<T>>(make());
    struct Entry {
        std::vector<WeightState> weights;
        std::shared_ptr<const Layers<T>> layers;
    };
    static std::mutex mutex;
    static std::map<std::tuple<Role, const void*, int64_t>, Entry> cache;
    const std::tuple<Role, const void*, int64_t> key{role, weight.storage().unsafeGetStorageImpl(), weight.storage_offset()};
    const std::lock_guard<std::mutex> lock(mutex);
    const auto found = cache.find(key);
    if (found != cache.end() && found->second.weights[0].describes(weight) &&
        (!with_bias || found->second.weights[1].describes(bias))) {
        return found->second.layers;
    }
    for (auto entry = cache.begin(); entry != cache.end();) {  // forget the weights of freed tensors
        const bool freed = std::any_of(entry->second.weights.begin(), entry->second.weights.end(),
                                       [](const WeightState& state) { return state.storage.expired(); });
        entry = freed ? cache.erase(entry) : std::next(entry);
    }
    Entry entry{{WeightState(weight)}, std::make_shared<const Layers<T>>(make())};
    if (with_bias) entry.weights.emplace_back(bias);
    cache.insert_or_assign(key, entry);
    return entry.layers;
}

// The N packed matrices layer(n), n = 0..N-1 (of the filters or the layers).
template <typename T, typename Layer>
Layers<T> layers_of(int64_t N, const Layer& layer) {
    Layers<T> result;
    result.reserve(N);
    for (int64_t n = 0; n < N; ++n) result.push_back(layer(n));
    return result;
}

// Multiply-adds of a product below which it runs on one thread (waking another costs more).
constexpr int64_t kMinProductWork = int64_t(1) << 19;

// C = A B [+ bias] [+ C when accumulate] for a few rows of A (per-atom features, M = atoms): the
// column panels of B are split between threads when the product is large enough.
template <typename T>
void multiply_split_by_columns(const PackedMatrix<T>& b, const T* a, int64_t rows, int64_t lda, T* c, int64_t ldc,
                               bool accumulate) {
    const int64_t panels = b.panels();
    const int64_t tasks = std::max<int64_t>(
        1, std::min<int64_t>({at::get_num_threads(), panels, rows * b.depth() * b.columns() / kMinProductWork}));
    at::parallel_for(0, panels, (panels + tasks - 1) / tasks, [&](int64_t begin, int64_t end) {
        b.multiply(a, rows, lda, c, ldc, accumulate, NoEpilogue(), begin, end);
    });
}

}  // namespace so3krates
