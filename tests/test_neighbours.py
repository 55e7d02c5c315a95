"""Neighbour search: the cell list finds exactly the pairs of the all-pairs search."""

from __future__ import annotations

import pytest
import torch

from so3krates_openmm.model.neighbours import neighbour_list


def pair_set(first, second, shifts) -> set:
    pairs = zip(first, second, shifts, strict=True)
    return {(int(i), int(j), tuple(round(float(x), 6) for x in s)) for i, j, s in pairs}


def random_system(seed: int, n_atoms: int, side: float):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n_atoms, 3, generator=generator, dtype=torch.float64) * side


@pytest.mark.parametrize("seed", [0, 1])
def test_cell_list_equals_all_pairs_without_box(seed):
    positions = random_system(seed, 600, 20.0) - 7.0
    batch = torch.zeros(600, dtype=torch.long)
    reference = neighbour_list(positions, batch, 1, 4.0, method="all_pairs")
    cells = neighbour_list(positions, batch, 1, 4.0, method="cell_list")
    assert len(reference[0]) > 1000
    assert pair_set(*cells) == pair_set(*reference)
    assert len(cells[0]) == len(reference[0])


@pytest.mark.parametrize(
    "box",
    [
        torch.diag(torch.tensor([17.0, 15.0, 21.0])),
        torch.tensor([[17.0, 0.0, 0.0], [-5.0, 16.0, 0.0], [4.0, -7.0, 18.0]]),
    ],
    ids=["orthorhombic", "triclinic"],
)
def test_cell_list_equals_all_pairs_in_periodic_boxes(box):
    box = box.to(torch.float64)
    fractional = random_system(3, 700, 1.0)
    positions = fractional @ box + torch.tensor([0.5, -30.0, 2.0], dtype=torch.float64)  # not wrapped
    batch = torch.zeros(700, dtype=torch.long)
    boxes = box.unsqueeze(0)
    reference = neighbour_list(positions, batch, 1, 5.0, boxes, method="all_pairs")
    cells = neighbour_list(positions, batch, 1, 5.0, boxes, method="cell_list")
    assert len(reference[0]) > 2000
    assert pair_set(*cells) == pair_set(*reference)
    assert len(cells[0]) == len(reference[0])


def test_cell_list_batches_keep_structures_apart():
    a, b = random_system(4, 300, 12.0), random_system(5, 200, 9.0)
    positions = torch.cat([a, b])
    batch = torch.tensor([0] * 300 + [1] * 200)
    reference = neighbour_list(positions, batch, 2, 3.0, method="all_pairs")
    cells = neighbour_list(positions, batch, 2, 3.0, method="cell_list")
    assert pair_set(*cells) == pair_set(*reference)
    assert all(batch[i] == batch[j] for i, j in zip(cells[0][:200], cells[1][:200], strict=True))


def test_small_periodic_box_falls_back_to_all_pairs():
    box = torch.diag(torch.tensor([11.0, 11.0, 11.0], dtype=torch.float64))  # only two 5 Å cells per side
    positions = random_system(6, 300, 11.0)
    batch = torch.zeros(300, dtype=torch.long)
    reference = neighbour_list(positions, batch, 1, 5.0, box.unsqueeze(0), method="all_pairs")
    cells = neighbour_list(positions, batch, 1, 5.0, box.unsqueeze(0), method="cell_list")
    assert pair_set(*cells) == pair_set(*reference)


def test_neighbour_search_is_scriptable():
    scripted = torch.jit.script(neighbour_list)
    positions = random_system(7, 400, 15.0)
    batch = torch.zeros(400, dtype=torch.long)
    assert pair_set(*scripted(positions, batch, 1, 4.0, None, True, "cell_list")) == pair_set(
        *neighbour_list(positions, batch, 1, 4.0, method="all_pairs")
    )


def test_kept_all_pairs_give_the_same_list():
    """A caller's precomputed candidates (the exported module's buffers) replace structure_pairs."""
    from so3krates_openmm.model.neighbours import structure_pairs

    positions = random_system(8, 60, 9.0)
    batch = torch.zeros(60, dtype=torch.long)
    kept = structure_pairs(batch, 1)
    assert pair_set(*neighbour_list(positions, batch, 1, 4.0, all_pairs=kept)) == pair_set(
        *neighbour_list(positions, batch, 1, 4.0)
    )
