// Energy and forces of the whole SO3krates model in one operator, on the CPU.
//
// Registered as torch.ops.so3krates.energy_forces; its Python spec is FastSO3krates.forward in
// so3krates_openmm/model/fast.py (kernels="torch"), which it computes with the same operators
// (so3krates_kernels.h) and the same per-atom products, so that the TorchScript module calls one
// operator instead of several hundred small ones. The per-pair geometry (distances, unit vectors,
// harmonics as polynomials of the unit vector, cutoff weights) and its backward onto the atoms are
// plain loops here.
//
// Layouts as in FastSO3krates (its buffers are passed as they are): P unordered pairs, r_ij =
// R_j - R_i + shift (Å); monomial_exponents (M, 3) int64, harmonic_coefficients (M, m),
// harmonic_derivatives (m, 3 M); per-layer weights stacked over the T layers.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#include "so3krates_kernels.h"

namespace {

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
    const int64_t max_degree = monomial_exponents.max().item<int64_t>();
    const auto options = embedding.options();

    // ----- geometry (per unordered pair) -----
    at::Tensor distances = at::empty({pairs}, options), units = at::empty({pairs, 3}, options);
    at::Tensor monomials = at::empty({pairs, monomials_count}, options);
    at::Tensor cutoff_weights = at::empty({pairs}, options), cutoff_slopes = at::empty({pairs}, options);
    AT_DISPATCH_FLOATING_TYPES(dtype, "so3krates_geometry", [&] {
        pair_geometry<scalar_t>(positions.data_ptr<scalar_t>(), first.data_ptr<int64_t>(), second.data_ptr<int64_t>(),
                                shifts.data_ptr<scalar_t>(), pairs, monomial_exponents.data_ptr<int64_t>(),
                                monomials_count, max_degree, static_cast<scalar_t>(cutoff), polynomial_cutoff,
                                distances.data_ptr<scalar_t>(), units.data_ptr<scalar_t>(),
                                monomials.data_ptr<scalar_t>(), cutoff_weights.data_ptr<scalar_t>(),
                                cutoff_slopes.data_ptr<scalar_t>());
    });
    const at::Tensor harmonics = at::mm(monomials, harmonic_coefficients);
    at::Tensor radial_filters, radial_saved;
    std::tie(radial_filters, radial_saved) =
        so3krates::radial_forward(distances, radial_centres, beta, radial_in_weight, radial_out_weight, radial_out_bias);

    // ----- forward through the layers, keeping what the backward pass needs -----
    const at::Tensor species = species_index.index_select(0, atomic_numbers);
    at::Tensor x = embedding.index_select(0, species);
    at::Tensor chi = at::zeros({atoms, components}, options);
    std::vector<Saved> saved;
    for (int64_t t = 0; t < layers; ++t) {
        Saved s;
        s.feature_filters = radial_filters.select(0, 2 * t);
        s.euclidean_filters = radial_filters.select(0, 2 * t + 1);
        if (t == 0) {
            // chi = 0: the spherical filter part is one constant vector (in radial_out_bias)
            s.difference = chi;
            s.spherical_saved = chi;
        } else {
            std::tie(s.difference, s.spherical_saved) = so3krates::spherical_forward(
                chi, first, second, pair_contraction[t], spherical_in_weight[t], spherical_in_bias[t],
                feature_spherical_out[t], euclidean_spherical_out[t], s.feature_filters, s.euclidean_filters);
        }
        s.projections = at::mm(x, projection[t].t());  // (N, 5F): Q, Q~, K, K~, V
        at::Tensor update, ev_update;
        std::tie(update, ev_update, s.scores) =
            so3krates::pair_forward(s.projections, s.feature_filters, s.euclidean_filters, cutoff_weights, harmonics,
                                    parity, component_degree, first, second, heads, degrees);
        const at::Tensor x1 = x + update;
        s.chi1 = chi + ev_update;
        const at::Tensor invariants = at::mm(s.chi1 * s.chi1, exchange_contraction[t]);
        const at::Tensor mixed = at::addmm(exchange_bias[t], at::cat({x1, invariants}, 1), exchange_weight[t].t());
        s.degree_scales = at::mm(mixed.narrow(1, features, degrees), expansion[t]);
        x = x1 + mixed.narrow(1, 0, features);
        chi = s.chi1 + s.degree_scales * s.chi1;
        saved.push_back(std::move(s));
    }
    const at::Tensor hidden_pre = at::addmm(readout_hidden_bias, x, readout_hidden_weight.t());
    const at::Tensor outputs = at::mv(at::silu(hidden_pre), readout_output_weight) + readout_output_bias;
    const at::Tensor scales = energy_scales.index_select(0, species);
    const at::Tensor atomic_energies = outputs.to(at::kDouble) * scales + energy_shifts.index_select(0, species);
    const at::Tensor energies =
        at::zeros({num_structures}, options.dtype(at::kDouble)).index_add_(0, batch, atomic_energies);

    // ----- backward: gradient of the sum of the energies -----
    const at::Tensor hidden_gradient =
        at::silu_backward(scales.to(dtype).unsqueeze(1) * readout_output_weight, hidden_pre);
    at::Tensor x_gradient = at::mm(hidden_gradient, readout_hidden_weight);
    at::Tensor chi_gradient = at::zeros_like(chi);
    std::vector<at::Tensor> filter_gradients(2 * layers);
    at::Tensor cutoff_gradient = at::zeros_like(cutoff_weights), harmonics_gradient = at::zeros_like(harmonics);
    for (int64_t t = layers - 1; t >= 0; --t) {
        const Saved& s = saved[t];
        // exchange block
        const at::Tensor mixed_gradient = at::cat({x_gradient, at::mm(chi_gradient * s.chi1, expansion[t].t())}, 1);
        const at::Tensor input_gradient = at::mm(mixed_gradient, exchange_weight[t]);
        x_gradient = x_gradient + input_gradient.narrow(1, 0, features);
        chi_gradient = chi_gradient * (1.0 + s.degree_scales) +
                       2.0 * s.chi1 * at::mm(input_gradient.narrow(1, features, degrees), exchange_contraction[t].t());
        // attention blocks (per-pair chain)
        at::Tensor projection_gradient, filter_gradient, ev_filter_gradient, layer_cutoff_gradient,
            layer_harmonics_gradient;
        std::tie(projection_gradient, filter_gradient, ev_filter_gradient, layer_cutoff_gradient,
                 layer_harmonics_gradient) =
            so3krates::pair_backward(x_gradient, chi_gradient, s.projections, s.feature_filters, s.euclidean_filters,
                                     cutoff_weights, harmonics, parity, component_degree, s.scores, first, second,
                                     heads, degrees);
        cutoff_gradient.add_(layer_cutoff_gradient);
        harmonics_gradient.add_(layer_harmonics_gradient);
        x_gradient = at::addmm(x_gradient, projection_gradient, projection[t]);
        filter_gradients[2 * t] = filter_gradient;
        filter_gradients[2 * t + 1] = ev_filter_gradient;
        if (t > 0) {
            chi_gradient = chi_gradient + so3krates::spherical_backward(
                                              filter_gradient, ev_filter_gradient, s.difference, s.spherical_saved,
                                              pair_contraction[t], spherical_in_weight[t], feature_spherical_out[t],
                                              euclidean_spherical_out[t], first, second, atoms);
        }
    }

    // ----- geometry backward -----
    const at::Tensor distance_gradient =
        (cutoff_gradient * cutoff_slopes +
         so3krates::radial_backward(filter_gradients, distances, radial_centres, beta, radial_in_weight,
                                    radial_out_weight, radial_saved))
            .contiguous();
    const at::Tensor derivative_terms = at::mm(harmonics_gradient, harmonic_derivatives);  // (P, 3 M)
    at::Tensor gradient = at::zeros({atoms, 3}, options);
    AT_DISPATCH_FLOATING_TYPES(dtype, "so3krates_geometry_backward", [&] {
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
