"""The fast path (hand-derived backward, fused C++ kernels) against the reference model.

:class:`~so3krates_openmm.model.so3krates.SO3krates` with autograd forces is
the executable spec; :class:`~so3krates_openmm.model.fast.FastSO3krates` must
give the same energies and forces: to 1e-10 relative in float64 (random
weights, both shipped checkpoints, periodic boxes, batches) and to
``FLOAT32_*`` below in float32 (against the float64 reference), for the
equivariant model and the invariant one (``degrees=()``, :data:`CONFIGURATIONS`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import zipfile

import numpy as np
import pytest
import torch
from conftest import ETHANOL_WATER_NUMBERS, ETHANOL_WATER_POSITIONS, REPOSITORY, randomise, small_config

from so3krates_openmm import SO3krates
from so3krates_openmm.data.structures import Structure, read_structure
from so3krates_openmm.export import METADATA_FILE, build_energy_module, export_checkpoint, read_export_metadata
from so3krates_openmm.model import kernels
from so3krates_openmm.model.checkpoint import load_model, save_checkpoint
from so3krates_openmm.model.fast import FastSO3krates, harmonic_polynomials
from so3krates_openmm.model.neighbours import neighbour_list

PRETRAINED = REPOSITORY / "so3krates_openmm" / "pretrained"
SHIPPED = ["ac_ala3_nhme", "buckyball_catcher"]
NUMBERS = torch.tensor(ETHANOL_WATER_NUMBERS)
POSITIONS = torch.tensor(ETHANOL_WATER_POSITIONS, dtype=torch.float64)
TRICLINIC = torch.tensor([[6.4, 0.0, 0.0], [1.2, 6.3, 0.0], [-1.0, 1.5, 6.2]], dtype=torch.float64)
#: float64 agreement of the fast path with the reference (relative to the largest value)
FLOAT64_RTOL = 1e-10
#: float32 fast path against the float64 reference: energy relative to |E| and forces relative
#: to the largest force component (the same order as the float32 reference itself reaches)
FLOAT32_ENERGY_RTOL = 1e-6
FLOAT32_FORCES_RTOL = 2e-4
#: pair-chain implementations: the PyTorch chain (the route on CUDA) and the fused C++ operators
FAST_KERNELS = ["torch", "fused"]
#: the model's configurations: the paper's equivariant model and its invariant ablation
CONFIGURATIONS = {"equivariant": {}, "invariant": {"degrees": ()}}


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    reference = reference.detach()
    return float((value.detach().double() - reference.double()).abs().max()) / max(float(reference.abs().max()), 1e-300)


def fast_energies_and_forces(fast, model, numbers, positions, batch=None, num_structures=1, boxes=None, prune=True):
    """Energies and forces of the fast module with the reference model's own neighbour list."""
    positions = positions.to(model.dtype)
    if batch is None:
        batch = torch.zeros(len(numbers), dtype=torch.long)
    first, second, shifts = neighbour_list(positions, batch, num_structures, model.cutoff, boxes, prune)
    energies, gradient = fast(numbers, positions, batch, num_structures, first, second, shifts)
    return energies, -gradient


def reference_energies_and_forces(model, numbers, positions, batch=None, num_structures=1, boxes=None, prune=True):
    positions = positions.to(model.dtype).detach().requires_grad_(True)
    energies = model(numbers, positions, batch, num_structures, boxes, prune)
    (gradient,) = torch.autograd.grad(energies.sum(), positions)
    return energies.detach(), -gradient


def assert_agree(fast_result, reference_result, rtol: float = FLOAT64_RTOL) -> None:
    (energies, forces), (reference_energies, reference_forces) = fast_result, reference_result
    assert relative_error(energies, reference_energies) < rtol
    assert relative_error(forces, reference_forces) < rtol


@pytest.fixture(scope="module")
def random_model() -> SO3krates:
    torch.manual_seed(0)
    return randomise(SO3krates(small_config())).eval()


@pytest.fixture(scope="module", params=list(CONFIGURATIONS))
def each_model(request) -> SO3krates:
    """A small model with random weights in each configuration (equivariant, invariant)."""
    torch.manual_seed(0)
    return randomise(SO3krates(small_config(**CONFIGURATIONS[request.param]))).eval()


def invariant_part(model: SO3krates) -> SO3krates:
    """The invariant model (``degrees=()``) with the weights that ``model`` shares with it (the exchange
    block's linear map on the features: its top-left block): trained weights for the invariant model."""
    invariant = SO3krates(dataclasses.replace(model.config, degrees=())).to(model.dtype)
    state = model.state_dict()
    features = model.features
    for name, value in invariant.state_dict().items():
        source = state[name]
        if name.endswith(("contraction", "expansion")):  # constants of the degrees
            continue
        if name.endswith("exchange.linear.weight"):
            source = source[:features, :features]
        elif name.endswith("exchange.linear.bias"):
            source = source[:features]
        value.copy_(source)
    return invariant.eval()


@pytest.mark.parametrize("kernel", FAST_KERNELS)
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"cutoff_function": "polynomial"},
        {"degrees": (0, 1, 2, 4), "heads": 2, "features": 16},
        {"layers": 1, "heads": 1},
        {"degrees": ()},
        {"degrees": (), "cutoff_function": "polynomial", "layers": 3, "heads": 2},
        {"degrees": (), "layers": 1, "heads": 1},
    ],
    ids=[
        "paper-layout", "polynomial-cutoff", "degrees-0124", "one-layer-one-head",
        "invariant", "invariant-polynomial-three-layers", "invariant-one-layer-one-head",
    ],
)
def test_random_weights_match_the_reference_in_float64(kernel, overrides):
    torch.manual_seed(1)
    model = randomise(SO3krates(small_config(**overrides)), seed=3).eval()
    fast = FastSO3krates(model, kernel)
    assert_agree(
        fast_energies_and_forces(fast, model, NUMBERS, POSITIONS),
        reference_energies_and_forces(model, NUMBERS, POSITIONS),
    )


@pytest.mark.parametrize("kernel", FAST_KERNELS)
def test_batch_with_periodic_boxes_matches_the_reference(kernel, each_model):
    """Two structures in one batch, each with its own triclinic box, molecules across the box edge."""
    shifted = POSITIONS + torch.tensor([5.0, 5.5, 6.0], dtype=torch.float64)
    positions = torch.cat([POSITIONS, shifted])
    numbers = torch.cat([NUMBERS, NUMBERS])
    batch = torch.repeat_interleave(torch.arange(2), len(NUMBERS))
    boxes = torch.stack([TRICLINIC, TRICLINIC * 1.1])
    fast = FastSO3krates(each_model, kernel)
    result = fast_energies_and_forces(fast, each_model, numbers, positions, batch, 2, boxes)
    reference = reference_energies_and_forces(each_model, numbers, positions, batch, 2, boxes)
    assert_agree(result, reference)
    assert result[0].shape == (2,)


@pytest.mark.parametrize("kernel", FAST_KERNELS)
def test_unpruned_pairs_the_cuda_graph_shapes_match_the_reference(kernel, each_model):
    """All pairs kept (``--static-pairs``): pairs beyond the cutoff contribute exactly zero."""
    fast = FastSO3krates(each_model, kernel)
    result = fast_energies_and_forces(fast, each_model, NUMBERS, POSITIONS * 1.5, prune=False)
    assert_agree(result, reference_energies_and_forces(each_model, NUMBERS, POSITIONS * 1.5, prune=False))


@pytest.mark.parametrize("kernel", FAST_KERNELS)
def test_isolated_atoms_have_the_shifted_energy_and_zero_force(kernel, each_model):
    positions = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]], dtype=torch.float64)
    numbers = torch.tensor([1, 8])
    fast = FastSO3krates(each_model, kernel)
    energies, forces = fast_energies_and_forces(fast, each_model, numbers, positions)
    assert torch.equal(forces, torch.zeros_like(forces))
    assert relative_error(energies, each_model(numbers, positions)) < FLOAT64_RTOL


def shipped_model(name: str, configuration: str, dtype: torch.dtype) -> SO3krates:
    """The shipped checkpoint ``name`` (``equivariant``) or its invariant part (``invariant``, see
    :func:`invariant_part`: paper size, trained weights) in ``dtype``."""
    model = load_model(PRETRAINED / name / "best_checkpoint.pt").to(dtype).eval()
    return model if configuration == "equivariant" else invariant_part(model)


@pytest.mark.parametrize("configuration", list(CONFIGURATIONS))
@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("kernel", FAST_KERNELS)
def test_shipped_checkpoints_match_the_reference(name, kernel, configuration):
    structure = read_structure(PRETRAINED / name / "structure.pdb")
    numbers = torch.tensor(structure.atomic_numbers)
    generator = torch.Generator().manual_seed(0)
    positions = torch.tensor(structure.positions_angstrom) + 0.05 * torch.randn(
        structure.n_atoms, 3, generator=generator, dtype=torch.float64
    )
    model = shipped_model(name, configuration, torch.float64)
    reference = reference_energies_and_forces(model, numbers, positions)
    assert_agree(fast_energies_and_forces(FastSO3krates(model, kernel), model, numbers, positions), reference)
    model32 = shipped_model(name, configuration, torch.float32)
    energies, forces = fast_energies_and_forces(FastSO3krates(model32, kernel), model32, numbers, positions)
    assert relative_error(energies, reference[0]) < FLOAT32_ENERGY_RTOL
    assert relative_error(forces, reference[1]) < FLOAT32_FORCES_RTOL


@pytest.mark.parametrize("configuration", list(CONFIGURATIONS))
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", SHIPPED)
def test_fused_work_splits_of_the_shipped_models_match_the_reference(name, threads, configuration):
    """The fused operator splits its work by the thread count and the sizes: at 2 threads the 42-atom
    peptide (423 pairs) runs its pair chain, spherical blocks, radial filter groups and projections
    as two tasks, the 148-atom catcher its exchange products too; every split is the same model."""
    structure = read_structure(PRETRAINED / name / "structure.pdb")
    numbers = torch.tensor(structure.atomic_numbers)
    positions = torch.tensor(structure.positions_angstrom)
    model = shipped_model(name, configuration, torch.float64)
    reference = reference_energies_and_forces(model, numbers, positions)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = fast_energies_and_forces(FastSO3krates(model, "fused"), model, numbers, positions)
    finally:
        torch.set_num_threads(previous)
    assert_agree(result, reference)


@pytest.mark.parametrize(("threads", "pairs"), [(1, 300), (2, 100), (2, 300), (2, 1100)])
def test_fused_pair_and_spherical_operators_match_the_torch_route(each_model, threads, pairs):
    """The pair chain and the spherical filter parts, forward and backward, split into one task (100
    pairs), two tasks of one block each (300) or of several blocks (1100) at 2 threads (float64); the
    invariant model's pair chain (projections [Q, K, V], no Euclidean block, no spherical parts) too."""
    torch.manual_seed(7)
    fast = FastSO3krates(each_model, "fused")
    atoms, features, components = 30, fast.features, fast.m_tot
    first = torch.randint(0, atoms, (pairs,))
    second = (first + torch.randint(1, atoms, (pairs,))) % atoms
    projections = torch.randn(atoms, (5 if fast.equivariant else 3) * features, dtype=torch.float64)
    feature_filters = torch.randn(pairs, features, dtype=torch.float64)
    euclidean_filters = torch.randn(pairs, features if fast.equivariant else 0, dtype=torch.float64)
    cutoff = torch.rand(pairs, dtype=torch.float64)
    harmonics = torch.randn(pairs, components, dtype=torch.float64)
    chi = torch.randn(atoms, components, dtype=torch.float64)
    update_gradient = torch.randn(atoms, features, dtype=torch.float64)
    ev_update_gradient = torch.randn(atoms, components, dtype=torch.float64)
    ops, t = torch.ops.so3krates, 1
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        update, ev_update, scores = ops.pair_forward(
            projections, feature_filters, euclidean_filters, cutoff, harmonics, fast.parity, fast.component_degree,
            first, second, fast.heads, fast.n_degrees,
        )
        pair_gradients = ops.pair_backward(
            update_gradient, ev_update_gradient, projections, feature_filters, euclidean_filters, cutoff, harmonics,
            fast.parity, fast.component_degree, scores, first, second, fast.heads, fast.n_degrees,
        )
        if fast.equivariant:
            filters = (feature_filters.clone(), euclidean_filters.clone())
            difference, slopes = ops.spherical_forward(
                chi, first, second, fast.pair_contraction[t], fast.spherical_in_weight[t], fast.spherical_in_bias[t],
                fast.feature_spherical_out[t], fast.euclidean_spherical_out[t], *filters,
            )
            chi_gradient = ops.spherical_backward(
                feature_filters, euclidean_filters, difference, slopes, fast.pair_contraction[t],
                fast.spherical_in_weight[t], fast.feature_spherical_out[t], fast.euclidean_spherical_out[t], first,
                second, atoms,
            )
    finally:
        torch.set_num_threads(previous)
    expected = fast.pair_forward(projections, feature_filters, euclidean_filters, cutoff, harmonics, first, second)
    expected_gradients = fast.pair_backward(
        update_gradient, ev_update_gradient, projections, feature_filters, euclidean_filters, cutoff, harmonics,
        expected[2], first, second,
    )
    for value, reference in zip((update, ev_update, scores, *pair_gradients), expected + expected_gradients,
                                strict=True):
        # the invariant model's Euclidean outputs are empty: dchi (N, 0), filter and harmonics gradients (P, 0)
        assert value.shape == reference.shape
        assert value.numel() == 0 or relative_error(value, reference) < 1e-12
    if not fast.equivariant:
        return
    expected_filters = (feature_filters.clone(), euclidean_filters.clone())
    expected_difference, saved = fast.spherical_forward(t, chi, first, second, *expected_filters)
    assert relative_error(difference, expected_difference) < 1e-12
    for value, reference in zip(filters, expected_filters, strict=True):
        assert relative_error(value, reference) < 1e-12
    expected_chi_gradient = fast.spherical_backward(
        t, feature_filters, euclidean_filters, expected_difference, saved, first, second, atoms
    )
    assert relative_error(chi_gradient, expected_chi_gradient) < 1e-12


@pytest.mark.parametrize("kernel", FAST_KERNELS)
def test_scripted_fast_module_equals_the_eager_one(kernel, each_model):
    fast = FastSO3krates(each_model, kernel)
    scripted = torch.jit.script(fast)
    eager_result = fast_energies_and_forces(fast, each_model, NUMBERS, POSITIONS)
    assert_agree(fast_energies_and_forces(scripted, each_model, NUMBERS, POSITIONS), eager_result, 1e-13)
    # The PyTorch-only module must load without the C++ operators.
    assert ("so3krates.energy_forces" in scripted.forward.code) == (kernel == "fused")
    assert "torch.ops.so3krates" not in scripted.pair_forward.code + scripted.radial_forward.code


def test_harmonic_polynomials_reproduce_the_reference_harmonics_and_their_derivatives():
    from so3krates_openmm.model.basis import SphericalHarmonics

    degrees = [0, 1, 2, 3, 4]
    exponents, coefficients, derivatives = harmonic_polynomials(degrees)
    points = torch.nn.functional.normalize(torch.randn(20, 3, dtype=torch.float64), dim=1).requires_grad_(True)
    monomials = torch.prod(points.unsqueeze(1) ** exponents.double(), dim=-1)
    values = SphericalHarmonics(degrees)(points)
    torch.testing.assert_close(monomials @ coefficients, values, rtol=0, atol=1e-13)
    weights = torch.randn_like(values)
    (expected,) = torch.autograd.grad((values * weights).sum(), points)
    derived = ((weights @ derivatives).view(20, 3, -1) * monomials.unsqueeze(1)).sum(-1)
    torch.testing.assert_close(derived, expected, rtol=0, atol=1e-12)


def test_fused_operators_reject_inconsistent_shapes(random_model):
    kernels.load()
    projections = torch.zeros(3, 5 * 24, dtype=torch.float64)
    filters = torch.zeros(2, 24, dtype=torch.float64)
    index = torch.zeros(2, dtype=torch.long)
    with pytest.raises(RuntimeError, match="per-pair inputs disagree"):
        torch.ops.so3krates.pair_forward(
            projections, filters, filters, torch.zeros(5, dtype=torch.float64), torch.zeros(2, 15, dtype=torch.float64),
            torch.ones(15, dtype=torch.float64), torch.zeros(15, dtype=torch.long), index, index, 4, 3,
        )


@pytest.mark.parametrize(
    ("threads", "dtype", "pairs"),
    [
        (1, torch.float64, 700),
        (2, torch.float64, 700),
        (2, torch.float64, 300),
        (2, torch.float64, 1100),
        (1, torch.float32, 700),
        (2, torch.float32, 300),
    ],
)
def test_fused_radial_operators_match_the_torch_route(random_model, threads, dtype, pairs):
    """Several cache blocks of pairs (the last one partial), some pairs beyond the cutoff, 1 and 2 threads
    (with 2 threads and few blocks the filters are split into groups: 300 and 700 pairs; 1100 pairs are
    split by blocks only); float32 has other register tiles (partial column panels) than float64."""
    torch.manual_seed(5)
    model = copy.deepcopy(random_model).to(dtype)
    fast = FastSO3krates(model, "fused")
    distances = torch.rand(pairs, dtype=dtype) * 1.2 * model.cutoff + 0.3
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        filters, saved = radial_operator(fast, distances)
        expected_filters, expected_saved = fast.radial_forward(distances)
        gradients = [torch.randn_like(f) for f in filters]
        distance_gradient = radial_backward_operator(fast, gradients, distances, saved)
        expected_gradient = fast.radial_backward(gradients, distances, expected_saved)
    finally:
        torch.set_num_threads(previous)
    assert relative_error(filters, expected_filters) < tolerance
    assert relative_error(distance_gradient, expected_gradient) < tolerance


def radial_operator(fast: FastSO3krates, distances: torch.Tensor):
    """``torch.ops.so3krates.radial_forward`` with the weights of ``fast`` (spec: ``fast.radial_forward``)."""
    return torch.ops.so3krates.radial_forward(
        distances, fast.radial_centres, fast.beta, fast.radial_in_weight, fast.radial_out_weight, fast.radial_out_bias
    )


def radial_backward_operator(fast: FastSO3krates, gradients, distances: torch.Tensor, saved: torch.Tensor):
    """``torch.ops.so3krates.radial_backward`` with the weights of ``fast`` (spec: ``fast.radial_backward``)."""
    return torch.ops.so3krates.radial_backward(
        gradients, distances, fast.radial_centres, fast.beta, fast.radial_in_weight, fast.radial_out_weight, saved
    )


def test_fused_operators_pack_the_weights_again_after_an_in_place_change(random_model):
    """The operators keep packed weights between calls; changing a weight tensor in place repacks them."""
    fast = FastSO3krates(random_model, "fused")
    distances = torch.rand(40, dtype=torch.float64) * 2.0 + 1.0
    radial_operator(fast, distances)  # packs and keeps the weights
    with torch.no_grad():
        fast.radial_out_weight.mul_(1.5)
        fast.radial_in_weight.add_(0.1)
        fast.radial_out_bias.sub_(0.2)
    filters, saved = radial_operator(fast, distances)
    expected_filters, expected_saved = fast.radial_forward(distances)
    assert relative_error(filters, expected_filters) < 1e-12
    gradients = [torch.randn_like(f) for f in filters]
    expected = fast.radial_backward(gradients, distances, expected_saved)
    assert relative_error(radial_backward_operator(fast, gradients, distances, saved), expected) < 1e-12


def test_fused_radial_backward_rejects_a_missing_filter_gradient(random_model):
    fast = FastSO3krates(random_model, "fused")
    distances = torch.rand(10, dtype=torch.float64) + 1.0
    filters, saved = radial_operator(fast, distances)
    with pytest.raises(RuntimeError, match="one filter gradient per filter"):
        radial_backward_operator(fast, [torch.zeros_like(f) for f in filters][1:], distances, saved)


def test_fused_module_runs_one_operator_on_the_cpu(random_model):
    """The fused kind calls the whole-model operator on the CPU: one operator call per evaluation, whose stages
    torch.profiler shows by name."""
    fast = torch.jit.script(FastSO3krates(random_model, "fused"))
    numbers, positions = torch.tensor([6, 1, 8, 1]), torch.rand(4, 3, dtype=torch.float64) * 2.0
    first, second = torch.tensor([0, 0, 0, 1, 1, 2]), torch.tensor([1, 2, 3, 2, 3, 3])
    shifts, batch = torch.zeros(6, 3, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        fast(numbers, positions, batch, 1, first, second, shifts)
    names = [event.key for event in profiler.key_averages()]
    assert "so3krates::energy_forces" in names
    assert "so3krates::pair_forward" not in names  # called inside, as a C++ function
    assert {"so3krates::energy_forces::radial_forward", "so3krates::energy_forces::pair_forward",
            "so3krates::energy_forces::pair_backward", "so3krates::energy_forces::geometry_backward"} <= set(names)


def test_unknown_kernels_are_a_clear_error(random_model):
    with pytest.raises(ValueError, match="unknown kernels"):
        FastSO3krates(random_model, "cuda")


# ----- export and OpenMM -----


@pytest.mark.parametrize("kernels_kind", ["analytic", "fused"])
def test_export_kinds_match_the_reference_export_and_record_their_kind(tmp_path, each_model, kernels_kind):
    checkpoint = save_checkpoint(each_model, tmp_path / "checkpoint.pt")
    structure = Structure(ETHANOL_WATER_NUMBERS, ETHANOL_WATER_POSITIONS.copy(), box_angstrom=TRICLINIC.numpy())
    common = dict(structure=structure, periodic=True, dtype="float64")
    reference_path = export_checkpoint(checkpoint, tmp_path / "reference.pt", **common)
    fast_path = export_checkpoint(checkpoint, tmp_path / f"{kernels_kind}.pt", kernels=kernels_kind, **common)
    metadata = read_export_metadata(fast_path)
    assert metadata["kernels"] == kernels_kind and metadata["outputs_forces"] is True
    assert read_export_metadata(reference_path)["kernels"] == "reference"
    positions = torch.tensor(ETHANOL_WATER_POSITIONS / 10.0 + 0.31, requires_grad=True)
    box = TRICLINIC / 10.0
    reference_energy = torch.jit.load(str(reference_path))(positions, box)
    (gradient,) = torch.autograd.grad(reference_energy, positions)
    # openmm-torch freezes the module; TorchScript optimises it after the first calls
    frozen = torch.jit.freeze(torch.jit.load(str(fast_path)).eval())
    for _ in range(3):
        energy, forces = frozen(positions.detach(), box)
        assert relative_error(energy, reference_energy) < FLOAT64_RTOL
        assert relative_error(forces, -gradient) < FLOAT64_RTOL
    with zipfile.ZipFile(fast_path) as archive:
        stored = [n for n in archive.namelist() if n.endswith(METADATA_FILE)]
        assert json.loads(archive.read(stored[0]))["kernels"] == kernels_kind


@pytest.mark.parametrize("values", [(float("nan"),), (float("inf"),), (float("inf"), -float("inf"))])
def test_exported_modules_reject_positions_that_are_not_finite(random_model, values):
    """NaN or infinite coordinates (also +inf and -inf together) are a clear error, not a step."""
    for kernels_kind in ("reference", "fused"):
        module = torch.jit.script(build_energy_module(random_model, ETHANOL_WATER_NUMBERS, kernels=kernels_kind))
        positions = POSITIONS / 10.0
        positions[0, : len(values)] = torch.tensor(values, dtype=torch.float64)
        with pytest.raises(torch.jit.Error, match="NaN or infinite"):
            module(positions)


def test_fast_module_with_a_subsystem_and_static_pairs_matches_the_reference(each_model):
    """ML/MM sub-system (forces zero elsewhere) and the all-pairs list of CUDA graphs."""
    n_particles = len(ETHANOL_WATER_NUMBERS) + 3
    indices = list(range(2, 2 + len(ETHANOL_WATER_NUMBERS)))
    numbers = ETHANOL_WATER_NUMBERS
    positions = torch.zeros(n_particles, 3, dtype=torch.float64)
    positions[indices] = POSITIONS / 10.0
    positions[[0, 1, n_particles - 1]] = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0]], dtype=torch.float64)
    reference = torch.jit.script(build_energy_module(each_model, numbers, indices, n_particles, False, True, True))
    fast = torch.jit.script(
        build_energy_module(each_model, numbers, indices, n_particles, False, True, True, "fused")
    )
    assert_agree(fast(positions), reference(positions))
    assert torch.equal(fast(positions)[1][[0, 1, n_particles - 1]], torch.zeros(3, 3, dtype=torch.float64))


def test_fused_export_runs_in_openmm_torchforce(tmp_path, each_model):
    import openmm
    import openmmtorch
    from openmm import unit

    checkpoint = save_checkpoint(each_model, tmp_path / "checkpoint.pt")
    structure = Structure(ETHANOL_WATER_NUMBERS, ETHANOL_WATER_POSITIONS.copy())
    results = []
    for kind in ("reference", "fused"):
        path = export_checkpoint(
            checkpoint, tmp_path / f"{kind}.pt", structure=structure, dtype="float32", kernels=kind
        )
        system = openmm.System()
        for _ in ETHANOL_WATER_NUMBERS:
            system.addParticle(12.0)
        force = openmmtorch.TorchForce(str(path))
        force.setOutputsForces(read_export_metadata(path)["outputs_forces"])
        system.addForce(force)
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        context.setPositions(ETHANOL_WATER_POSITIONS / 10.0 * unit.nanometer)
        state = context.getState(getEnergy=True, getForces=True)
        results.append(
            (
                state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
                np.asarray(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)),
            )
        )
    (reference_energy, reference_forces), (energy, forces) = results
    assert abs(energy - reference_energy) < FLOAT32_ENERGY_RTOL * abs(reference_energy)
    assert np.abs(forces - reference_forces).max() < FLOAT32_FORCES_RTOL * np.abs(reference_forces).max()


def test_missing_compiler_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("SO3KRATES_KERNELS_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-c++-compiler")
    with pytest.raises(kernels.KernelsUnavailable, match="need a C\\+\\+ compiler.*--kernels reference"):
        kernels._build(kernels.cache_directory())
