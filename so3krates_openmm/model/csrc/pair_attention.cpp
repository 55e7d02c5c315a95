// Fused per-pair chain of one SO3krates layer (both attention blocks) and its backward, on the CPU.
//
// Registered as TorchScript operators torch.ops.so3krates.pair_forward / pair_backward; the Python
// spec of both is FastSO3krates.pair_forward / pair_backward in so3krates_openmm/model/fast.py
// (kernels="torch"), which these loops compute without any pair x F intermediate: every pair's
// queries, keys, values and filters are read once, scores are formed per head, and messages
// (and, backward, the gradients of projections) are accumulated into per-thread atom buffers.
//
// Layouts (row-major, contiguous): projections (N, 5F) = [Q, Q~, K, K~, V] of each atom (queries
// scaled); filters (P, F) per unordered pair (i = first, j = second); cutoff (P,); harmonics
// (P, m) of r_ij; parity (m,) = (-1)^l per component; component_degree (m,) int64 = index of the
// degree block of each component; scores (P, 2H + 2D) = [s_ij(H), s_ji(H), s~_ij(D), s~_ji(D)].
// The invariant model (degrees = 0) has the invariant block only: projections (N, 3F) = [Q, K, V],
// scores (P, 2H); its Euclidean filters are not read (any tensor), harmonics, parity and
// component_degree are empty, and the Euclidean outputs are empty ((N, 0), (P, 0)).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "so3krates_kernels.h"

#include <cstdint>
#include <tuple>
#include <vector>

namespace {

struct Sizes {
    int64_t atoms, pairs, features, heads, degrees, components;
};

// Blocks of F columns of an atom's projections, [Q, Q~, K, K~, V] (kEuclidean) or [Q, K, V]: how many,
// and where the keys and the values start (queries at 0; the Euclidean queries and keys at 1 and 3).
template <bool kEuclidean>
struct Blocks {
    static constexpr int64_t count = kEuclidean ? 5 : 3, key = kEuclidean ? 2 : 1, value = kEuclidean ? 4 : 2;
};

Sizes check_inputs(const at::Tensor& projections, const at::Tensor& feature_filters, const at::Tensor& euclidean_filters,
                   const at::Tensor& cutoff, const at::Tensor& harmonics, const at::Tensor& parity,
                   const at::Tensor& component_degree, const at::Tensor& first, const at::Tensor& second,
                   int64_t heads, int64_t degrees) {
    Sizes s{projections.size(0), first.size(0), feature_filters.size(1), heads, degrees, harmonics.size(1)};
    TORCH_CHECK(projections.dim() == 2 && projections.size(1) == (degrees > 0 ? 5 : 3) * s.features,
                "so3krates: projections must be (N, 5F), or (N, 3F) without degrees");
    TORCH_CHECK(feature_filters.dim() == 2 && feature_filters.size(0) == s.pairs &&
                    (degrees == 0 || feature_filters.sizes() == euclidean_filters.sizes()),
                "so3krates: filters must be (P, F)");
    TORCH_CHECK(cutoff.numel() == s.pairs && harmonics.size(0) == s.pairs && second.numel() == s.pairs,
                "so3krates: per-pair inputs disagree in length");
    TORCH_CHECK(parity.numel() == s.components && component_degree.numel() == s.components,
                "so3krates: parity and component_degree must have one entry per harmonic component");
    TORCH_CHECK(heads > 0 && degrees >= 0 && s.features % heads == 0 && (degrees == 0 || s.features % degrees == 0),
                "so3krates: features must divide by heads and by degrees");
    TORCH_CHECK(degrees > 0 || s.components == 0, "so3krates: no degrees, but harmonics given");
    TORCH_CHECK(first.scalar_type() == at::kLong && second.scalar_type() == at::kLong && component_degree.scalar_type() == at::kLong,
                "so3krates: index tensors must be int64");
    for (const at::Tensor* t : {&feature_filters, &euclidean_filters, &cutoff, &harmonics, &parity}) {
        TORCH_CHECK(t->scalar_type() == projections.scalar_type() || (t == &euclidean_filters && degrees == 0),
                    "so3krates: all float inputs must have one dtype");
    }
    return s;
}

// kEuclidean: both blocks (equivariant model); otherwise the invariant block only.
template <typename T, bool kEuclidean>
void forward_kernel(const Sizes& s, const T* proj, const T* ff, const T* ef, const T* cut, const T* harm, const T* par,
                    const int64_t* comp_deg, const int64_t* first, const int64_t* second,
                    so3krates::TaskBuffers& update_buffers, so3krates::TaskBuffers& ev_buffers, T* scores) {
    const int64_t F = s.features, H = s.heads, D = s.degrees, M = s.components;
    const int64_t hw = F / H, dw = kEuclidean ? F / D : 0, score_width = 2 * H + 2 * D;
    const int64_t stride = Blocks<kEuclidean>::count * F;
    constexpr int64_t key = Blocks<kEuclidean>::key, value = Blocks<kEuclidean>::value;
    at::parallel_for(0, s.pairs, so3krates::pair_grain(s.pairs), [&](int64_t begin, int64_t end) {
        T* update = update_buffers.local<T>();
        T* ev_update = kEuclidean ? ev_buffers.local<T>() : nullptr;
        std::vector<T> eij(D), eji(D);
        for (int64_t p = begin; p < end; ++p) {
            const int64_t i = first[p], j = second[p];
            const T* __restrict__ ai = proj + i * stride;
            const T* __restrict__ aj = proj + j * stride;
            const T* __restrict__ w = ff + p * F;
            const T* __restrict__ we = ef + p * F;
            const T phi = cut[p];
            T* __restrict__ out = scores + p * score_width;
            T* __restrict__ ui = update + i * F;
            T* __restrict__ uj = update + j * F;
            for (int64_t h = 0; h < H; ++h) {
                T sij = 0, sji = 0;
#pragma omp simd reduction(+ : sij, sji)
                for (int64_t f = h * hw; f < (h + 1) * hw; ++f) {
                    sij += ai[f] * w[f] * aj[key * F + f];
                    sji += aj[f] * w[f] * ai[key * F + f];
                }
                out[h] = sij;
                out[H + h] = sji;
                const T cij = phi * sij, cji = phi * sji;
#pragma omp simd
                for (int64_t f = h * hw; f < (h + 1) * hw; ++f) {
                    ui[f] += cij * aj[value * F + f];
                    uj[f] += cji * ai[value * F + f];
                }
            }
            if constexpr (!kEuclidean) continue;
            for (int64_t l = 0; l < D; ++l) {
                T sij = 0, sji = 0;
#pragma omp simd reduction(+ : sij, sji)
                for (int64_t f = l * dw; f < (l + 1) * dw; ++f) {
                    sij += ai[F + f] * we[f] * aj[3 * F + f];
                    sji += aj[F + f] * we[f] * ai[3 * F + f];
                }
                out[2 * H + l] = sij;
                out[2 * H + D + l] = sji;
                eij[l] = phi * sij;
                eji[l] = phi * sji;
            }
            const T* y = harm + p * M;
            T* vi = ev_update + i * M;
            T* vj = ev_update + j * M;
            for (int64_t m = 0; m < M; ++m) {
                vi[m] += eij[comp_deg[m]] * y[m];
                vj[m] += eji[comp_deg[m]] * (par[m] * y[m]);
            }
        }
    });
}

}  // namespace

namespace so3krates {

std::tuple<at::Tensor, at::Tensor, at::Tensor> pair_forward(
    const at::Tensor& projections_in, const at::Tensor& feature_filters_in, const at::Tensor& euclidean_filters_in,
    const at::Tensor& cutoff_in, const at::Tensor& harmonics_in, const at::Tensor& parity_in,
    const at::Tensor& component_degree_in, const at::Tensor& first_in, const at::Tensor& second_in, int64_t heads,
    int64_t degrees) {
    const at::Tensor projections = projections_in.contiguous(), feature_filters = feature_filters_in.contiguous(),
                     euclidean_filters = euclidean_filters_in.contiguous(), cutoff = cutoff_in.contiguous(),
                     harmonics = harmonics_in.contiguous(), parity = parity_in.contiguous(),
                     component_degree = component_degree_in.contiguous(), first = first_in.contiguous(),
                     second = second_in.contiguous();
    const Sizes s = check_inputs(projections, feature_filters, euclidean_filters, cutoff, harmonics, parity,
                                 component_degree, first, second, heads, degrees);
    const int64_t tasks = so3krates::pair_tasks(s.pairs);
    auto options = projections.options();
    so3krates::TaskBuffers update_buffers(tasks, s.atoms, s.features, options);
    so3krates::TaskBuffers ev_buffers(tasks, s.atoms, s.components, options);
    at::Tensor update, ev_update;
    at::Tensor scores = at::empty({s.pairs, 2 * heads + 2 * degrees}, options);
    AT_DISPATCH_FLOATING_TYPES(projections.scalar_type(), "so3krates_pair_forward", [&] {
        const auto kernel = degrees > 0 ? forward_kernel<scalar_t, true> : forward_kernel<scalar_t, false>;
        kernel(s, projections.data_ptr<scalar_t>(), feature_filters.data_ptr<scalar_t>(),
               degrees > 0 ? euclidean_filters.data_ptr<scalar_t>() : nullptr, cutoff.data_ptr<scalar_t>(),
               harmonics.data_ptr<scalar_t>(), parity.data_ptr<scalar_t>(), component_degree.data_ptr<int64_t>(),
               first.data_ptr<int64_t>(), second.data_ptr<int64_t>(), update_buffers, ev_buffers,
               scores.data_ptr<scalar_t>());
        update = update_buffers.sum<scalar_t>();
        ev_update = ev_buffers.sum<scalar_t>();
    });
    return {update, ev_update, scores};
}

}  // namespace so3krates

namespace {

template <typename T, bool kEuclidean>
void backward_kernel(const Sizes& s, const T* gu, const T* ge, const T* proj, const T* ff, const T* ef, const T* cut,
                     const T* harm, const T* par, const int64_t* comp_deg, const T* scores, const int64_t* first,
                     const int64_t* second, so3krates::TaskBuffers& projection_buffers, T* ff_grad, T* ef_grad,
                     T* cut_grad, T* harm_grad) {
    const int64_t F = s.features, H = s.heads, D = s.degrees, M = s.components;
    const int64_t hw = F / H, dw = kEuclidean ? F / D : 0, score_width = 2 * H + 2 * D;
    const int64_t stride = Blocks<kEuclidean>::count * F;
    constexpr int64_t key = Blocks<kEuclidean>::key, value = Blocks<kEuclidean>::value;
    at::parallel_for(0, s.pairs, so3krates::pair_grain(s.pairs), [&](int64_t begin, int64_t end) {
        T* grad = projection_buffers.local<T>();
        std::vector<T> gij(D), gji(D), eij(D), eji(D);
        for (int64_t p = begin; p < end; ++p) {
            const int64_t i = first[p], j = second[p];
            const T* __restrict__ ai = proj + i * stride;
            const T* __restrict__ aj = proj + j * stride;
            const T* __restrict__ w = ff + p * F;
            const T* __restrict__ we = ef + p * F;
            const T phi = cut[p];
            const T* __restrict__ sc = scores + p * score_width;
            const T* __restrict__ gi = gu + i * F;
            const T* __restrict__ gj = gu + j * F;
            T* __restrict__ bi = grad + i * stride;
            T* __restrict__ bj = grad + j * stride;
            T* __restrict__ gw = ff_grad + p * F;
            T* __restrict__ gwe = ef_grad + p * F;
            T phi_grad = 0;
            // invariant block: update_i += phi s_ij v_j, update_j += phi s_ji v_i
            for (int64_t h = 0; h < H; ++h) {
                const T sij = sc[h], sji = sc[H + h];
                T dij = 0, dji = 0;  // gradients of phi s_ij and phi s_ji
#pragma omp simd reduction(+ : dij, dji)
                for (int64_t f = h * hw; f < (h + 1) * hw; ++f) {
                    dij += gi[f] * aj[value * F + f];
                    dji += gj[f] * ai[value * F + f];
                }
                phi_grad += dij * sij + dji * sji;
                const T vij = phi * sij, vji = phi * sji, cij = phi * dij, cji = phi * dji;
#pragma omp simd
                for (int64_t f = h * hw; f < (h + 1) * hw; ++f) {
                    const T qi = ai[f], ki = ai[key * F + f], qj = aj[f], kj = aj[key * F + f], wf = w[f];
                    gw[f] = cij * qi * kj + cji * qj * ki;
                    const T wij = cij * wf, wji = cji * wf;
                    bi[f] += wij * kj;                  // Q_i
                    bj[key * F + f] += wij * qi;        // K_j
                    bj[f] += wji * ki;                  // Q_j
                    bi[key * F + f] += wji * qj;        // K_i
                    bj[value * F + f] += vij * gi[f];   // V_j
                    bi[value * F + f] += vji * gj[f];   // V_i
                }
            }
            if constexpr (!kEuclidean) {
                cut_grad[p] = phi_grad;
                continue;
            }
            // Euclidean block: ev_update_i += phi (s~_ij E) Y, ev_update_j += phi (s~_ji E) parity Y
            const T* y = harm + p * M;
            const T* hi = ge + i * M;
            const T* hj = ge + j * M;
            for (int64_t l = 0; l < D; ++l) {
                gij[l] = 0;
                gji[l] = 0;
                eij[l] = phi * sc[2 * H + l];
                eji[l] = phi * sc[2 * H + D + l];
            }
            T* gy = harm_grad + p * M;
            for (int64_t m = 0; m < M; ++m) {
                const int64_t l = comp_deg[m];
                gij[l] += hi[m] * y[m];
                gji[l] += hj[m] * par[m] * y[m];
                gy[m] = eij[l] * hi[m] + eji[l] * par[m] * hj[m];
            }
            for (int64_t l = 0; l < D; ++l) {
                phi_grad += gij[l] * sc[2 * H + l] + gji[l] * sc[2 * H + D + l];
                const T cij = phi * gij[l], cji = phi * gji[l];
#pragma omp simd
                for (int64_t f = l * dw; f < (l + 1) * dw; ++f) {
                    const T qi = ai[F + f], ki = ai[3 * F + f], qj = aj[F + f], kj = aj[3 * F + f], wf = we[f];
                    gwe[f] = cij * qi * kj + cji * qj * ki;
                    const T wij = cij * wf, wji = cji * wf;
                    bi[F + f] += wij * kj;
                    bj[3 * F + f] += wij * qi;
                    bj[F + f] += wji * ki;
                    bi[3 * F + f] += wji * qj;
                }
            }
            cut_grad[p] = phi_grad;
        }
    });
}

}  // namespace

namespace so3krates {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> pair_backward(
    const at::Tensor& update_grad_in, const at::Tensor& ev_update_grad_in, const at::Tensor& projections_in,
    const at::Tensor& feature_filters_in, const at::Tensor& euclidean_filters_in, const at::Tensor& cutoff_in,
    const at::Tensor& harmonics_in, const at::Tensor& parity_in, const at::Tensor& component_degree_in,
    const at::Tensor& scores_in, const at::Tensor& first_in, const at::Tensor& second_in, int64_t heads, int64_t degrees) {
    const at::Tensor update_grad = update_grad_in.contiguous(), ev_update_grad = ev_update_grad_in.contiguous(),
                     projections = projections_in.contiguous(), feature_filters = feature_filters_in.contiguous(),
                     euclidean_filters = euclidean_filters_in.contiguous(), cutoff = cutoff_in.contiguous(),
                     harmonics = harmonics_in.contiguous(), parity = parity_in.contiguous(),
                     component_degree = component_degree_in.contiguous(), scores = scores_in.contiguous(),
                     first = first_in.contiguous(), second = second_in.contiguous();
    const Sizes s = check_inputs(projections, feature_filters, euclidean_filters, cutoff, harmonics, parity,
                                 component_degree, first, second, heads, degrees);
    TORCH_CHECK(update_grad.sizes() == at::IntArrayRef({s.atoms, s.features}) &&
                    ev_update_grad.sizes() == at::IntArrayRef({s.atoms, s.components}) &&
                    scores.sizes() == at::IntArrayRef({s.pairs, 2 * heads + 2 * degrees}),
                "so3krates: gradient or score shapes do not match");
    auto options = projections.options();
    so3krates::TaskBuffers projection_buffers(so3krates::pair_tasks(s.pairs), s.atoms, projections.size(1), options);
    at::Tensor projection_gradient;
    at::Tensor ff_grad = at::empty({s.pairs, s.features}, options);
    at::Tensor ef_grad = at::empty({s.pairs, degrees > 0 ? s.features : 0}, options);
    at::Tensor cut_grad = at::empty({s.pairs}, options);
    at::Tensor harm_grad = at::empty({s.pairs, s.components}, options);
    AT_DISPATCH_FLOATING_TYPES(projections.scalar_type(), "so3krates_pair_backward", [&] {
        const auto kernel = degrees > 0 ? backward_kernel<scalar_t, true> : backward_kernel<scalar_t, false>;
        kernel(s, update_grad.data_ptr<scalar_t>(), ev_update_grad.data_ptr<scalar_t>(),
               projections.data_ptr<scalar_t>(), feature_filters.data_ptr<scalar_t>(),
               degrees > 0 ? euclidean_filters.data_ptr<scalar_t>() : nullptr, cutoff.data_ptr<scalar_t>(),
               harmonics.data_ptr<scalar_t>(), parity.data_ptr<scalar_t>(), component_degree.data_ptr<int64_t>(),
               scores.data_ptr<scalar_t>(), first.data_ptr<int64_t>(), second.data_ptr<int64_t>(),
               projection_buffers, ff_grad.data_ptr<scalar_t>(), ef_grad.data_ptr<scalar_t>(),
               cut_grad.data_ptr<scalar_t>(), harm_grad.data_ptr<scalar_t>());
        projection_gradient = projection_buffers.sum<scalar_t>();
    });
    return {projection_gradient, ff_grad, ef_grad, cut_grad, harm_grad};
}

}  // namespace so3krates

TORCH_LIBRARY(so3krates, m) {
    m.def("pair_forward(Tensor projections, Tensor feature_filters, Tensor euclidean_filters, Tensor cutoff, "
          "Tensor harmonics, Tensor parity, Tensor component_degree, Tensor first, Tensor second, int heads, "
          "int degrees) -> (Tensor, Tensor, Tensor)");
    m.def("pair_backward(Tensor update_grad, Tensor ev_update_grad, Tensor projections, Tensor feature_filters, "
          "Tensor euclidean_filters, Tensor cutoff, Tensor harmonics, Tensor parity, Tensor component_degree, "
          "Tensor scores, Tensor first, Tensor second, int heads, int degrees) "
          "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(so3krates, CPU, m) {
    m.impl("pair_forward", &so3krates::pair_forward);
    m.impl("pair_backward", &so3krates::pair_backward);
}
