"""Neighbour lists inside the model (TorchScript-compatible).

A neighbour list is three tensors: ``first`` i and ``second`` j (P,) int64,
and ``shifts`` (P, 3) in Å, such that the pair vector is
``r_ij = R_j - R_i + shift_ij``. Each unordered pair within the cutoff is
listed once (i < j); the model derives the ordered pairs (both directions)
itself, with :func:`ordered_pairs`, and computes everything that is symmetric
in i and j (distances, radial filters) once per unordered pair. The search
runs on detached positions: it only selects pairs, the vectors are recomputed
differentiably by the model.

Periodic boxes are given as (B, 3, 3) box vectors in rows, in OpenMM's
reduced triclinic form (``a = (ax, 0, 0)``, ``b = (bx, by, 0)``,
``c = (cx, cy, cz)`` with ``|bx| <= ax/2``, ``|cx| <= ax/2``, ``|cy| <= by/2``),
and the minimum image convention is applied, which is exact when the cutoff
is at most half the smallest box width.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from so3krates_openmm.model.cell_list import cell_list_pairs


def structure_pairs(batch: Tensor, num_structures: int) -> Tuple[Tensor, Tensor]:
    """All unordered pairs (i, j), i < j, of atoms in the same structure.

    ``batch`` (N,) gives each atom's structure index; atoms of one structure
    must be contiguous (as when structures are concatenated).
    """
    n_atoms = batch.shape[0]
    device = batch.device
    counts = torch.bincount(batch, minlength=num_structures)
    starts = torch.cumsum(counts, 0) - counts
    per_atom = counts[batch]
    centres = torch.repeat_interleave(torch.arange(n_atoms, device=device), per_atom)
    total = centres.shape[0]
    row_starts = torch.cumsum(per_atom, 0) - per_atom
    local = torch.arange(total, device=device) - torch.repeat_interleave(row_starts, per_atom)
    neighbours = starts[batch[centres]] + local
    keep = centres < neighbours
    return centres[keep], neighbours[keep]


def ordered_pairs(first: Tensor, second: Tensor) -> Tuple[Tensor, Tensor]:
    """Both directions of unordered pairs: ``centres = [i; j]``, ``neighbours = [j; i]``."""
    return torch.cat([first, second]), torch.cat([second, first])


def minimum_image_shifts(vectors: Tensor, pair_boxes: Tensor) -> Tensor:
    """Shifts (E, 3) that bring pair vectors (E, 3) to their minimum image.

    ``pair_boxes`` (E, 3, 3) holds the reduced box of each pair's structure.
    """
    a = pair_boxes[:, 0]
    b = pair_boxes[:, 1]
    c = pair_boxes[:, 2]
    wrapped = vectors
    wrapped = wrapped - c * torch.round(wrapped[:, 2:3] / c[:, 2:3])
    wrapped = wrapped - b * torch.round(wrapped[:, 1:2] / b[:, 1:2])
    wrapped = wrapped - a * torch.round(wrapped[:, 0:1] / a[:, 0:1])
    return wrapped - vectors


def box_widths(boxes: Tensor) -> Tensor:
    """Perpendicular widths (B, 3) of reduced boxes (B, 3, 3): ``ax, by, cz``."""
    return torch.diagonal(boxes, dim1=-2, dim2=-1)


def neighbour_list(
    positions: Tensor,
    batch: Tensor,
    num_structures: int,
    cutoff: float,
    boxes: Optional[Tensor] = None,
    prune: bool = True,
    method: str = "auto",
    cell_list_min_atoms: int = 256,
    all_pairs: Optional[Tuple[Tensor, Tensor]] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Unordered pairs (i < j) within ``cutoff`` (Å) of atoms of the same structure.

    Args:
        positions: (N, 3) in Å.
        batch: (N,) structure index of each atom (contiguous).
        num_structures: number of structures B.
        cutoff: Å.
        boxes: optional (B, 3, 3) reduced periodic boxes in Å (rows are box vectors).
        prune: drop pairs beyond the cutoff (True). With False every pair of a
            structure is kept (static shapes, e.g. for CUDA graphs); the cutoff
            function zeroes their contributions exactly.
        method: candidate search, ``"all_pairs"`` (O(N^2)), ``"cell_list"``
            (O(N)) or ``"auto"`` (cell list from ``cell_list_min_atoms`` atoms
            on, when pruning).
        cell_list_min_atoms: size (atoms in the call) from which ``"auto"`` uses the cell list.
        all_pairs: ``structure_pairs(batch, num_structures)`` when the caller keeps them (a
            module with a fixed batch, called every MD step); computed here otherwise.

    Returns:
        first (P,), second (P,), shifts (P, 3) in Å.
    """
    detached = positions.detach()
    use_cells = method == "cell_list" or (method == "auto" and detached.shape[0] >= cell_list_min_atoms)
    found = False
    first = torch.zeros(0, dtype=torch.long, device=positions.device)
    second = first
    if prune and use_cells:
        box_tensor = (
            boxes
            if boxes is not None
            else torch.zeros(num_structures, 3, 3, dtype=detached.dtype, device=detached.device)
        )
        first, second, found = cell_list_pairs(
            detached, batch, num_structures, cutoff, box_tensor.to(detached.dtype), boxes is not None
        )
    if not found:
        if all_pairs is None:
            first, second = structure_pairs(batch, num_structures)
        else:
            first, second = all_pairs
    vectors = detached.index_select(0, second) - detached.index_select(0, first)
    shifts: Optional[Tensor] = None
    if boxes is not None:
        shifts = minimum_image_shifts(vectors, boxes.to(detached.dtype)[batch[first]])
        vectors = vectors + shifts
    if prune:
        # one nonzero and index_select per list (a boolean mask index runs nonzero for each list)
        kept = torch.nonzero(torch.sum(vectors * vectors, dim=1) < cutoff * cutoff).squeeze(1)
        first = first.index_select(0, kept)
        second = second.index_select(0, kept)
        if shifts is not None:
            shifts = shifts.index_select(0, kept)
    if shifts is None:
        shifts = torch.zeros(first.shape[0], 3, dtype=detached.dtype, device=detached.device)
    return first, second, shifts


def check_box(boxes: Tensor, cutoff: float) -> None:
    """Raise ``ValueError`` unless every box is reduced and at least twice the cutoff wide."""
    upper = torch.stack([boxes[:, 0, 1], boxes[:, 0, 2], boxes[:, 1, 2]], dim=1)
    if bool(torch.any(upper != 0)):
        raise ValueError(
            "periodic box must be in OpenMM's reduced (lower-triangular) form: "
            "a=(ax,0,0), b=(bx,by,0), c=(cx,cy,cz)"
        )
    widths = box_widths(boxes)
    if bool(torch.any(widths <= 0)):
        raise ValueError("periodic box has a non-positive width")
    smallest = float(torch.min(widths))
    if smallest < 2.0 * cutoff:
        raise ValueError(
            f"the model cutoff ({cutoff} Å) exceeds half the smallest periodic box width "
            f"({smallest:.4g} Å): use a box at least {2 * cutoff} Å wide"
        )
