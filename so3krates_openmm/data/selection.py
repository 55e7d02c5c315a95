"""Choosing frames to label: highest committee disagreement first, but diverse; or evenly spread over a run.

Frames of an MD run come in runs of near-copies: one excursion the model
does not know yields dozens of consecutive frames with high disagreement.
Labelling them all spends the reference budget on one configuration.
:func:`select_diverse` therefore takes frames greedily by descending
disagreement and skips a frame that is

- within ``min_rmsd_angstrom`` (RMSD after optimal superposition, mdtraj) of a
  frame already taken, or
- within ``min_separation`` frames (in time) of a frame already taken,

so that the batch spreads over the distinct configurations the committee is
unsure about.
"""

from __future__ import annotations

from collections.abc import Sequence

import mdtraj
import numpy as np

from so3krates_openmm.units import ANGSTROM_PER_NM


def evenly_spaced(n_frames: int, count: int) -> np.ndarray:
    """Indices of ``count`` frames spread evenly over ``n_frames`` (first and last included; fewer when
    ``n_frames < count``; none when either is 0)."""
    if n_frames < 1 or count < 1:
        return np.empty(0, dtype=int)
    return np.unique(np.linspace(0, n_frames - 1, count).round().astype(int))


def select_diverse(
    scores: Sequence[float] | np.ndarray,
    positions_angstrom: np.ndarray,
    n_select: int,
    *,
    threshold: float = 0.0,
    min_rmsd_angstrom: float = 0.1,
    min_separation: int = 0,
    atom_indices: Sequence[int] | None = None,
    frame_numbers: Sequence[int] | None = None,
) -> np.ndarray:
    """Indices of at most ``n_select`` frames, by descending score, pairwise diverse.

    Args:
        scores: (n,) uncertainty per frame (e.g. the committee's maximum force std).
        positions_angstrom: (n, N, 3) positions in Å.
        n_select: how many frames to take at most.
        threshold: frames scoring below this are never taken.
        min_rmsd_angstrom: a frame closer than this (RMSD over ``atom_indices`` after
            superposition) to a taken frame is skipped.
        min_separation: a frame whose frame number is within this many of a taken
            frame's is skipped (0: no rule).
        atom_indices: atoms for the RMSD (e.g. heavy atoms); default all.
        frame_numbers: (n,) frame numbers in time (e.g. the step) for ``min_separation``;
            default ``0..n-1``.

    Returns:
        int64 array of frame indices in the order they were taken (descending score).
    """
    scores = np.asarray(scores, dtype=np.float64)
    positions = np.asarray(positions_angstrom, dtype=np.float64)
    if positions.ndim != 3 or positions.shape[2] != 3 or len(positions) != len(scores):
        raise ValueError(
            f"expected {len(scores)} frames of positions (n, N, 3) for {len(scores)} scores, got {positions.shape}"
        )
    if n_select < 0 or min_rmsd_angstrom < 0 or min_separation < 0:
        raise ValueError("n_select, min_rmsd_angstrom and min_separation must not be negative")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinity: the committee failed on some frames")
    numbers = np.arange(len(scores)) if frame_numbers is None else np.asarray(frame_numbers, dtype=np.int64)
    if numbers.shape != scores.shape:
        raise ValueError(f"{len(numbers)} frame numbers for {len(scores)} frames")
    trajectory = mdtraj.Trajectory((positions / ANGSTROM_PER_NM).astype(np.float32), None)
    atoms = None if atom_indices is None else np.asarray(atom_indices, dtype=np.int64)
    order = np.flatnonzero(scores >= threshold)
    order = order[np.argsort(-scores[order], kind="stable")]
    taken: list[int] = []
    for index in order:
        if len(taken) >= n_select:
            break
        if taken and min_separation > 0 and np.min(np.abs(numbers[taken] - numbers[index])) <= min_separation:
            continue
        if taken and min_rmsd_angstrom > 0:
            rmsd = mdtraj.rmsd(trajectory[taken], trajectory, frame=int(index), atom_indices=atoms) * ANGSTROM_PER_NM
            if float(rmsd.min()) < min_rmsd_angstrom:
                continue
        taken.append(int(index))
    return np.asarray(taken, dtype=np.int64)
