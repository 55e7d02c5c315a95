"""Physics of the model: symmetries, forces as gradients, smoothness at the cutoff, batching.

Every test that takes ``small_model`` runs on the equivariant model and on the invariant ablation
(``degrees=()``, the paper's comparison model).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import (
    ETHANOL_WATER_NUMBERS,
    ETHANOL_WATER_POSITIONS,
    random_rotation,
    randomise,
    small_config,
)

from so3krates_openmm import SO3krates
from so3krates_openmm.model.basis import SphericalHarmonics, degree_contraction_matrix

NUMBERS = torch.tensor(ETHANOL_WATER_NUMBERS)
POSITIONS = torch.tensor(ETHANOL_WATER_POSITIONS)


@pytest.fixture(params=["equivariant", "invariant"])
def small_model(request) -> SO3krates:
    torch.manual_seed(0)
    config = small_config() if request.param == "equivariant" else small_config(degrees=())
    return randomise(SO3krates(config)).eval()


def energy(model: SO3krates, positions: torch.Tensor, numbers: torch.Tensor = NUMBERS) -> float:
    return float(model.energy_and_forces(numbers, positions)[0][0])


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def test_energy_is_nontrivial(small_model):
    """Guard for every invariance test: distorting the molecule changes the energy."""
    distorted = POSITIONS.clone()
    distorted[2] += torch.tensor([0.1, -0.05, 0.02])
    assert relative(energy(small_model, distorted), energy(small_model, POSITIONS)) > 1e-6


@pytest.mark.parametrize("seed", [1, 2])
def test_energy_invariant_under_rotation_translation_reflection(small_model, seed):
    reference = energy(small_model, POSITIONS)
    rotation = random_rotation(seed)
    translation = torch.tensor([3.7, -12.1, 0.4], dtype=torch.float64)
    assert relative(energy(small_model, POSITIONS @ rotation.T), reference) < 1e-10
    assert relative(energy(small_model, POSITIONS + translation), reference) < 1e-10
    reflection = torch.diag(torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64))
    assert relative(energy(small_model, POSITIONS @ reflection @ rotation.T), reference) < 1e-10


@pytest.mark.parametrize("seed", [0, 1])
def test_energy_invariant_and_forces_permuted_under_a_permutation_of_the_atoms(small_model, seed):
    """Relabelling the atoms (each keeps its element and position) leaves the energy and permutes the forces."""
    reference_energy, reference_forces = small_model.energy_and_forces(NUMBERS, POSITIONS)
    permutation = torch.randperm(len(NUMBERS), generator=torch.Generator().manual_seed(seed))
    assert not torch.equal(NUMBERS[permutation], NUMBERS)  # atoms of different elements change places
    permuted_energy, permuted_forces = small_model.energy_and_forces(NUMBERS[permutation], POSITIONS[permutation])
    assert relative(float(permuted_energy), float(reference_energy)) < 1e-10
    torch.testing.assert_close(permuted_forces, reference_forces[permutation], rtol=1e-9, atol=1e-12)
    # Guard: moving the positions without their elements is another molecule with another energy.
    assert relative(energy(small_model, POSITIONS[permutation]), float(reference_energy)) > 1e-6


def test_energy_invariant_under_exchange_of_same_element_atoms(small_model):
    """Swapping positions of atoms of the same element (H and H, C and C, O and O) is the same molecule."""
    reference_energy, reference_forces = small_model.energy_and_forces(NUMBERS, POSITIONS)
    permutation = torch.tensor([1, 0, 9, 10, 4, 3, 11, 7, 6, 2, 8, 5])
    assert torch.equal(NUMBERS[permutation], NUMBERS)  # only same-element atoms exchanged
    assert not torch.equal(permutation, torch.arange(len(NUMBERS)))
    permuted_energy, permuted_forces = small_model.energy_and_forces(NUMBERS, POSITIONS[permutation])
    assert relative(float(permuted_energy), float(reference_energy)) < 1e-10
    torch.testing.assert_close(permuted_forces, reference_forces[permutation], rtol=1e-9, atol=1e-12)


def test_forces_rotate_with_the_frame(small_model):
    rotation = random_rotation(7)
    _, forces = small_model.energy_and_forces(NUMBERS, POSITIONS)
    _, rotated_forces = small_model.energy_and_forces(NUMBERS, POSITIONS @ rotation.T)
    torch.testing.assert_close(rotated_forces, forces @ rotation.T, rtol=1e-9, atol=1e-11)


def test_forces_equal_central_finite_differences(small_model):
    _, forces = small_model.energy_and_forces(NUMBERS, POSITIONS)
    step = 1e-5
    assert forces.abs().max() > 1e-3
    # Every atom, one Cartesian component each (cycling x, y, z), keeps the test fast.
    for atom in range(len(NUMBERS)):
        axis = atom % 3
        plus, minus = POSITIONS.clone(), POSITIONS.clone()
        plus[atom, axis] += step
        minus[atom, axis] -= step
        numerical = -(energy(small_model, plus) - energy(small_model, minus)) / (2 * step)
        assert abs(numerical - float(forces[atom, axis])) < 1e-6 + 1e-5 * abs(numerical)


@pytest.mark.parametrize("degrees", [(1, 2, 3), ()], ids=["equivariant", "invariant"])
@pytest.mark.parametrize("cutoff_function", ["cosine", "polynomial"])
def test_energy_and_forces_continuous_as_a_neighbour_crosses_the_cutoff(cutoff_function, degrees):
    torch.manual_seed(3)
    model = randomise(SO3krates(small_config(cutoff_function=cutoff_function, degrees=degrees)))
    cutoff = model.cutoff
    numbers = torch.tensor([6, 8, 1])
    base = torch.tensor([[0.0, 0.0, 0.0], [1.2, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)

    def at(distance: float):
        positions = base.clone()
        positions[2] = torch.tensor([-distance, 0.3, 0.0], dtype=torch.float64)
        # Keep the O-H distance beyond the cutoff so that only the C-H pair crosses it.
        return model.energy_and_forces(numbers, positions)

    d_c = math.sqrt(cutoff**2 - 0.3**2)
    inside_energy, inside_forces = at(d_c - 1e-7)
    outside_energy, outside_forces = at(d_c + 1e-7)
    far_energy, _ = at(d_c + 0.5)
    near_energy, _ = at(d_c - 0.5)
    assert abs(float(near_energy - far_energy)) > 1e-4  # the pair matters inside the cutoff
    assert abs(float(inside_energy - outside_energy)) < 1e-9
    torch.testing.assert_close(inside_forces, outside_forces, rtol=0, atol=1e-5)


def test_isolated_atoms_have_finite_energy_and_zero_force(small_model):
    single_energy, single_forces = small_model.energy_and_forces(
        torch.tensor([8]), torch.zeros(1, 3, dtype=torch.float64)
    )
    assert torch.isfinite(single_energy).all()
    assert torch.equal(single_forces, torch.zeros(1, 3, dtype=torch.float64))
    far = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]], dtype=torch.float64)
    pair_energy, pair_forces = small_model.energy_and_forces(torch.tensor([8, 8]), far)
    assert torch.isfinite(pair_energy).all()
    assert torch.equal(pair_forces, torch.zeros(2, 3, dtype=torch.float64))
    assert relative(float(pair_energy), 2 * float(single_energy)) < 1e-12


def test_batch_of_different_molecules_equals_separate_evaluation(small_model):
    water_numbers, water_positions = NUMBERS[9:], POSITIONS[9:] + 20.0
    e1, f1 = small_model.energy_and_forces(NUMBERS, POSITIONS)
    e2, f2 = small_model.energy_and_forces(water_numbers, water_positions)
    batch = torch.tensor([0] * len(NUMBERS) + [1] * len(water_numbers))
    energies, forces = small_model.energy_and_forces(
        torch.cat([NUMBERS, water_numbers]), torch.cat([POSITIONS, water_positions - 20.0]), batch, 2
    )
    torch.testing.assert_close(energies, torch.cat([e1, e2]), rtol=1e-12, atol=0)
    torch.testing.assert_close(forces, torch.cat([f1, f2]), rtol=1e-10, atol=1e-12)


def test_euclidean_variables_start_at_zero_and_gradients_are_finite():
    """The contraction is a squared norm: no NaN gradient at chi = 0 (first layer)."""
    torch.manual_seed(4)
    model = randomise(SO3krates(small_config(layers=1)))
    _, forces = model.energy_and_forces(NUMBERS, POSITIONS)
    assert torch.isfinite(forces).all()


def test_spherical_harmonics_are_orthonormal_and_contraction_is_rotation_invariant():
    degrees = [0, 1, 2, 3, 4]
    harmonics = SphericalHarmonics(degrees)
    # Lebedev-free check: Monte Carlo on many random unit vectors.
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(400_000, 3, generator=generator, dtype=torch.float64)
    vectors = vectors / vectors.norm(dim=1, keepdim=True)
    values = harmonics(vectors)
    gram = 4 * math.pi * values.T @ values / len(vectors)
    torch.testing.assert_close(gram, torch.eye(gram.shape[0], dtype=torch.float64), rtol=0, atol=0.02)
    contraction = degree_contraction_matrix(degrees)
    rotation = random_rotation(5)
    some = vectors[:50]
    torch.testing.assert_close(
        (harmonics(some @ rotation.T) ** 2) @ contraction, (harmonics(some) ** 2) @ contraction, rtol=1e-12, atol=1e-12
    )


def test_paper_size_model_has_expected_shape():
    from so3krates_openmm import SO3kratesConfig

    config = SO3kratesConfig()
    assert (config.features, config.layers, config.heads, tuple(config.degrees), config.radial_basis_size) == (
        132,
        3,
        4,
        (1, 2, 3),
        32,
    )
    assert config.cutoff == 5.0 and config.cutoff_function == "cosine" and config.m_tot == 15
    model = SO3krates(config)
    assert model.energy_shifts.dtype == torch.float64
    assert model.embedding.weight.dtype == torch.float32
