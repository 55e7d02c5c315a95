"""Routes for the loss gradient of a training step with forces in the loss (issue 19, item 5).

Training needs d(loss)/d(weights) of a loss that holds the forces ``-dE/dR``.
The trainer (:mod:`so3krates_openmm.training.trainer`) gets the forces by
autograd with ``create_graph=True`` and backpropagates through them: a double
backward of the reference model. This script measures, in one process and in
alternating order, the routes that could replace it:

- ``reference``: the trainer's route (neighbour list, energy, forces by
  autograd with ``create_graph``, weighted MSE, gradient with respect to every
  parameter).
- ``analytic``: the fast path's one-pass energy and hand-derived gradient
  (:class:`~so3krates_openmm.model.fast.FastSO3krates`), written out below in
  differentiable PyTorch operations with the weights taken live from the
  model's parameters, and one ordinary first-order backward through forward +
  hand backward. (``FastSO3krates`` itself copies the weights into frozen
  buffers and runs under ``no_grad`` with ``out=`` products and
  ``aten.silu_backward``, which has no derivative: it cannot be trained
  through as it is.) The per-pair chain is ``FastSO3krates.pair_forward`` /
  ``pair_backward`` with ``kernels="torch"``.
- ``forward-mode``: forces from the fast path without a graph, then the
  gradient of the force term as the gradient of the directional derivative
  of E along ``F - F_ref`` (forward-mode AD on the reference model, reverse
  over forward).
- ``fused bound``: TIMING ONLY, WRONG GRADIENTS. The ``analytic`` route with
  the per-pair chain in the C++ operators (``kernels="fused"``); their
  derivative in the backward pass (it would need a second-order kernel, the
  VJP of ``pair_backward``, which does not exist) is replaced by zeros. The
  time is a lower bound for the ``analytic`` route with such a kernel.

Where the loss needs no weight gradient (validation and test evaluation of
every epoch: energies and forces only), the fast path applies as it is; the
last table times that evaluation (``--eval-batch`` structures, the trainer's
default evaluation batch) by the reference (autograd without a graph) and by
``FastSO3krates`` with either kernels.

First the exactness of ``analytic`` and ``forward-mode`` is checked in
float64 (random weights, a batch of displaced structures): the largest
relative difference of any parameter's gradient from the reference's.
The training data has no periodic boxes, so neither has this check.

Usage: ``python bench/train_force_routes.py [--threads 1] [--batch-sizes 1 5 10] [--repeats 10]``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor
from torch.nn import functional

from so3krates_openmm.data.builders import build_ac_ala3_nhme
from so3krates_openmm.model import SO3krates
from so3krates_openmm.model.config import SO3kratesConfig
from so3krates_openmm.model.fast import FastSO3krates
from so3krates_openmm.model.neighbours import neighbour_list
from so3krates_openmm.training.loss import weighted_mse_loss

ENERGY_WEIGHT, FORCE_WEIGHT = 0.01, 0.99  # the paper's loss weights (TrainingConfig defaults)


def silu_slope_times(gradient: Tensor, x: Tensor) -> Tensor:
    """``gradient * silu'(x)`` in differentiable operations (``aten.silu_backward`` has no derivative)."""
    sigmoid = torch.sigmoid(x)
    return gradient * (sigmoid * (1.0 + x * (1.0 - sigmoid)))


def live_weights(model: SO3krates) -> dict:
    """The weights in the fused layouts of :class:`FastSO3krates`, built from the parameters (differentiable)."""
    layers = []
    for layer in model.layers:
        invariant, ev, exchange = layer.feature_attention, layer.euclidean_attention, layer.exchange
        feature_filter, euclidean_filter = layer.feature_filter, layer.euclidean_filter
        layers.append({
            "projection": torch.cat([
                invariant.query.weight * invariant.scale, ev.query.weight * ev.scale,
                invariant.key.weight, ev.key.weight, invariant.value.weight,
            ]),
            "feature_radial_out": feature_filter.radial_out.weight,
            "euclidean_radial_out": euclidean_filter.radial_out.weight,
            "feature_bias": feature_filter.radial_out.bias + feature_filter.spherical_out.bias,
            "euclidean_bias": euclidean_filter.radial_out.bias + euclidean_filter.spherical_out.bias,
            "spherical_in_weight": torch.cat(
                [feature_filter.spherical_in.weight, euclidean_filter.spherical_in.weight]),
            "spherical_in_bias": torch.cat([feature_filter.spherical_in.bias, euclidean_filter.spherical_in.bias]),
            "feature_spherical_out": feature_filter.spherical_out.weight,
            "euclidean_spherical_out": euclidean_filter.spherical_out.weight,
            "pair_contraction": layer.contraction.to(model.dtype),
            "exchange_weight": exchange.linear.weight,
            "exchange_bias": exchange.linear.bias,
            "exchange_contraction": exchange.contraction.to(model.dtype),
            "expansion": exchange.expansion.to(model.dtype),
        })
    return {
        "embedding": model.embedding.weight,
        "radial_in": torch.cat([
            torch.cat([f.radial_in.weight, f.radial_in.bias.unsqueeze(1)], 1)
            for layer in model.layers for f in (layer.feature_filter, layer.euclidean_filter)
        ]),
        "layers": layers,
        "readout_hidden_weight": model.readout.hidden.weight,
        "readout_hidden_bias": model.readout.hidden.bias,
        "readout_output_weight": model.readout.output.weight.reshape(-1),
        "readout_output_bias": model.readout.output.bias,
    }


def analytic_energy_and_gradient(
    fast: FastSO3krates, weights: dict, atomic_numbers: Tensor, positions: Tensor, batch: Tensor,
    num_structures: int, first: Tensor, second: Tensor, shifts: Tensor,
) -> tuple[Tensor, Tensor]:
    """Energies (B,) and ``dE/dR`` (N, 3) per Å: the equations of ``FastSO3krates.forward`` (cosine cutoff)
    with ``weights`` from :func:`live_weights`, recorded by autograd."""
    dtype = positions.dtype
    n_atoms, n_pairs, features = positions.shape[0], first.shape[0], fast.features
    species = fast.species_index[atomic_numbers]
    vectors = positions.index_select(0, second) - positions.index_select(0, first) + shifts.to(dtype)
    distances = torch.linalg.vector_norm(vectors, dim=1)
    unit_vectors = vectors / distances.unsqueeze(-1)
    power_list = [torch.ones_like(unit_vectors), unit_vectors]
    for _ in range(2, fast.max_degree + 1):
        power_list.append(power_list[-1] * unit_vectors)
    powers = torch.stack(power_list, 2)
    monomials = (
        powers[:, 0].index_select(1, fast.monomial_exponents[:, 0])
        * powers[:, 1].index_select(1, fast.monomial_exponents[:, 1])
        * powers[:, 2].index_select(1, fast.monomial_exponents[:, 2])
    )
    harmonics = monomials @ fast.harmonic_coefficients
    scaled = distances * (math.pi / fast.cutoff)
    inside = distances < fast.cutoff
    cutoff_weights = torch.where(inside, 0.5 * (torch.cos(scaled) + 1.0), torch.zeros_like(scaled))
    cutoff_slopes = torch.where(inside, (-0.5 * math.pi / fast.cutoff) * torch.sin(scaled), torch.zeros_like(scaled))
    decay = torch.exp(-distances)
    offsets = decay.unsqueeze(-1) - fast.radial_centres
    radial_basis = torch.exp(-fast.beta * offsets * offsets)
    radial_pre = weights["radial_in"] @ torch.cat([radial_basis, torch.ones_like(distances).unsqueeze(1)], 1).t()
    radial = functional.silu(radial_pre)

    x = weights["embedding"].index_select(0, species)
    chi = torch.zeros(n_atoms, fast.m_tot, dtype=dtype, device=positions.device)
    half = fast.spherical_width
    saved = []
    for t, w in enumerate(weights["layers"]):
        feature_radial = radial[2 * t * features : (2 * t + 1) * features].t()
        euclidean_radial = radial[(2 * t + 1) * features : (2 * t + 2) * features].t()
        if t == 0:  # chi = 0: the spherical filter input is one constant vector
            difference = spherical_pre = chi
            spherical = functional.silu(w["spherical_in_bias"])
            feature_bias = w["feature_bias"] + w["feature_spherical_out"] @ spherical[:half]
            euclidean_bias = w["euclidean_bias"] + w["euclidean_spherical_out"] @ spherical[half:]
            feature_filters = torch.addmm(feature_bias, feature_radial, w["feature_radial_out"].t())
            euclidean_filters = torch.addmm(euclidean_bias, euclidean_radial, w["euclidean_radial_out"].t())
        else:
            difference = chi.index_select(0, second) - chi.index_select(0, first)
            ev_invariants = (difference * difference) @ w["pair_contraction"]
            spherical_pre = functional.linear(ev_invariants, w["spherical_in_weight"], w["spherical_in_bias"])
            spherical = functional.silu(spherical_pre)
            feature_filters = torch.addmm(w["feature_bias"], feature_radial, w["feature_radial_out"].t()).addmm(
                spherical[:, :half], w["feature_spherical_out"].t())
            euclidean_filters = torch.addmm(
                w["euclidean_bias"], euclidean_radial, w["euclidean_radial_out"].t()
            ).addmm(spherical[:, half:], w["euclidean_spherical_out"].t())
        projections = x @ w["projection"].t()
        update, ev_update, scores = fast.pair_forward(
            projections, feature_filters, euclidean_filters, cutoff_weights, harmonics, first, second
        )
        x1, chi1 = x + update, chi + ev_update
        invariants = (chi1 * chi1) @ w["exchange_contraction"]
        mixed = torch.addmm(w["exchange_bias"], torch.cat([x1, invariants], 1), w["exchange_weight"].t())
        degree_scales = mixed[:, features:] @ w["expansion"]
        saved.append((difference, spherical_pre, feature_filters, euclidean_filters, projections, scores, chi1,
                      degree_scales))
        x = x1 + mixed[:, :features]
        chi = chi1 + degree_scales * chi1
    hidden_pre = functional.linear(x, weights["readout_hidden_weight"], weights["readout_hidden_bias"])
    outputs = functional.silu(hidden_pre) @ weights["readout_output_weight"] + weights["readout_output_bias"]
    atomic_energies = outputs.double() * fast.energy_scales[species] + fast.energy_shifts[species]
    energies = torch.zeros(num_structures, dtype=torch.float64, device=positions.device).index_add(
        0, batch, atomic_energies)

    # the hand-derived backward of FastSO3krates.forward, recorded
    x_gradient = silu_slope_times(
        fast.energy_scales[species].to(dtype).unsqueeze(1) * weights["readout_output_weight"], hidden_pre
    ) @ weights["readout_hidden_weight"]
    chi_gradient = torch.zeros_like(chi)
    radial_gradients: list[Tensor | None] = [None] * (2 * len(saved))
    cutoff_gradient = torch.zeros_like(cutoff_weights)
    harmonics_gradient = torch.zeros_like(harmonics)
    for t in range(len(saved) - 1, -1, -1):
        w = weights["layers"][t]
        difference, spherical_pre, feature_filters, euclidean_filters, projections, scores, chi1, degree_scales = (
            saved[t])
        input_gradient = torch.cat([x_gradient, (chi_gradient * chi1) @ w["expansion"].t()], 1) @ w["exchange_weight"]
        x_gradient = x_gradient + input_gradient[:, :features]
        chi_gradient = chi_gradient * (1.0 + degree_scales) + 2.0 * chi1 * (
            input_gradient[:, features:] @ w["exchange_contraction"].t())
        projection_gradient, filter_gradient, ev_filter_gradient, layer_cutoff, layer_harmonics = fast.pair_backward(
            x_gradient, chi_gradient, projections, feature_filters, euclidean_filters, cutoff_weights, harmonics,
            scores, first, second,
        )
        cutoff_gradient = cutoff_gradient + layer_cutoff
        harmonics_gradient = harmonics_gradient + layer_harmonics
        x_gradient = torch.addmm(x_gradient, projection_gradient, w["projection"])
        radial_gradients[2 * t] = filter_gradient @ w["feature_radial_out"]
        radial_gradients[2 * t + 1] = ev_filter_gradient @ w["euclidean_radial_out"]
        if t > 0:
            spherical_gradient = torch.cat([
                filter_gradient @ w["feature_spherical_out"], ev_filter_gradient @ w["euclidean_spherical_out"],
            ], 1)
            invariants_gradient = silu_slope_times(spherical_gradient, spherical_pre) @ w["spherical_in_weight"]
            difference_gradient = 2.0 * difference * (invariants_gradient @ w["pair_contraction"].t())
            chi_gradient = chi_gradient.index_add(0, second, difference_gradient).index_add(
                0, first, -difference_gradient)
    basis_gradient = (
        silu_slope_times(torch.cat(radial_gradients, 1), radial_pre.t())
        @ weights["radial_in"][:, : fast.radial_basis_size]
    )
    distance_gradient = (
        cutoff_gradient * cutoff_slopes
        + (basis_gradient * radial_basis * offsets).sum(1) * (-2.0 * fast.beta) * (-decay)
    )
    derivative_terms = harmonics_gradient @ fast.harmonic_derivatives
    unit_gradient = (derivative_terms.view(n_pairs, 3, fast.n_monomials) * monomials.unsqueeze(1)).sum(-1)
    radial_part = (unit_gradient * unit_vectors).sum(1, keepdim=True)
    vector_gradient = (
        (unit_gradient - radial_part * unit_vectors) / distances.unsqueeze(-1)
        + distance_gradient.unsqueeze(-1) * unit_vectors
    )
    gradient = torch.zeros_like(positions).index_add(0, second, vector_gradient).index_add(0, first, -vector_gradient)
    return energies, gradient


class ZeroSecondOrder(torch.autograd.Function):
    """The fused per-pair operator ``op`` forward; zeros as the gradients of its differentiable
    inputs (timing of the ``fused bound`` route only: its gradients are wrong)."""

    @staticmethod
    def forward(ctx, op: Callable, n_differentiable: int, *inputs: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        ctx.save_for_backward(*inputs[:n_differentiable])
        ctx.n_rest = len(inputs) - n_differentiable
        return op(*inputs)

    @staticmethod
    def backward(ctx, *gradients: Tensor) -> tuple:  # type: ignore[override]
        return (None, None, *(torch.zeros_like(x) for x in ctx.saved_tensors), *([None] * ctx.n_rest))


class FusedWithoutSecondOrder:
    """A :class:`FastSO3krates` (fused) whose per-pair chain runs the C++ operators
    ``torch.ops.so3krates.pair_forward``/``pair_backward`` (arguments of the methods of the same
    name) and records zeros as their derivative."""

    def __init__(self, fused: FastSO3krates) -> None:
        self.fused = fused

    def __getattr__(self, name: str):
        return getattr(self.fused, name)

    def pair_forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        fast = self.fused

        def operator(projections, feature_filters, euclidean_filters, cutoff, harmonics, first, second):
            return torch.ops.so3krates.pair_forward(
                projections, feature_filters, euclidean_filters, cutoff, harmonics, fast.parity,
                fast.component_degree, first, second, fast.heads, fast.n_degrees,
            )

        return ZeroSecondOrder.apply(operator, 3, *inputs)

    def pair_backward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        fast = self.fused

        def operator(*arguments: Tensor) -> tuple[Tensor, ...]:
            # (update gradients, projections, filters, cutoff, harmonics | scores, first, second)
            return torch.ops.so3krates.pair_backward(
                *arguments[:7], fast.parity, fast.component_degree, *arguments[7:], fast.heads, fast.n_degrees
            )

        return ZeroSecondOrder.apply(operator, 5, *inputs)


class Problem:
    """A batch of displaced peptides with random labels, the model and the step of each route."""

    def __init__(self, dtype: str, batch_size: int, seed: int = 0) -> None:
        torch.manual_seed(seed)
        peptide = build_ac_ala3_nhme(relax=False, log=lambda message: None)
        numbers = torch.as_tensor(peptide.atomic_numbers)
        reference = torch.as_tensor(peptide.positions_angstrom)
        config = SO3kratesConfig(elements=tuple(sorted(set(numbers.tolist()))), features=132, layers=3, heads=4,
                                 degrees=(1, 2, 3), radial_basis_size=32, cutoff=5.0, dtype=dtype)
        self.model = SO3krates(config)
        with torch.no_grad():  # weights away from their initial values (biases zero-initialised)
            for parameter in self.model.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
            self.model.energy_scales.fill_(0.7)
            self.model.energy_shifts.normal_()
        self.parameters = list(self.model.parameters())
        self.size = batch_size
        self.numbers = numbers.repeat(batch_size)
        self.positions = torch.cat([reference + 0.1 * torch.randn_like(reference) for _ in range(batch_size)]).to(
            self.model.dtype)
        self.batch = torch.arange(batch_size).repeat_interleave(len(numbers))
        self.reference_energies = torch.randn(batch_size, dtype=torch.float64)
        self.reference_forces = torch.randn_like(self.positions)
        self.analytic = FastSO3krates(self.model, "torch")
        self.bound = FusedWithoutSecondOrder(FastSO3krates(self.model, "fused"))

    def loss(self, energies: Tensor, forces: Tensor) -> Tensor:
        return weighted_mse_loss(energies, self.reference_energies, forces, self.reference_forces, ENERGY_WEIGHT,
                                 FORCE_WEIGHT, float(self.size), float(self.positions.shape[0]))

    def gradients(self, loss: Tensor) -> list[Tensor]:
        """d(loss)/d(parameter) for every parameter (zeros for one that does not enter)."""
        found = torch.autograd.grad(loss, self.parameters, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(self.parameters, found, strict=True)]

    def pairs(self) -> tuple[Tensor, Tensor, Tensor]:
        return neighbour_list(self.positions, self.batch, self.size, self.model.cutoff, None, True)

    def reference_step(self) -> list[Tensor]:
        positions = self.positions.clone().requires_grad_(True)
        energies = self.model(self.numbers, positions, self.batch, self.size)
        (gradient,) = torch.autograd.grad(energies.sum(), positions, create_graph=True)
        return self.gradients(self.loss(energies, -gradient))

    def analytic_step(self, fast: FastSO3krates | FusedWithoutSecondOrder | None = None) -> list[Tensor]:
        energies, gradient = analytic_energy_and_gradient(
            fast or self.analytic, live_weights(self.model), self.numbers, self.positions, self.batch, self.size,
            *self.pairs())
        return self.gradients(self.loss(energies, -gradient))

    def bound_step(self) -> list[Tensor]:
        return self.analytic_step(self.bound)

    def reference_forces_only(self) -> Tensor:
        """Forces as the trainer's evaluation gets them (autograd, no graph kept)."""
        positions = self.positions.clone().requires_grad_(True)
        energies = self.model(self.numbers, positions, self.batch, self.size)
        return -torch.autograd.grad(energies.sum(), positions)[0]

    def fast_forces_only(self, fast: FastSO3krates) -> Callable[[], Tensor]:
        """Forces by the fast path (the neighbour list included)."""
        return lambda: -fast(self.numbers, self.positions, self.batch, self.size, *self.pairs())[1]

    def forward_mode_step(self) -> list[Tensor]:
        first, second, shifts = self.pairs()
        with torch.no_grad():
            energies, gradient = self.analytic(self.numbers, self.positions, self.batch, self.size, first, second,
                                               shifts)
        # d/dw sum (F - F_ref)^2 = -2 d/dw [grad E . (F - F_ref)] with F - F_ref held fixed
        direction = (-gradient - self.reference_forces).detach()
        with forward_ad.dual_level():
            dual = forward_ad.make_dual(self.positions, direction)
            primal, tangent = forward_ad.unpack_dual(
                self.model.energy_from_neighbours(self.numbers, dual, self.batch, self.size, first, second, shifts))
        surrogate = (2.0 * ENERGY_WEIGHT / self.size) * ((energies - self.reference_energies) * primal).sum() - (
            2.0 * FORCE_WEIGHT / (3.0 * self.positions.shape[0])) * tangent.sum()
        return self.gradients(surrogate)


def largest_relative_difference(gradients: list[Tensor], reference: list[Tensor]) -> float:
    """max over parameters of max |g - g_ref| / max |g_ref|."""
    return max(float((g - r).abs().max() / r.abs().max().clamp_min(1e-300)) for g, r in zip(gradients, reference,
                                                                                              strict=True))


def median_milliseconds(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall milliseconds of each call over ``repeats`` rounds in alternating order (after one warm-up)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per route and batch size")
    parser.add_argument("--eval-batch", type=int, default=16, help="structures per evaluation batch (default 16)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    check = Problem("float64", 3)
    reference = check.reference_step()
    print("exactness, float64, batch of 3 peptides, random weights: largest relative difference of any "
          "parameter's loss gradient from the reference's")
    for name, step in (("analytic", check.analytic_step), ("forward-mode", check.forward_mode_step)):
        print(f"  {name:12s} {largest_relative_difference(step(), reference):.1e}")

    print(f"\ntraining step (loss gradient only, no optimiser), Ac-Ala3-NHMe (42 atoms), paper-size model, "
          f"{args.dtype}, {args.threads} thread(s), torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")
    print("load average before: " + " ".join(f"{value:.2f}" for value in os.getloadavg()))
    routes = ("reference", "analytic", "forward-mode", "fused bound")
    print(f"{'batch':>5}  " + "  ".join(f"{name + ' ms':>16}" for name in routes) + "   reference / route")
    for size in args.batch_sizes:
        problem = Problem(args.dtype, size)
        steps = dict(zip(routes, (problem.reference_step, problem.analytic_step, problem.forward_mode_step,
                                  problem.bound_step), strict=True))
        medians = median_milliseconds(steps, args.repeats)
        ratios = " / ".join(f"{medians['reference'] / medians[name]:.2f}" for name in routes[1:])
        print(f"{size:>5}  " + "  ".join(f"{medians[name]:>16.1f}" for name in routes) + f"   {ratios}", flush=True)
    print("(median of the steps; 'fused bound' has wrong gradients: a lower bound of the time with a "
          "second-order per-pair kernel)")

    problem = Problem(args.dtype, args.eval_batch)
    evaluations = {"reference": problem.reference_forces_only}
    for kernels in ("torch", "fused"):
        evaluations[f"fast ({kernels})"] = problem.fast_forces_only(FastSO3krates(problem.model, kernels))
    medians = median_milliseconds(evaluations, args.repeats)
    print(f"\nevaluation (energies and forces, no weight gradients), batch of {args.eval_batch}: " + ", ".join(
        f"{name} {value:.1f} ms ({medians['reference'] / value:.2f}x)" for name, value in medians.items()))
    print("load average after: " + " ".join(f"{value:.2f}" for value in os.getloadavg()))


if __name__ == "__main__":
    main()
