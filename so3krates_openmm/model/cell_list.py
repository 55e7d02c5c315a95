"""Cell-list candidate pairs: linear-scaling neighbour search (TorchScript-compatible).

Space is divided into cells at least one cutoff wide; the candidates of an atom
are the atoms of its own and the 26 adjacent cells. For a periodic (reduced,
triclinic) box the cells are slabs of fractional coordinates whose plane
spacing is at least the cutoff, and the adjacent cells wrap around the box;
boxes with fewer than three cells along a direction fall back to all pairs.
The candidates (each unordered pair once, i < j) are then filtered by
distance exactly as all-pairs candidates are, so both searches give the same
neighbour list.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


def _stencil(device: torch.device) -> Tensor:
    """The 27 cell offsets (-1, 0, 1)^3, shape (27, 3)."""
    steps = torch.tensor([-1, 0, 1], device=device)
    return torch.cartesian_prod(steps, steps, steps)


def _linear_index(cells: Tensor, n_cells: Tensor) -> Tensor:
    """Row-major linear index of integer cell coordinates (..., 3) in grids (..., 3)."""
    return (cells[..., 0] * n_cells[..., 1] + cells[..., 1]) * n_cells[..., 2] + cells[..., 2]


def plane_spacings(boxes: Tensor) -> Tensor:
    """Distances (B, 3) between the lattice planes of boxes (B, 3, 3): volume / |cross of the other two|."""
    a, b, c = boxes[:, 0], boxes[:, 1], boxes[:, 2]
    volume = torch.abs(torch.sum(a * torch.linalg.cross(b, c), dim=1))
    areas = torch.stack(
        [
            torch.linalg.vector_norm(torch.linalg.cross(b, c), dim=1),
            torch.linalg.vector_norm(torch.linalg.cross(c, a), dim=1),
            torch.linalg.vector_norm(torch.linalg.cross(a, b), dim=1),
        ],
        dim=1,
    )
    return volume.unsqueeze(1) / areas


def cell_list_pairs(
    positions: Tensor, batch: Tensor, num_structures: int, cutoff: float, boxes: Tensor, periodic: bool
) -> Tuple[Tensor, Tensor, bool]:
    """Candidate unordered pairs (i < j) that include every pair closer than ``cutoff``.

    Args:
        positions: (N, 3) detached positions in Å.
        batch: (N,) structure index per atom (contiguous).
        num_structures: number of structures B.
        cutoff: Å.
        boxes: (B, 3, 3) reduced periodic boxes in Å (ignored unless ``periodic``).
        periodic: whether ``boxes`` apply.

    Returns:
        first, second, and ``False`` when a periodic box is too small for
        three cells along some direction (then the pairs are empty and the
        caller must use all pairs).
    """
    device = positions.device
    n_atoms = positions.shape[0]
    if periodic:
        atom_boxes = boxes[batch]
        fractional = torch.linalg.solve(atom_boxes.transpose(1, 2), positions.unsqueeze(-1)).squeeze(-1)
        fractional = fractional - torch.floor(fractional)
        n_cells = torch.floor(plane_spacings(boxes) / cutoff).to(torch.long)
        if bool(torch.any(n_cells < 3)):
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return empty, empty, False
        atom_cells = n_cells[batch]
        cells = torch.minimum(torch.floor(fractional * atom_cells).to(torch.long), atom_cells - 1)
    else:
        expanded = batch.unsqueeze(1).expand(n_atoms, 3)
        origin = torch.full((num_structures, 3), float("inf"), dtype=positions.dtype, device=device)
        origin = origin.scatter_reduce(0, expanded, positions, "amin", include_self=True)
        cells = torch.floor((positions - origin[batch]) / cutoff).to(torch.long)
        grid = torch.amax(cells, dim=0) + 1
        n_cells = grid.unsqueeze(0).expand(num_structures, 3)
        atom_cells = n_cells[batch]
    cells_per_structure = torch.prod(n_cells, dim=1)
    structure_offsets = (torch.cumsum(cells_per_structure, 0) - cells_per_structure)[batch]
    keys = structure_offsets + _linear_index(cells, atom_cells)
    order = torch.argsort(keys)
    unique_keys, _, counts = torch.unique_consecutive(keys[order], return_inverse=True, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts

    neighbour_cells = cells.unsqueeze(1) + _stencil(device).unsqueeze(0)  # (N, 27, 3)
    grids = atom_cells.unsqueeze(1).expand(n_atoms, 27, 3)
    if periodic:
        neighbour_cells = torch.remainder(neighbour_cells, grids)
        valid = torch.ones(neighbour_cells.shape[:2], dtype=torch.bool, device=device)
    else:
        valid = torch.all((neighbour_cells >= 0) & (neighbour_cells < grids), dim=2)
    neighbour_keys = structure_offsets.unsqueeze(1) + _linear_index(neighbour_cells, grids)
    slot = torch.clamp(torch.searchsorted(unique_keys, neighbour_keys), max=unique_keys.shape[0] - 1)
    found = valid & (unique_keys[slot] == neighbour_keys)
    cell_starts = torch.where(found, starts[slot], torch.zeros_like(slot)).flatten()
    cell_counts = torch.where(found, counts[slot], torch.zeros_like(slot)).flatten()

    first = torch.repeat_interleave(torch.arange(n_atoms, device=device).repeat_interleave(27), cell_counts)
    offsets = torch.cumsum(cell_counts, 0) - cell_counts
    local = torch.arange(first.shape[0], device=device) - torch.repeat_interleave(offsets, cell_counts)
    second = order[torch.repeat_interleave(cell_starts, cell_counts) + local]
    keep = first < second
    return first[keep], second[keep], True
