"""Periodic boxes: minimum image against explicit replicas, wrapping, box checks."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import ETHANOL_WATER_NUMBERS, ETHANOL_WATER_POSITIONS

from so3krates_openmm.model.neighbours import neighbour_list

NUMBERS = torch.tensor(ETHANOL_WATER_NUMBERS)
POSITIONS = torch.tensor(ETHANOL_WATER_POSITIONS)

CUBIC = torch.diag(torch.tensor([6.4, 6.4, 6.4], dtype=torch.float64))
TRICLINIC = torch.tensor([[6.4, 0.0, 0.0], [1.2, 6.3, 0.0], [-1.0, 1.5, 6.2]], dtype=torch.float64)


def wrap(positions: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Wrap positions into the reduced box (fractional coordinates in [0, 1))."""
    fractional = positions @ torch.linalg.inv(box)
    return (fractional - torch.floor(fractional)) @ box


def explicit_replica_energy(model, numbers, positions, box) -> float:
    """Sum of the atomic energies of the central cell inside a 3x3x3 cluster of replicas.

    With a cutoff of 3 Å and 2 layers an atomic energy depends on atoms within 6 Å,
    and every box width here exceeds that, so the cluster is an exact reference.
    """
    replicas = [
        positions + (torch.tensor(shift, dtype=torch.float64) @ box)
        for shift in itertools.product((0, -1, 1), repeat=3)
    ]
    cluster = torch.cat(replicas)
    cluster_numbers = numbers.repeat(len(replicas))
    batch = torch.zeros(len(cluster), dtype=torch.long)
    centres, neighbours, shifts = neighbour_list(cluster, batch, 1, model.cutoff)
    atomic = model.atomic_energies(cluster_numbers, cluster, centres, neighbours, shifts)
    return float(atomic[: len(numbers)].sum().detach())


@pytest.mark.parametrize("box", [CUBIC, TRICLINIC], ids=["cubic", "triclinic"])
def test_minimum_image_energy_equals_explicit_sum_over_replicas(small_model, box):
    positions = wrap(POSITIONS + torch.tensor([5.0, 5.5, 6.0], dtype=torch.float64), box)
    periodic_energy, _ = small_model.energy_and_forces(NUMBERS, positions, boxes=box)
    isolated_energy, _ = small_model.energy_and_forces(NUMBERS, POSITIONS)
    reference = explicit_replica_energy(small_model, NUMBERS, positions, box)
    assert abs(float(periodic_energy) - float(isolated_energy)) > 1e-6  # images do interact
    assert abs(float(periodic_energy) - reference) < 1e-10 * abs(reference)


@pytest.mark.parametrize("box", [CUBIC, TRICLINIC], ids=["cubic", "triclinic"])
def test_molecule_translated_across_the_box_edge_has_the_same_energy_and_forces(small_model, box):
    inside = POSITIONS + torch.tensor([1.0, 1.5, 1.0], dtype=torch.float64)
    energy, forces = small_model.energy_and_forces(NUMBERS, inside, boxes=box)
    for shift in ([6.0, 0.0, 0.0], [0.0, 6.5, 0.0], [-2.0, 3.3, 5.9]):
        moved = wrap(inside + torch.tensor(shift, dtype=torch.float64), box)
        moved_energy, moved_forces = small_model.energy_and_forces(NUMBERS, moved, boxes=box)
        assert abs(float(moved_energy - energy)) < 1e-10 * abs(float(energy))
        torch.testing.assert_close(moved_forces, forces, rtol=1e-8, atol=1e-10)


def test_periodic_forces_equal_finite_differences(small_model):
    positions = wrap(POSITIONS + 5.0, TRICLINIC)
    _, forces = small_model.energy_and_forces(NUMBERS, positions, boxes=TRICLINIC)
    step = 1e-5
    for atom, axis in [(0, 0), (2, 1), (9, 2), (11, 0)]:
        plus, minus = positions.clone(), positions.clone()
        plus[atom, axis] += step
        minus[atom, axis] -= step
        e_plus = float(small_model.energy_and_forces(NUMBERS, plus, boxes=TRICLINIC)[0])
        e_minus = float(small_model.energy_and_forces(NUMBERS, minus, boxes=TRICLINIC)[0])
        assert abs(-(e_plus - e_minus) / (2 * step) - float(forces[atom, axis])) < 1e-6


def test_cutoff_larger_than_half_the_box_is_a_clear_error(small_model):
    small_box = torch.diag(torch.tensor([5.0, 8.0, 8.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="exceeds half the smallest periodic box width"):
        small_model.energy_and_forces(NUMBERS, POSITIONS, boxes=small_box)


def test_box_not_in_reduced_form_is_a_clear_error(small_model):
    box = CUBIC.clone()
    box[0, 1] = 0.5
    with pytest.raises(ValueError, match="reduced"):
        small_model.energy_and_forces(NUMBERS, POSITIONS, boxes=box)
