// Energy and forces of the whole SO3krates model in one operator, on the CPU.
//
// Registered as torch.ops.so3krates.energy_forces; its Python spec is FastSO3krates.forward in
// so3krates_openmm/model/fast.py (kernels="torch"), which it computes with the same operators
// (so3krates_kernels.h) and the same per-atom products, so that the TorchScript module calls one
// operator instead of several hundred small ones. The per-pair geometry (distances, unit vectors,
// harmonics as polynomials of the unit vector, cutoff weights) and its backward onto the atoms, and
// the exchange blocks, are plain loops here; the per-atom products (projections, exchange, readout)
// run in the register tiles of packed_matrix.h over weights packed once and kept between calls,
// their column panels split between threads.
//
// Layouts as in FastSO3krates (its buffers are passed as they are): P unordered pairs, r_ij =
// R_j - R_i + shift (Å); monomial_exponents (M, 3) int64, harmonic_coefficients (M, m),
// harmonic_derivatives (m, 3 M); per-layer weights stacked over the T layers.
//
// The invariant model (no degrees: pair_contraction (T, 0, 0)) runs the same operator without any
// Euclidean part: no harmonics (m = 0), one filter per layer (radial only), atom projections
// [Q, K, V] (projection (T, 3F, F)), the invariant block of the pair chain, and an exchange block
// that is the linear update of the features; its spherical-filter arguments are not read.
#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#include "packed_matrix.h"
#include "so3krates_kernels.h"

namespace {

using so3krates::Layers;
using so3krates::layers_of;
using so3krates::multiply_split_by_columns;
using so3krates::packed;
using so3krates::PackedMatrix;
using so3krates::Role;

// A named stage of the operator in torch.profiler's tables (bench/fast_step.py --profile) until the end of
// the enclosing scope; costs a flag test when no profiler runs.
#define SO3KRATES_STAGE(name) RECORD_FUNCTION("so3krates::energy_forces::" name, c10::ArrayRef<const c10::IValue>{})

// Distances, unit vectors, monomials of the unit vector's components (the harmonics are their
// product with the coefficients), cutoff weights and their slopes per pair.
template <typename T>
void pair_geometry(const T* positions, const int64_t* first, const int64_t* second, const T* shifts, int64_t pairs,
                   const int64_t* exponents, int64_t monomials_count, int64_t max_degree, T cutoff, bool polynomial,
                   T* distances, T* units, T* monomials, T* weights, T* slopes) {
    const T pi = static_cast<T>(M_PI);
    std::vector<T> powers(3 * (max_degree + 1));
    for (int64_t p = 0; p < pairs; ++p) {
        T v[3];
        for (int c = 0; c < 3; ++c) v[c] = positions[second[p] * 3 + c] - positions[first[p] * 3 + c] + shifts[p * 3 + c];
        const T d = std::sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
        distances[p] = d;
        T* u = units + p * 3;
        for (int c = 0; c < 3; ++c) {
            u[c] = v[c] / d;
            powers[c * (max_degree + 1)] = 1;
            for (int64_t k = 1; k <= max_degree; ++k)
                powers[c * (max_degree + 1) + k] = powers[c * (max_degree + 1) + k - 1] * u[c];
        }
        T* mono = monomials + p * monomials_count;
        for (int64_t n = 0; n < monomials_count; ++n) {
            const int64_t* e = exponents + n * 3;
            mono[n] = powers[e[0]] * powers[(max_degree + 1) + e[1]] * powers[2 * (max_degree + 1) + e[2]];
        }
        const bool inside = d < cutoff;
        if (polynomial) {
            const T x = d / cutoff, x2 = x * x, one_minus = T(1) - x;
            weights[p] = inside ? T(1) + x2 * x * (T(-10) + x * (T(15) - T(6) * x)) : T(0);
            slopes[p] = inside ? (T(-30) / cutoff) * x2 * one_minus * one_minus : T(0);
        } else {
            const T scaled = d * (pi / cutoff);
            weights[p] = inside ? T(0.5) * (std::cos(scaled) + T(1)) : T(0);
            slopes[p] = inside ? (T(-0.5) * pi / cutoff) * std::sin(scaled) : T(0);
        }
    }
}

// dE/dR (N, 3) from dE/dd (P,) and the derivative terms (dE/dY) D (P, 3 M): through the unit vectors'
// monomials, onto both atoms.
template <typename T>
void geometry_backward(const T* distance_gradient, const T* derivative_terms, const T* distances, const T* units,
                       const T* monomials, const int64_t* first, const int64_t* second, int64_t pairs,
                       int64_t monomials_count, T* gradient) {
    for (int64_t p = 0; p < pairs; ++p) {
        const T* terms = derivative_terms + p * 3 * monomials_count;
        const T* mono = monomials + p * monomials_count;
        const T* u = units + p * 3;
        T unit_gradient[3] = {0, 0, 0};
        for (int c = 0; c < 3; ++c)
            for (int64_t n = 0; n < monomials_count; ++n) unit_gradient[c] += terms[c * monomials_count + n] * mono[n];
        const T radial = unit_gradient[0] * u[0] + unit_gradient[1] * u[1] + unit_gradient[2] * u[2];
        for (int c = 0; c < 3; ++c) {
            const T g = (unit_gradient[c] - radial * u[c]) / distances[p] + distance_gradient[p] * u[c];
            gradient[second[p] * 3 + c] += g;
            gradient[first[p] * 3 + c] -= g;
        }
    }
}

// The per-atom weights of all layers packed for products from the left (cached, packed_matrix.h):
// projections x W_p^T (F -> 5F; 3F invariant) and back, exchange [x, invariants] W_x^T + b and back
// (F + n_D -> F + n_D), readout hidden layer x W_h^T + b and back.
template <typename T>
struct AtomWeights {
    std::shared_ptr<const Layers<T>> projection, projection_backward, exchange, exchange_backward, readout,
        readout_backward;

    AtomWeights(const at::Tensor& projection_weight, const at::Tensor& exchange_weight, const at::Tensor& exchange_bias,
                const at::Tensor& readout_weight, const at::Tensor& readout_bias) {
        const int64_t layers = projection_weight.size(0), P = projection_weight.size(1),
                      F = projection_weight.size(2), X = exchange_weight.size(1), H = readout_weight.size(0);
        const T* p = projection_weight.data_ptr<T>();
        const T* x = exchange_weight.data_ptr<T>();
        const T* xb = exchange_bias.data_ptr<T>();
        const T* r = readout_weight.data_ptr<T>();
        const T* rb = readout_bias.data_ptr<T>();
        projection = packed<T>(Role::kProjection, projection_weight, at::Tensor(), [&] {
            return layers_of<T>(layers, [&](int64_t t) { return PackedMatrix<T>(p + t * P * F, F, P, 1, F, nullptr); });
        });
        projection_backward = packed<T>(Role::kProjectionBackward, projection_weight, at::Tensor(), [&] {
            return layers_of<T>(layers, [&](int64_t t) { return PackedMatrix<T>(p + t * P * F, P, F, F, 1, nullptr); });
        });
        exchange = packed<T>(Role::kExchange, exchange_weight, exchange_bias, [&] {
            return layers_of<T>(layers, [&](int64_t t) { return PackedMatrix<T>(x + t * X * X, X, X, 1, X, xb + t * X); });
        });
        exchange_backward = packed<T>(Role::kExchangeBackward, exchange_weight, at::Tensor(), [&] {
            return layers_of<T>(layers, [&](int64_t t) { return PackedMatrix<T>(x + t * X * X, X, X, X, 1, nullptr); });
        });
        readout = packed<T>(Role::kReadout, readout_weight, readout_bias, [&] {
            return layers_of<T>(1, [&](int64_t) { return PackedMatrix<T>(r, F, H, 1, F, rb); });
        });
        readout_backward = packed<T>(Role::kReadoutBackward, readout_weight, at::Tensor(), [&] {
            return layers_of<T>(1, [&](int64_t) { return PackedMatrix<T>(r, H, F, F, 1, nullptr); });
        });
    }
};

// Exchange block of a layer after its attention updates: x1 = x + dx, chi1 = chi + dchi,
// [m, a] = [x1, C^T chi1^2] W_x^T + b (m: F features, a: n_D degree scales),
// x' = x1 + m, chi' = chi1 + (a E) chi1. Writes x', chi', and chi1 and a E for the backward pass.
template <typename T>
void exchange_forward(const PackedMatrix<T>& weight, const T* contraction, const T* expansion, int64_t atoms,
                      int64_t F, int64_t M, int64_t D, const T* x, const T* update, const T* chi, const T* ev_update,
                      T* x_out, T* chi_out, T* chi1, T* degree_scales) {
    const int64_t X = F + D;
    std::vector<T> input(atoms * X), mixed(atoms * X);
    for (int64_t a = 0; a < atoms; ++a) {
        T* in = input.data() + a * X;
#pragma omp simd
        for (int64_t f = 0; f < F; ++f) in[f] = x[a * F + f] + update[a * F + f];
        T* c1 = chi1 + a * M;
        for (int64_t m = 0; m < M; ++m) c1[m] = chi[a * M + m] + ev_update[a * M + m];
        for (int64_t l = 0; l < D; ++l) {
            T sum = 0;
            for (int64_t m = 0; m < M; ++m) sum += c1[m] * c1[m] * contraction[m * D + l];
            in[F + l] = sum;
        }
    }
    multiply_split_by_columns(weight, input.data(), atoms, X, mixed.data(), X, false);
    for (int64_t a = 0; a < atoms; ++a) {
        const T* in = input.data() + a * X;
        const T* mx = mixed.data() + a * X;
#pragma omp simd
        for (int64_t f = 0; f < F; ++f) x_out[a * F + f] = in[f] + mx[f];
        const T* c1 = chi1 + a * M;
        for (int64_t m = 0; m < M; ++m) {
            T scale = 0;
            for (int64_t l = 0; l < D; ++l) scale += mx[F + l] * expansion[l * M + m];
            degree_scales[a * M + m] = scale;
            chi_out[a * M + m] = c1[m] + scale * c1[m];
        }
    }
}

// Backward of exchange_forward: the gradients of x' and chi' (in place) become those of x1 and chi1.
template <typename T>
void exchange_backward(const PackedMatrix<T>& weight, const T* contraction, const T* expansion, int64_t atoms,
                       int64_t F, int64_t M, int64_t D, const T* chi1, const T* degree_scales, T* x_gradient,
                       T* chi_gradient) {
    const int64_t X = F + D;
    std::vector<T> mixed_gradient(atoms * X), input_gradient(atoms * X);
    for (int64_t a = 0; a < atoms; ++a) {
        T* g = mixed_gradient.data() + a * X;
        std::copy(x_gradient + a * F, x_gradient + (a + 1) * F, g);
        for (int64_t l = 0; l < D; ++l) {
            T sum = 0;
            for (int64_t m = 0; m < M; ++m) sum += chi_gradient[a * M + m] * chi1[a * M + m] * expansion[l * M + m];
            g[F + l] = sum;
        }
    }
    multiply_split_by_columns(weight, mixed_gradient.data(), atoms, X, input_gradient.data(), X, false);
    for (int64_t a = 0; a < atoms; ++a) {
        const T* g = input_gradient.data() + a * X;
#pragma omp simd
        for (int64_t f = 0; f < F; ++f) x_gradient[a * F + f] += g[f];
        for (int64_t m = 0; m < M; ++m) {
            T sum = 0;
            for (int64_t l = 0; l < D; ++l) sum += g[F + l] * contraction[m * D + l];
            T& gradient = chi_gradient[a * M + m];
            gradient = gradient * (T(1) + degree_scales[a * M + m]) + T(2) * chi1[a * M + m] * sum;
        }
    }
}

struct Saved {
    at::Tensor difference, spherical_saved, feature_filters, euclidean_filters, projections, scores, chi1,
        degree_scales;
};

std::tuple<at::Tensor, at::Tensor> energy_forces(
    const at::Tensor& atomic_numbers, const at::Tensor& positions_in, const at::Tensor& batch,
    int64_t num_structures, const at::Tensor& first_in, const at::Tensor& second_in, const at::Tensor& shifts_in,
    const at::Tensor& species_index, const at::Tensor& energy_shifts, const at::Tensor& energy_scales,
    const at::Tensor& embedding, const at::Tensor& radial_centres, double beta, const at::Tensor& radial_in_weight,
    const at::Tensor& radial_out_weight, const at::Tensor& radial_out_bias, const at::Tensor& monomial_exponents_in,
    const at::Tensor& harmonic_coefficients_in, const at::Tensor& harmonic_derivatives_in, const at::Tensor& parity,
    const at::Tensor& component_degree, double cutoff, bool polynomial_cutoff, const at::Tensor& projection,
    const at::Tensor& spherical_in_weight, const at::Tensor& spherical_in_bias,
    const at::Tensor& feature_spherical_out, const at::Tensor& euclidean_spherical_out,
    const at::Tensor& pair_contraction, const at::Tensor& exchange_weight, const at::Tensor& exchange_bias,
    const at::Tensor& exchange_contraction, const at::Tensor& expansion, const at::Tensor& readout_hidden_weight,
    const at::Tensor& readout_hidden_bias, const at::Tensor& readout_output_weight,
    const at::Tensor& readout_output_bias, int64_t heads) {
    at::NoGradGuard no_grad;
    const auto dtype = embedding.scalar_type();
    const at::Tensor positions = positions_in.to(dtype).contiguous(), shifts = shifts_in.to(dtype).contiguous(),
                     first = first_in.contiguous(), second = second_in.contiguous(),
                     monomial_exponents = monomial_exponents_in.contiguous(),
                     harmonic_coefficients = harmonic_coefficients_in.contiguous(),
                     harmonic_derivatives = harmonic_derivatives_in.contiguous();
    TORCH_CHECK(positions.dim() == 2 && positions.size(1) == 3, "so3krates: positions must be (N, 3)");
    TORCH_CHECK(first.scalar_type() == at::kLong && second.scalar_type() == at::kLong && first.numel() == second.numel() &&
                    shifts.sizes() == at::IntArrayRef({first.numel(), 3}),
                "so3krates: first, second (int64, P) and shifts (P, 3) disagree");
    const int64_t atoms = positions.size(0), pairs = first.numel(), features = embedding.size(1);
    const int64_t layers = projection.size(0), degrees = pair_contraction.size(2);
    const int64_t components = harmonic_coefficients.size(1), monomials_count = monomial_exponents.size(0);
    TORCH_CHECK(monomial_exponents.scalar_type() == at::kLong && monomial_exponents.size(1) == 3 &&
                    harmonic_coefficients.size(0) == monomials_count &&
                    harmonic_derivatives.sizes() == at::IntArrayRef({components, 3 * monomials_count}) &&
                    harmonic_coefficients.scalar_type() == dtype && harmonic_derivatives.scalar_type() == dtype,
                "so3krates: monomial exponents (M, 3) int64, harmonic coefficients (M, m) and derivatives (m, 3 M)");
    const int64_t* exponents = monomial_exponents.data_ptr<int64_t>();
    const int64_t max_degree = monomials_count == 0 ? 0 : *std::max_element(exponents, exponents + 3 * monomials_count);
    const auto options = embedding.options();

    // ----- geometry (per unordered pair) -----
    at::Tensor distances = at::empty({pairs}, options), units = at::empty({pairs, 3}, options);
    at::Tensor monomials = at::empty({pairs, monomials_count}, options);
    at::Tensor cutoff_weights = at::empty({pairs}, options), cutoff_slopes = at::empty({pairs}, options);
    AT_DISPATCH_FLOATING_TYPES(dtype, "so3krates_geometry", [&] {
        SO3KRATES_STAGE("geometry");
        pair_geometry<scalar_t>(positions.data_ptr<scalar_t>(), first.data_ptr<int64_t>(), second.data_ptr<int64_t>(),
                                shifts.data_ptr<scalar_t>(), pairs, monomial_exponents.data_ptr<int64_t>(),
                                monomials_count, max_degree, static_cast<scalar_t>(cutoff), polynomial_cutoff,
                                distances.data_ptr<scalar_t>(), units.data_ptr<scalar_t>(),
                                monomials.data_ptr<scalar_t>(), cutoff_weights.data_ptr<scalar_t>(),
                                cutoff_slopes.data_ptr<scalar_t>());
    });
    const at::Tensor harmonics = at::empty({pairs, components}, options);
    if (components > 0) AT_DISPATCH_FLOATING_TYPES(dtype, "so3krates_harmonics", [&] {
        SO3KRATES_STAGE("harmonics");
        const auto coefficients = packed<scalar_t>(Role::kHarmonics, harmonic_coefficients, at::Tensor(), [&] {
            return layers_of<scalar_t>(1, [&](int64_t) {
                return PackedMatrix<scalar_t>(harmonic_coefficients.data_ptr<scalar_t>(), monomials_count, components,
                                              components, 1, nullptr);
            });
        });
        (*coefficients)[0].multiply(monomials.data_ptr<scalar_t>(), pairs, monomials_count,
                                    harmonics.data_ptr<scalar_t>(), components, false);
    });
    at::Tensor radial_filters, radial_saved;
    {
        SO3KRATES_STAGE("radial_forward");
        std::tie(radial_filters, radial_saved) = so3krates::radial_forward(distances, radial_centres, beta,
                                                                           radial_in_weight, radial_out_weight,
                                                                           radial_out_bias);
    }

    // ----- forward through the layers, keeping what the backward pass needs -----
    for (const at::Tensor* weight : {&projection, &exchange_weight, &exchange_bias, &exchange_contraction, &expansion,
                                     &readout_hidden_weight, &readout_hidden_bias}) {
        TORCH_CHECK(weight->scalar_type() == dtype && weight->is_contiguous(),
                    "so3krates: the per-atom weights must be contiguous and of the embedding's dtype");
    }
    const int64_t mixed_width = exchange_weight.size(1);
    // per layer: the feature and the Euclidean filter (the invariant model: the feature filter only), and
    // the atom projections [Q, Q~, K, K~, V] ([Q, K, V])
    const int64_t filters_per_layer = degrees > 0 ? 2 : 1, projection_width = (degrees > 0 ? 5 : 3) * features;
    TORCH_CHECK(radial_filters.size(0) == filters_per_layer * layers,
                "so3krates: radial_in_weight must hold 2T filters (T without degrees)");
    TORCH_CHECK(projection.dim() == 3 && projection.size(1) == projection_width && projection.size(2) == features &&
                    exchange_weight.dim() == 3 && mixed_width == features + degrees &&
                    exchange_weight.size(2) == mixed_width && exchange_contraction.size(1) == components &&
                    exchange_contraction.size(2) == degrees && expansion.size(1) == degrees &&
                    expansion.size(2) == components && readout_hidden_weight.size(1) == features,
                "so3krates: per-atom weight shapes do not match the features and degrees");
    const at::Tensor species = species_index.index_select(0, atomic_numbers);
    at::Tensor x = embedding.index_select(0, species).contiguous();
    at::Tensor chi = at::zeros({atoms, components}, options);
    std::vector<Saved> saved;
    const at::Tensor no_filters = at::empty({pairs, 0}, options);  // the invariant model's Euclidean filters
    at::Tensor hidden_pre = at::empty({atoms, readout_hidden_weight.size(0)}, options);
    AT_DISPATCH_FLOATING_TYPES(dtype, "so3krates_layers_forward", [&] {
        using T = scalar_t;
        const AtomWeights<T> weights(projection, exchange_weight, exchange_bias, readout_hidden_weight,
                                     readout_hidden_bias);
        for (int64_t t = 0; t < layers; ++t) {
            Saved s;
            s.feature_filters = radial_filters.select(0, filters_per_layer * t);
            s.euclidean_filters = degrees > 0 ? radial_filters.select(0, 2 * t + 1) : no_filters;
            if (degrees == 0 || t == 0) {
                // no spherical filter part (the invariant model), or chi = 0: the spherical filter part is
                // one constant vector (in radial_out_bias)
                s.difference = chi;
                s.spherical_saved = chi;
            } else {
                SO3KRATES_STAGE("spherical_forward");
                std::tie(s.difference, s.spherical_saved) = so3krates::spherical_forward(
                    chi, first, second, pair_contraction[t], spherical_in_weight[t], spherical_in_bias[t],
                    feature_spherical_out[t], euclidean_spherical_out[t], s.feature_filters, s.euclidean_filters);
            }
            s.projections = at::empty({atoms, projection_width}, options);  // (N, 5F or 3F)
            {
                SO3KRATES_STAGE("projection");
                multiply_split_by_columns((*weights.projection)[t], x.data_ptr<T>(), atoms, features,
                                          s.projections.data_ptr<T>(), projection_width, false);
            }
            at::Tensor update, ev_update;
            {
                SO3KRATES_STAGE("pair_forward");
                std::tie(update, ev_update, s.scores) = so3krates::pair_forward(
                    s.projections, s.feature_filters, s.euclidean_filters, cutoff_weights, harmonics, parity,
                    component_degree, first, second, heads, degrees);
            }
            update = update.contiguous();
            ev_update = ev_update.contiguous();
            const at::Tensor x_next = at::empty_like(x), chi_next = at::empty_like(chi);
            SO3KRATES_STAGE("exchange_forward");
            s.chi1 = at::empty_like(chi);
            s.degree_scales = at::empty_like(chi);
            exchange_forward<T>((*weights.exchange)[t], exchange_contraction[t].data_ptr<T>(),
                                expansion[t].data_ptr<T>(), atoms, features, components, degrees, x.data_ptr<T>(),
                                update.data_ptr<T>(), chi.data_ptr<T>(), ev_update.data_ptr<T>(),
                                x_next.data_ptr<T>(), chi_next.data_ptr<T>(), s.chi1.data_ptr<T>(),
                                s.degree_scales.data_ptr<T>());
            x = x_next;
            chi = chi_next;
            saved.push_back(std::move(s));
        }
        SO3KRATES_STAGE("readout");
        multiply_split_by_columns((*weights.readout)[0], x.data_ptr<T>(), atoms, features, hidden_pre.data_ptr<T>(),
                                  hidden_pre.size(1), false);
    });
    const at::Tensor outputs = at::mv(at::silu(hidden_pre), readout_output_weight) + readout_output_bias;
    const at::Tensor scales = energy_scales.index_select(0, species);
    const at::Tensor atomic_energies = outputs.to(at::kDouble) * scales + energy_shifts.index_select(0, species);
    const at::Tensor energies =
        at::zeros({num_structures}, options.dtype(at::kDouble)).index_add_(0, batch, atomic_energies);

    // ----- backward: gradient of the sum of the energies -----
    const at::Tensor hidden_gradient =
        at::silu_backward(scales.to(dtype).unsqueeze(1) * readout_output_weight, hidden_pre).contiguous();
    const at::Tensor x_gradient = at::empty_like(x);
    const at::Tensor chi_gradient = at::zeros_like(chi);
    std::vector<at::Tensor> filter_gradients(filters_per_layer * layers);
    at::Tensor cutoff_gradient = at::zeros_like(cutoff_weights), harmonics_gradient = at::zeros_like(harmonics);
    AT_DISPATCH_FLOATING_TYPES(dtype, "so3krates_layers_backward", [&] {
        using T = scalar_t;
        const AtomWeights<T> weights(projection, exchange_weight, exchange_bias, readout_hidden_weight,
                                     readout_hidden_bias);
        {
            SO3KRATES_STAGE("readout_backward");
            multiply_split_by_columns((*weights.readout_backward)[0], hidden_gradient.data_ptr<T>(), atoms,
                                      hidden_gradient.size(1), x_gradient.data_ptr<T>(), features, false);
        }
        for (int64_t t = layers - 1; t >= 0; --t) {
            const Saved& s = saved[t];
            {
                SO3KRATES_STAGE("exchange_backward");
                exchange_backward<T>((*weights.exchange_backward)[t], exchange_contraction[t].data_ptr<T>(),
                                     expansion[t].data_ptr<T>(), atoms, features, components, degrees,
                                     s.chi1.data_ptr<T>(), s.degree_scales.data_ptr<T>(), x_gradient.data_ptr<T>(),
                                     chi_gradient.data_ptr<T>());
            }
            // attention blocks (per-pair chain)
            at::Tensor projection_gradient, filter_gradient, ev_filter_gradient, layer_cutoff_gradient,
                layer_harmonics_gradient;
            {
                SO3KRATES_STAGE("pair_backward");
                std::tie(projection_gradient, filter_gradient, ev_filter_gradient, layer_cutoff_gradient,
                         layer_harmonics_gradient) =
                    so3krates::pair_backward(x_gradient, chi_gradient, s.projections, s.feature_filters,
                                             s.euclidean_filters, cutoff_weights, harmonics, parity, component_degree,
                                             s.scores, first, second, heads, degrees);
            }
            cutoff_gradient.add_(layer_cutoff_gradient);
            harmonics_gradient.add_(layer_harmonics_gradient);
            projection_gradient = projection_gradient.contiguous();
            {
                SO3KRATES_STAGE("projection_backward");
                multiply_split_by_columns((*weights.projection_backward)[t], projection_gradient.data_ptr<T>(),
                                          atoms, projection_width, x_gradient.data_ptr<T>(), features, true);
            }
            filter_gradients[filters_per_layer * t] = filter_gradient;
            if (degrees > 0) filter_gradients[2 * t + 1] = ev_filter_gradient;
            if (degrees > 0 && t > 0) {
                SO3KRATES_STAGE("spherical_backward");
                chi_gradient.add_(so3krates::spherical_backward(
                    filter_gradient, ev_filter_gradient, s.difference, s.spherical_saved, pair_contraction[t],
                    spherical_in_weight[t], feature_spherical_out[t], euclidean_spherical_out[t], first, second,
                    atoms));
            }
        }
    });

    // ----- geometry backward -----
    at::Tensor distance_gradient;
    {
        SO3KRATES_STAGE("radial_backward");
        distance_gradient = (cutoff_gradient * cutoff_slopes +
                             so3krates::radial_backward(filter_gradients, distances, radial_centres, beta,
                                                        radial_in_weight, radial_out_weight, radial_saved))
                                .contiguous();
    }
    const at::Tensor derivative_terms = at::empty({pairs, 3 * monomials_count}, options);  // (P, 3 M)
    if (components > 0) AT_DISPATCH_FLOATING_TYPES(dtype, "so3krates_derivative_terms", [&] {
        SO3KRATES_STAGE("derivative_terms");
        const auto derivatives = packed<scalar_t>(Role::kHarmonicDerivatives, harmonic_derivatives, at::Tensor(), [&] {
            return layers_of<scalar_t>(1, [&](int64_t) {
                return PackedMatrix<scalar_t>(harmonic_derivatives.data_ptr<scalar_t>(), components,
                                              3 * monomials_count, 3 * monomials_count, 1, nullptr);
            });
        });
        (*derivatives)[0].multiply(harmonics_gradient.data_ptr<scalar_t>(), pairs, components,
                                   derivative_terms.data_ptr<scalar_t>(), 3 * monomials_count, false);
    });
    at::Tensor gradient = at::zeros({atoms, 3}, options);
    AT_DISPATCH_FLOATING_TYPES(dtype, "so3krates_geometry_backward", [&] {
        SO3KRATES_STAGE("geometry_backward");
        geometry_backward<scalar_t>(distance_gradient.data_ptr<scalar_t>(), derivative_terms.data_ptr<scalar_t>(),
                                    distances.data_ptr<scalar_t>(), units.data_ptr<scalar_t>(),
                                    monomials.data_ptr<scalar_t>(), first.data_ptr<int64_t>(),
                                    second.data_ptr<int64_t>(), pairs, monomials_count, gradient.data_ptr<scalar_t>());
    });
    return {energies, gradient};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(so3krates, m) {
    m.def("energy_forces(Tensor atomic_numbers, Tensor positions, Tensor batch, int num_structures, Tensor first, "
          "Tensor second, Tensor shifts, Tensor species_index, Tensor energy_shifts, Tensor energy_scales, "
          "Tensor embedding, Tensor radial_centres, float beta, Tensor radial_in_weight, Tensor radial_out_weight, "
          "Tensor radial_out_bias, Tensor monomial_exponents, Tensor harmonic_coefficients, "
          "Tensor harmonic_derivatives, Tensor parity, Tensor component_degree, float cutoff, "
          "bool polynomial_cutoff, Tensor projection, Tensor spherical_in_weight, Tensor spherical_in_bias, "
          "Tensor feature_spherical_out, Tensor euclidean_spherical_out, Tensor pair_contraction, "
          "Tensor exchange_weight, Tensor exchange_bias, Tensor exchange_contraction, Tensor expansion, "
          "Tensor readout_hidden_weight, Tensor readout_hidden_bias, Tensor readout_output_weight, "
          "Tensor readout_output_bias, int heads) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(so3krates, CPU, m) { m.impl("energy_forces", &energy_forces); }
