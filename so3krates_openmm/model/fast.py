"""Energy and forces of SO3krates in one pass with a hand-derived backward (the fast path).

:class:`~so3krates_openmm.model.so3krates.SO3krates` is the readable reference:
it computes the energy and gets forces by autograd. :class:`FastSO3krates`
computes exactly the same equations (the same parameters, the same order of
the sums up to rounding) and the forces ``-dE/dR`` by a backward pass written
out by hand: the weights are frozen, so each forward matrix product needs one
backward product for the input gradient and nothing else, and no autograd
graph is recorded.

With ``kernels="torch"`` everything runs as PyTorch operations (any device).
With ``kernels="fused"`` tensors on the CPU go through one C++ operator for
the whole energy and forces (``torch.ops.so3krates.energy_forces``,
``csrc/model.cpp``, built by :mod:`so3krates_openmm.model.kernels`; tensors
on other devices take the PyTorch route). It runs the per-pair geometry and
the exchange blocks as plain loops, the per-atom products (projections,
exchange, readout) in AVX2/FMA register tiles over weights packed once and
kept between calls, and as C++/OpenMP operators: the per-pair chain of each
layer (filter output times ``q_i k_j`` per head, cutoff weight, messages,
scatter onto atoms, and its backward),
which never materialises pair x F intermediates, and the filter networks
(the radial parts of all filters at once: they depend only on the distances;
the spherical parts per layer), which go through the pairs in cache-sized
blocks. The methods :meth:`FastSO3krates.radial_forward`,
:meth:`~FastSO3krates.pair_forward` and the others are the PyTorch route and
the executable spec of the operator of the same name
(``torch.ops.so3krates.<name>``). In the PyTorch route the big products
(filter layers, projections) are ``torch.mm``/``addmm_`` (``addmm`` with a
bias is avoided: TorchScript splits it into a product and an out-of-place sum).

Conventions as in the reference: P unordered pairs (i = first, j = second),
``r_ij = R_j - R_i + shift`` in Å; the harmonics of the reversed pair follow
from parity. Energies are float64, gradients in the model dtype.

The module copies the model's weights into fused layouts when it is built:
build it again after changing the weights (it is an inference module).
"""

from __future__ import annotations

import itertools
import math
from typing import List, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional

from so3krates_openmm.model.basis import SphericalHarmonics
from so3krates_openmm.model.kernels import load as load_kernels
from so3krates_openmm.model.so3krates import SO3krates

KERNELS = ("fused", "torch")


def harmonic_polynomials(degrees: List[int]) -> Tuple[Tensor, Tensor, Tensor]:
    """The model's real spherical harmonics as polynomials in the unit vector's components.

    Every component ``Y_m(x, y, z)`` of :class:`SphericalHarmonics` is a
    polynomial of degree at most ``l``; its coefficients over the monomials
    ``x^a y^b z^c`` (a + b + c <= max degree) are recovered by an exact linear
    fit in float64 to the reference implementation (the single definition of
    the harmonics). Returns the monomial exponents (M, 3) int64, the
    coefficients (M, m_tot) and those of the three partial derivatives
    (m_tot, 3 M): ``dY_m/dx_c = sum_n mono_n D[m, c M + n]``. No degrees (the invariant model): no
    monomials, all three empty.
    """
    if not degrees:
        return torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 0, dtype=torch.float64), torch.zeros(
            0, 0, dtype=torch.float64
        )
    top = max(degrees)
    exponents = [e for e in itertools.product(range(top + 1), repeat=3) if sum(e) <= top]
    exponents_tensor = torch.tensor(exponents, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(4 * len(exponents) + 16, 3, generator=generator, dtype=torch.float64) * 2.0 - 1.0
    monomials = torch.prod(points.unsqueeze(1) ** exponents_tensor.to(torch.float64), dim=-1)
    values = SphericalHarmonics(degrees)(points)
    coefficients = torch.linalg.lstsq(monomials, values).solution
    residual = float((monomials @ coefficients - values).abs().max())
    if residual > 1e-12:
        raise RuntimeError(
            f"the spherical harmonics are not polynomials of degree <= {top} (fit residual {residual:.1e})"
        )
    derivative = torch.zeros(len(exponents), 3, coefficients.shape[1], dtype=torch.float64)
    index = {e: n for n, e in enumerate(exponents)}
    for n, exponent in enumerate(exponents):
        for axis in range(3):
            if exponent[axis] == 0:
                continue
            lower = list(exponent)
            lower[axis] -= 1
            derivative[index[tuple(lower)], axis] += exponent[axis] * coefficients[n]
    return exponents_tensor, coefficients, derivative.permute(2, 1, 0).reshape(coefficients.shape[1], -1)


class FastSO3krates(nn.Module):
    """Energies and forces of a :class:`SO3krates` model by a hand-derived backward pass.

    Both configurations: the equivariant model and the invariant one (``degrees=()``), which has no
    Euclidean variables, harmonics or spherical filter parts, one filter per layer and the atom
    projections ``[Q, K, V]`` instead of ``[Q, Q~, K, K~, V]``; its exchange block is the linear
    update of the features.

    Args:
        model: the reference model (its dtype is the compute dtype).
        kernels: ``"fused"`` (energy and forces in one C++/OpenMP operator on
            the CPU; builds the operators on first use) or ``"torch"``.
    """

    __constants__ = ["use_fused", "equivariant"]

    def __init__(self, model: SO3krates, kernels: str = "torch") -> None:
        super().__init__()
        if kernels not in KERNELS:
            raise ValueError(f"unknown kernels {kernels!r}; use one of {KERNELS}")
        if kernels == "fused":
            load_kernels()
        self.use_fused = kernels == "fused"
        config = model.config
        dtype = model.dtype
        degrees = [int(l) for l in config.degrees]
        self.equivariant = bool(config.equivariant)
        self.features = int(config.features)
        self.heads = int(config.heads)
        self.n_degrees = len(degrees)
        self.head_width = self.features // self.heads
        self.degree_width = self.features // self.n_degrees if degrees else 0
        self.spherical_width = self.features // 4
        self.m_tot = int(config.m_tot)
        self.n_layers = int(config.layers)
        self.cutoff = float(config.cutoff)
        self.polynomial_cutoff = config.cutoff_function == "polynomial"
        self.beta = float(model.radial_basis.beta)

        def constant(name: str, value: Tensor) -> None:
            self.register_buffer(name, value.detach().clone().contiguous())

        constant("species_index", model.species_index)
        constant("energy_shifts", model.energy_shifts)
        constant("energy_scales", model.energy_scales)
        constant("embedding", model.embedding.weight)
        constant("radial_centres", model.radial_basis.centres.to(dtype))
        constant("parity", model.parity.to(dtype))
        constant(
            "component_degree",
            torch.repeat_interleave(
                torch.arange(len(degrees)), torch.tensor([2 * l + 1 for l in degrees], dtype=torch.long)
            ),
        )
        exponents, coefficients, derivative = harmonic_polynomials(degrees)
        constant("monomial_exponents", exponents)
        constant("harmonic_coefficients", coefficients.to(dtype))
        constant("harmonic_derivatives", derivative.to(dtype))
        self.max_degree = max(degrees, default=0)
        self.n_monomials = int(exponents.shape[0])
        layers = list(model.layers)

        def filters_of(layer: nn.Module) -> List[nn.Module]:
            """The layer's filter networks: feature filter, then the Euclidean filter (equivariant model)."""
            return [layer.feature_filter, layer.euclidean_filter] if self.equivariant else [layer.feature_filter]

        # First radial layer of all filters (2T of the equivariant model, T of the invariant one), (2T F, K + 1):
        # the bias is the last column (times a basis "function" 1).
        constant("radial_in_weight", torch.cat([
            torch.cat([f.radial_in.weight, f.radial_in.bias.unsqueeze(1)], 1)
            for layer in layers for f in filters_of(layer)
        ]))
        self.radial_basis_size = int(config.radial_basis_size)
        euclidean_only = (
            "spherical_in_weight", "spherical_in_bias", "feature_spherical_out", "euclidean_spherical_out",
        )
        stacks: dict = {name: [] for name in (
            "projection", "radial_out_weight", "filter_bias", "pair_contraction",
            "exchange_weight", "exchange_bias", "exchange_contraction", "expansion",
        ) + (euclidean_only if self.equivariant else ())}
        for layer in layers:
            invariant, exchange = layer.feature_attention, layer.exchange
            stacks["radial_out_weight"] += [f.radial_out.weight for f in filters_of(layer)]
            stacks["pair_contraction"].append(layer.contraction.to(dtype))
            stacks["exchange_weight"].append(exchange.linear.weight)
            stacks["exchange_bias"].append(exchange.linear.bias)
            stacks["exchange_contraction"].append(exchange.contraction.to(dtype))
            stacks["expansion"].append(exchange.expansion.to(dtype))
            if not self.equivariant:
                # Atom projections [Q, K, V], queries with their score scale; filters of the radial basis only.
                stacks["projection"].append(torch.cat([
                    invariant.query.weight * invariant.scale, invariant.key.weight, invariant.value.weight,
                ]))
                stacks["filter_bias"].append(layer.feature_filter.radial_out.bias.unsqueeze(0))
                continue
            ev = layer.euclidean_attention
            feature_filter, euclidean_filter = layer.feature_filter, layer.euclidean_filter
            # Atom projections in the order [Q, Q~, K, K~, V], queries with their score scale.
            stacks["projection"].append(torch.cat([
                invariant.query.weight * invariant.scale, ev.query.weight * ev.scale,
                invariant.key.weight, ev.key.weight, invariant.value.weight,
            ]))
            stacks["filter_bias"].append(torch.stack([
                feature_filter.radial_out.bias + feature_filter.spherical_out.bias,
                euclidean_filter.radial_out.bias + euclidean_filter.spherical_out.bias,
            ]))
            stacks["spherical_in_weight"].append(
                torch.cat([feature_filter.spherical_in.weight, euclidean_filter.spherical_in.weight])
            )
            stacks["spherical_in_bias"].append(
                torch.cat([feature_filter.spherical_in.bias, euclidean_filter.spherical_in.bias])
            )
            stacks["feature_spherical_out"].append(feature_filter.spherical_out.weight)
            stacks["euclidean_spherical_out"].append(euclidean_filter.spherical_out.weight)
            if not torch.equal(exchange.expansion, ev.expansion):
                raise ValueError("the layer's degree expansion matrices differ")
        filter_bias = torch.stack(stacks.pop("filter_bias"))  # (T, 2, F); (T, 1, F) without degrees
        for name, values in stacks.items():
            constant(name, torch.stack(values))
        if self.equivariant:
            # Output biases of the 2T filters (both output layers' biases; in the first layer chi = 0, so
            # every delta_ij = 0 and the spherical part is one constant vector, folded in here).
            spherical = functional.silu(self.spherical_in_bias[0])
            first_layer = torch.stack([
                self.feature_spherical_out[0] @ spherical[: self.spherical_width],
                self.euclidean_spherical_out[0] @ spherical[self.spherical_width :],
            ])
            filter_bias = torch.cat([filter_bias[:1] + first_layer, filter_bias[1:]])
        else:
            # the fused operator's arguments of the spherical filter parts: none without degrees
            for name in euclidean_only:
                shape = (self.n_layers, 0) if name == "spherical_in_bias" else (self.n_layers, 0, 0)
                constant(name, torch.zeros(shape, dtype=dtype))
        constant("radial_out_bias", filter_bias.flatten(0, 1))
        constant("readout_hidden_weight", model.readout.hidden.weight)
        constant("readout_hidden_bias", model.readout.hidden.bias)
        constant("readout_output_weight", model.readout.output.weight.reshape(-1))
        constant("readout_output_bias", model.readout.output.bias)

    def forward(
        self,
        atomic_numbers: Tensor,
        positions: Tensor,
        batch: Tensor,
        num_structures: int,
        first: Tensor,
        second: Tensor,
        shifts: Tensor,
    ) -> Tuple[Tensor, Tensor]:
        """Total energies (B,) float64 and their gradient ``dE/dR`` (N, 3) per Å, model dtype.

        Inputs as for :meth:`SO3krates.energy_from_neighbours` (positions in Å,
        each unordered pair once). Forces are minus the gradient.
        """
        # The gradient is derived by hand: nothing is recorded for autograd.
        with torch.no_grad():
            if self.use_fused and positions.device.type == "cpu":
                # everything below in one C++ operator (csrc/model.cpp)
                return torch.ops.so3krates.energy_forces(
                    atomic_numbers, positions, batch, num_structures, first, second, shifts,
                    self.species_index, self.energy_shifts, self.energy_scales, self.embedding, self.radial_centres,
                    self.beta, self.radial_in_weight, self.radial_out_weight, self.radial_out_bias,
                    self.monomial_exponents, self.harmonic_coefficients, self.harmonic_derivatives, self.parity,
                    self.component_degree, self.cutoff, self.polynomial_cutoff, self.projection,
                    self.spherical_in_weight, self.spherical_in_bias, self.feature_spherical_out,
                    self.euclidean_spherical_out, self.pair_contraction, self.exchange_weight, self.exchange_bias,
                    self.exchange_contraction, self.expansion, self.readout_hidden_weight, self.readout_hidden_bias,
                    self.readout_output_weight, self.readout_output_bias, self.heads,
                )
            dtype = self.embedding.dtype
            positions = positions.to(dtype)
            n_atoms = positions.shape[0]
            n_pairs = first.shape[0]
            features = self.features
            species = self.species_index[atomic_numbers]

            # ----- geometry (per unordered pair) -----
            vectors = positions.index_select(0, second) - positions.index_select(0, first) + shifts.to(dtype)
            distances = torch.linalg.vector_norm(vectors, dim=1)
            unit_vectors = vectors / distances.unsqueeze(-1)
            # the invariant model has no Euclidean parts: its harmonics and Euclidean filters are (P, 0)
            no_components = vectors.new_zeros(n_pairs, 0)
            monomials = no_components
            harmonics = no_components
            if self.equivariant:
                power_list = [torch.ones_like(unit_vectors), unit_vectors]
                for _ in range(2, self.max_degree + 1):
                    power_list.append(power_list[-1] * unit_vectors)
                powers = torch.stack(power_list, 2)  # (P, 3, max degree + 1)
                monomials = (
                    powers[:, 0].index_select(1, self.monomial_exponents[:, 0])
                    * powers[:, 1].index_select(1, self.monomial_exponents[:, 1])
                    * powers[:, 2].index_select(1, self.monomial_exponents[:, 2])
                )
                harmonics = monomials @ self.harmonic_coefficients
            scaled = distances * (math.pi / self.cutoff)
            inside = distances < self.cutoff
            if self.polynomial_cutoff:
                x = distances / self.cutoff
                x2 = x * x
                cutoff_weights = torch.where(inside, 1.0 + x2 * x * (-10.0 + x * (15.0 - 6.0 * x)), torch.zeros_like(x))
                one_minus = 1.0 - x
                cutoff_slopes = torch.where(
                    inside, (-30.0 / self.cutoff) * x2 * one_minus * one_minus, torch.zeros_like(x)
                )
            else:
                cutoff_weights = torch.where(inside, 0.5 * (torch.cos(scaled) + 1.0), torch.zeros_like(scaled))
                cutoff_slopes = torch.where(
                    inside, (-0.5 * math.pi / self.cutoff) * torch.sin(scaled), torch.zeros_like(scaled)
                )
            # radial parts of all 2T filters (2T, P, F; T without degrees), with their output biases
            radial_filters, radial_saved = self.radial_forward(distances)

            # ----- forward through the layers, keeping what the backward pass needs -----
            x = self.embedding.index_select(0, species)
            chi = torch.zeros(n_atoms, self.m_tot, dtype=dtype, device=positions.device)
            saved: List[List[Tensor]] = []
            for t in range(self.n_layers):
                if not self.equivariant:
                    # x1 = x + dx, then the exchange block's linear update x' = x1 + W x1 + b
                    feature_filters = radial_filters[t]
                    projections = x @ self.projection[t].t()  # (N, 3F): Q, K, V
                    update, _, scores = self.pair_forward(
                        projections, feature_filters, no_components, cutoff_weights, harmonics, first, second
                    )
                    x1 = x + update
                    x = x1 + torch.addmm(self.exchange_bias[t], x1, self.exchange_weight[t].t())
                    saved.append([feature_filters, projections, scores])
                    continue
                feature_filters = radial_filters[2 * t]
                euclidean_filters = radial_filters[2 * t + 1]
                if t == 0:
                    # chi = 0: every delta_ij is 0, the spherical filter part is one constant vector
                    # (in radial_out_bias; its gradient with respect to chi vanishes)
                    difference = chi
                    spherical_saved = chi
                else:
                    difference, spherical_saved = self.spherical_forward(
                        t, chi, first, second, feature_filters, euclidean_filters
                    )
                projections = x @ self.projection[t].t()  # (N, 5F): Q, Q~, K, K~, V
                update, ev_update, scores = self.pair_forward(
                    projections, feature_filters, euclidean_filters, cutoff_weights, harmonics, first, second
                )
                x1 = x + update
                chi1 = chi + ev_update
                invariants = (chi1 * chi1) @ self.exchange_contraction[t]
                mixed = torch.addmm(self.exchange_bias[t], torch.cat([x1, invariants], 1), self.exchange_weight[t].t())
                degree_scales = mixed[:, features:] @ self.expansion[t]
                saved.append(
                    [
                        difference, spherical_saved, feature_filters, euclidean_filters,
                        projections, scores, chi1, degree_scales,
                    ]
                )
                x = x1 + mixed[:, :features]
                chi = chi1 + degree_scales * chi1

            hidden_pre = functional.linear(x, self.readout_hidden_weight, self.readout_hidden_bias)
            outputs = functional.silu(hidden_pre) @ self.readout_output_weight + self.readout_output_bias
            atomic_energies = outputs.double() * self.energy_scales[species] + self.energy_shifts[species]
            energies = torch.zeros(num_structures, dtype=torch.float64, device=positions.device).index_add_(
                0, batch, atomic_energies
            )

            # ----- backward: gradient of the sum of the energies -----
            output_gradient = self.energy_scales[species].to(dtype)
            hidden_gradient = torch.ops.aten.silu_backward(
                output_gradient.unsqueeze(1) * self.readout_output_weight, hidden_pre
            )
            x_gradient = hidden_gradient @ self.readout_hidden_weight
            chi_gradient = torch.zeros_like(chi)
            filter_gradients: List[Tensor] = []
            cutoff_gradient = torch.zeros_like(cutoff_weights)
            harmonics_gradient = torch.zeros_like(harmonics)
            for t in range(self.n_layers - 1, -1, -1):
                if not self.equivariant:
                    feature_filters, projections, scores = saved[t]
                    x_gradient = torch.addmm(x_gradient, x_gradient, self.exchange_weight[t])
                    projection_gradient, filter_gradient, _, layer_cutoff_gradient, _ = self.pair_backward(
                        x_gradient, chi_gradient, projections, feature_filters, no_components,
                        cutoff_weights, harmonics, scores, first, second,
                    )
                    cutoff_gradient = cutoff_gradient + layer_cutoff_gradient
                    x_gradient = torch.addmm(x_gradient, projection_gradient, self.projection[t])
                    filter_gradients.append(filter_gradient)
                    continue
                (
                    difference, spherical_saved, feature_filters, euclidean_filters,
                    projections, scores, chi1, degree_scales,
                ) = saved[t]
                # exchange block
                mixed_gradient = torch.cat([x_gradient, ((chi_gradient * chi1) @ self.expansion[t].t())], 1)
                input_gradient = mixed_gradient @ self.exchange_weight[t]
                x_gradient = x_gradient + input_gradient[:, :features]
                chi_gradient = chi_gradient * (1.0 + degree_scales) + 2.0 * chi1 * (
                    input_gradient[:, features:] @ self.exchange_contraction[t].t()
                )
                # attention blocks (per-pair chain)
                (
                    projection_gradient, filter_gradient, ev_filter_gradient,
                    layer_cutoff_gradient, layer_harmonics_gradient,
                ) = self.pair_backward(
                    x_gradient, chi_gradient, projections, feature_filters, euclidean_filters,
                    cutoff_weights, harmonics, scores, first, second,
                )
                cutoff_gradient = cutoff_gradient + layer_cutoff_gradient
                harmonics_gradient = harmonics_gradient + layer_harmonics_gradient
                x_gradient = torch.addmm(x_gradient, projection_gradient, self.projection[t])
                # filter networks (the radial parts after the loop, in layer order)
                filter_gradients += [ev_filter_gradient, filter_gradient]
                if t > 0:
                    chi_gradient = chi_gradient + self.spherical_backward(
                        t, filter_gradient, ev_filter_gradient, difference, spherical_saved, first, second, n_atoms
                    )

            # ----- geometry backward -----
            filter_gradients.reverse()
            distance_gradient = cutoff_gradient * cutoff_slopes + self.radial_backward(
                filter_gradients, distances, radial_saved
            )
            vector_gradient = distance_gradient.unsqueeze(-1) * unit_vectors
            if self.equivariant:  # through the harmonics
                derivative_terms = harmonics_gradient @ self.harmonic_derivatives  # (P, 3 M)
                unit_gradient = (
                    derivative_terms.view(n_pairs, 3, self.n_monomials) * monomials.unsqueeze(1)
                ).sum(-1)
                radial_part = (unit_gradient * unit_vectors).sum(1, keepdim=True)
                tangential = (unit_gradient - radial_part * unit_vectors) / distances.unsqueeze(-1)
                vector_gradient = tangential + vector_gradient
            gradient = (
                torch.zeros_like(positions)
                .index_add_(0, second, vector_gradient)
                .index_add_(0, first, -vector_gradient)
            )
            return energies, gradient

    def radial_forward(self, distances: Tensor) -> Tuple[Tensor, Tensor]:
        """The radial parts of all 2T filters, ``W_out silu(W_in e(d) + b_in) + b_out`` (2T, P, F)
        in layer order (feature, Euclidean filter; the T feature filters of the invariant model), and
        what :meth:`radial_backward` needs.

        ``b_out`` are :attr:`radial_out_bias` (with the first layer's constant spherical part);
        the later layers' spherical parts are added by the caller. The fused operator keeps
        ``silu'`` of the hidden features (2T, P, F); the PyTorch route the pre-activations (2T F, P).
        """
        offsets = torch.exp(-distances).unsqueeze(-1) - self.radial_centres
        radial_basis = torch.exp(-self.beta * offsets * offsets)
        # Hidden features transposed, (2T F, P): each filter's block is contiguous, so the
        # backward pass writes its gradient in place.
        radial_pre = self.radial_in_weight @ torch.cat([radial_basis, torch.ones_like(distances).unsqueeze(1)], 1).t()
        radial = functional.silu(radial_pre).view(self.radial_out_weight.shape[0], self.features, distances.shape[0])
        filters = torch.baddbmm(
            self.radial_out_bias.unsqueeze(1), radial.transpose(1, 2), self.radial_out_weight.transpose(1, 2)
        )
        return filters, radial_pre

    def radial_backward(self, filter_gradients: List[Tensor], distances: Tensor, saved: Tensor) -> Tensor:
        """Backward of :meth:`radial_forward`: the gradient (P,) of the distances from those of
        the 2T filters (P, F each, layer order) and the saved tensor."""
        features = self.features
        radial_gradient = torch.empty_like(saved)
        for n, filter_gradient in enumerate(filter_gradients):
            torch.mm(
                self.radial_out_weight[n].t(),
                filter_gradient.t(),
                out=radial_gradient[n * features : (n + 1) * features],
            )
        hidden_gradient = torch.ops.aten.silu_backward(radial_gradient, saved)
        basis_gradient = hidden_gradient.t() @ self.radial_in_weight[:, : self.radial_basis_size]
        decay = torch.exp(-distances)
        offsets = decay.unsqueeze(-1) - self.radial_centres
        radial_basis = torch.exp(-self.beta * offsets * offsets)
        return (basis_gradient * radial_basis * offsets).sum(1) * (-2.0 * self.beta) * (-decay)

    def spherical_forward(
        self, t: int, chi: Tensor, first: Tensor, second: Tensor, feature_filters: Tensor, euclidean_filters: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """Add the spherical parts ``W_sph_out silu(W_sph_in delta_ij + b) `` of layer ``t``'s two filters
        to ``feature_filters`` and ``euclidean_filters`` (P, F, in place), with the per-degree invariants
        ``delta_ij = C^T (chi_j - chi_i)^2``. Returns the differences ``chi_j - chi_i`` (P, m_tot) and
        what :meth:`spherical_backward` needs: ``silu'`` of the hidden features (fused operator) or
        their pre-activations (PyTorch route), (P, F/2).
        """
        difference = chi.index_select(0, second) - chi.index_select(0, first)
        ev_invariants = (difference * difference) @ self.pair_contraction[t]
        spherical_pre = functional.linear(ev_invariants, self.spherical_in_weight[t], self.spherical_in_bias[t])
        spherical = functional.silu(spherical_pre)
        feature_filters.addmm_(spherical[:, : self.spherical_width], self.feature_spherical_out[t].t())
        euclidean_filters.addmm_(spherical[:, self.spherical_width :], self.euclidean_spherical_out[t].t())
        return difference, spherical_pre

    def spherical_backward(
        self,
        t: int,
        filter_gradient: Tensor,
        ev_filter_gradient: Tensor,
        difference: Tensor,
        saved: Tensor,
        first: Tensor,
        second: Tensor,
        n_atoms: int,
    ) -> Tensor:
        """Backward of :meth:`spherical_forward`: the gradient (N, m_tot) of chi from those of the
        two filters (P, F each)."""
        spherical_gradient = torch.cat(
            [filter_gradient @ self.feature_spherical_out[t], ev_filter_gradient @ self.euclidean_spherical_out[t]], 1
        )
        invariants_gradient = torch.ops.aten.silu_backward(spherical_gradient, saved) @ self.spherical_in_weight[t]
        difference_gradient = 2.0 * difference * (invariants_gradient @ self.pair_contraction[t].t())
        return (
            torch.zeros(n_atoms, self.m_tot, dtype=difference.dtype, device=difference.device)
            .index_add_(0, second, difference_gradient)
            .index_add_(0, first, -difference_gradient)
        )

    def pair_forward(
        self,
        projections: Tensor,
        feature_filters: Tensor,
        euclidean_filters: Tensor,
        cutoff_weights: Tensor,
        harmonics: Tensor,
        first: Tensor,
        second: Tensor,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """The attention updates ``dx`` (N, F) and ``dchi`` (N, m_tot) of one layer, and the
        raw scores (P, 2 (H + n_D)) that the backward pass needs.

        ``projections`` (N, 5F) are ``[Q, Q~, K, K~, V] x`` (queries scaled), those of the invariant
        model (N, 3F) ``[Q, K, V] x`` (its Euclidean filters and harmonics are (P, 0), ``dchi`` (N, 0));
        filters (P, F). Scores ``[s_ij^h, s_ji^h, s~_ij^l, s~_ji^l]`` are the sums over a head of
        ``q w k`` before the cutoff weight.
        """
        n_atoms = projections.shape[0]
        n_pairs = first.shape[0]
        features = self.features
        heads = self.heads
        n_degrees = self.n_degrees
        at_first = projections.index_select(0, first).split(features, 1)
        at_second = projections.index_select(0, second).split(features, 1)
        key, value = self.key_value_blocks()
        queries_i, keys_i, values_i = at_first[0], at_first[key], at_first[value]
        queries_j, keys_j, values_j = at_second[0], at_second[key], at_second[value]
        scores_ij = (queries_i * feature_filters * keys_j).view(n_pairs, heads, self.head_width).sum(-1)
        scores_ji = (queries_j * feature_filters * keys_i).view(n_pairs, heads, self.head_width).sum(-1)
        weights = cutoff_weights.unsqueeze(-1)
        messages_i = (
            (scores_ij * weights).unsqueeze(-1) * values_j.view(n_pairs, heads, self.head_width)
        ).view(n_pairs, features)
        messages_j = (
            (scores_ji * weights).unsqueeze(-1) * values_i.view(n_pairs, heads, self.head_width)
        ).view(n_pairs, features)
        update = torch.zeros(n_atoms, features, dtype=projections.dtype, device=projections.device)
        update = update.index_add_(0, first, messages_i).index_add_(0, second, messages_j)
        if not self.equivariant:
            return update, projections.new_zeros(n_atoms, 0), torch.cat([scores_ij, scores_ji], 1)
        ev_queries_i, ev_keys_i, ev_queries_j, ev_keys_j = at_first[1], at_first[3], at_second[1], at_second[3]
        ev_scores_ij = (
            (ev_queries_i * euclidean_filters * ev_keys_j).view(n_pairs, n_degrees, self.degree_width).sum(-1)
        )
        ev_scores_ji = (
            (ev_queries_j * euclidean_filters * ev_keys_i).view(n_pairs, n_degrees, self.degree_width).sum(-1)
        )
        expansion = self.expansion[0]
        ev_messages_i = ((ev_scores_ij * weights) @ expansion) * harmonics
        ev_messages_j = ((ev_scores_ji * weights) @ expansion) * (harmonics * self.parity)
        ev_update = torch.zeros(n_atoms, self.m_tot, dtype=projections.dtype, device=projections.device)
        ev_update = ev_update.index_add_(0, first, ev_messages_i).index_add_(0, second, ev_messages_j)
        return update, ev_update, torch.cat([scores_ij, scores_ji, ev_scores_ij, ev_scores_ji], 1)

    def score_backward(
        self,
        weighted_ij: Tensor,
        weighted_ji: Tensor,
        weights: Tensor,
        queries_i: Tensor,
        keys_j: Tensor,
        queries_j: Tensor,
        keys_i: Tensor,
        filters: Tensor,
        blocks: int,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Backward of the scores ``s_ij = sum_{f in block} q_i w k_j`` of one attention block (``blocks``
        heads or degrees) from the gradients (P, blocks) of ``phi s_ij`` and ``phi s_ji`` and the cutoff
        weights ``phi`` (P, 1): the gradient of the filters (P, F) and ``phi ds w`` of both directions
        (P, F each; times the keys and queries, the gradients of the queries and keys)."""
        n_pairs = filters.shape[0]
        width = self.features // blocks
        score_ij = (weighted_ij * weights).unsqueeze(-1)
        score_ji = (weighted_ji * weights).unsqueeze(-1)
        qk_ij = queries_i * keys_j
        qk_ji = queries_j * keys_i
        filter_gradient = (
            score_ij * qk_ij.view(n_pairs, blocks, width) + score_ji * qk_ji.view(n_pairs, blocks, width)
        ).view(n_pairs, self.features)
        blocked_filters = filters.view(n_pairs, blocks, width)
        return (
            filter_gradient,
            (score_ij * blocked_filters).view(n_pairs, self.features),
            (score_ji * blocked_filters).view(n_pairs, self.features),
        )

    def key_value_blocks(self) -> Tuple[int, int]:
        """Blocks of F columns of the keys and values in the atom projections: ``[Q, Q~, K, K~, V]``
        (equivariant model) or ``[Q, K, V]`` (invariant model)."""
        return (2, 4) if self.equivariant else (1, 2)

    def pair_backward(
        self,
        update_gradient: Tensor,
        ev_update_gradient: Tensor,
        projections: Tensor,
        feature_filters: Tensor,
        euclidean_filters: Tensor,
        cutoff_weights: Tensor,
        harmonics: Tensor,
        scores: Tensor,
        first: Tensor,
        second: Tensor,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Backward of :meth:`pair_forward`: from the gradients of ``dx`` (N, F) and ``dchi``
        (N, m_tot) to those of the projections (N, 5F; 3F invariant), the two filters (P, F; the
        Euclidean one (P, 0) invariant), the cutoff weights (P,) and the harmonics (P, m_tot)."""
        n_pairs = first.shape[0]
        features = self.features
        heads = self.heads
        n_degrees = self.n_degrees
        at_first = projections.index_select(0, first).split(features, 1)
        at_second = projections.index_select(0, second).split(features, 1)
        key, value = self.key_value_blocks()
        queries_i, keys_i, values_i = at_first[0], at_first[key], at_first[value]
        queries_j, keys_j, values_j = at_second[0], at_second[key], at_second[value]
        scores_ij, scores_ji, ev_scores_ij, ev_scores_ji = scores.split([heads, heads, n_degrees, n_degrees], 1)
        weights = cutoff_weights.unsqueeze(-1)
        gradient_i = update_gradient.index_select(0, first)
        gradient_j = update_gradient.index_select(0, second)
        # invariant block: messages_i = phi s_ij v_j (to i), messages_j = phi s_ji v_i (to j)
        weighted_ij = (scores_ij * weights).unsqueeze(-1)
        weighted_ji = (scores_ji * weights).unsqueeze(-1)
        values_j_gradient = (weighted_ij * gradient_i.view(n_pairs, heads, self.head_width)).view(n_pairs, features)
        values_i_gradient = (weighted_ji * gradient_j.view(n_pairs, heads, self.head_width)).view(n_pairs, features)
        weighted_score_ij = (gradient_i * values_j).view(n_pairs, heads, self.head_width).sum(-1)  # d/d(phi s_ij)
        weighted_score_ji = (gradient_j * values_i).view(n_pairs, heads, self.head_width).sum(-1)
        cutoff_gradient = (weighted_score_ij * scores_ij + weighted_score_ji * scores_ji).sum(1)
        filter_gradient, wf_ij, wf_ji = self.score_backward(
            weighted_score_ij, weighted_score_ji, weights, queries_i, keys_j, queries_j, keys_i, feature_filters, heads
        )
        # gradients of the projections at the first (i) and second (j) atom of each pair
        if self.equivariant:
            # Euclidean block: ev_messages_i = phi (s~_ij E) Y, ev_messages_j = phi (s~_ji E) (parity Y)
            ev_queries_i, ev_keys_i, ev_queries_j, ev_keys_j = at_first[1], at_first[3], at_second[1], at_second[3]
            expansion = self.expansion[0]
            ev_gradient_i = ev_update_gradient.index_select(0, first)
            ev_gradient_j = ev_update_gradient.index_select(0, second)
            parity_harmonics = harmonics * self.parity
            harmonics_gradient = ((ev_scores_ij * weights) @ expansion) * ev_gradient_i + (
                (ev_scores_ji * weights) @ expansion
            ) * ev_gradient_j * self.parity
            ev_weighted_ij = (ev_gradient_i * harmonics) @ expansion.t()
            ev_weighted_ji = (ev_gradient_j * parity_harmonics) @ expansion.t()
            cutoff_gradient = cutoff_gradient + (ev_weighted_ij * ev_scores_ij + ev_weighted_ji * ev_scores_ji).sum(1)
            ev_filter_gradient, ew_ij, ew_ji = self.score_backward(
                ev_weighted_ij, ev_weighted_ji, weights, ev_queries_i, ev_keys_j, ev_queries_j, ev_keys_i,
                euclidean_filters, n_degrees,
            )
            at_first_gradient = torch.cat(
                [wf_ij * keys_j, ew_ij * ev_keys_j, wf_ji * queries_j, ew_ji * ev_queries_j, values_i_gradient], 1
            )
            at_second_gradient = torch.cat(
                [wf_ji * keys_i, ew_ji * ev_keys_i, wf_ij * queries_i, ew_ij * ev_queries_i, values_j_gradient], 1
            )
        else:
            ev_filter_gradient = feature_filters.new_zeros(n_pairs, 0)
            harmonics_gradient = feature_filters.new_zeros(n_pairs, 0)
            at_first_gradient = torch.cat([wf_ij * keys_j, wf_ji * queries_j, values_i_gradient], 1)
            at_second_gradient = torch.cat([wf_ji * keys_i, wf_ij * queries_i, values_j_gradient], 1)
        projection_gradient = (
            torch.zeros_like(projections)
            .index_add_(0, first, at_first_gradient)
            .index_add_(0, second, at_second_gradient)
        )
        return projection_gradient, filter_gradient, ev_filter_gradient, cutoff_gradient, harmonics_gradient
