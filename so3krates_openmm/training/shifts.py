"""Per-element energy shifts by least squares, and the energy scale (float64).

The model's total energy is ``E = sum_i (scale * E_i + shift[z_i])``. Fitting
``shift`` to the training energies before training removes the large
per-element constant (thousands of kcal/mol for DFT or xTB energies) that
float32 networks cannot represent precisely; the scale brings the network's
O(1) outputs to the size of the data's forces (as MACE and NequIP do).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def fit_energy_shifts(element_counts: np.ndarray, energies: np.ndarray, elements: Sequence[int]) -> dict[int, float]:
    """Per-element shifts ``s`` minimising ``|counts @ s - energies|^2`` (float64).

    Args:
        element_counts: (M, n_elements) atoms of each element in each frame.
        energies: (M,) energies (any unit; the shifts come out in it, per atom).
        elements: the atomic numbers of the columns of ``element_counts``.

    When the compositions do not determine every shift (for example a data
    set of one molecule, where only the sum over its atoms is determined), the
    solution closest to a common per-atom shift (mean energy / mean atom
    count) is returned: it reproduces the mean energy and spreads it evenly
    over the atoms instead of by element count.
    """
    counts = np.asarray(element_counts, dtype=np.float64)
    energies = np.asarray(energies, dtype=np.float64).reshape(-1)
    if counts.ndim != 2 or counts.shape != (len(energies), len(elements)):
        raise ValueError(
            f"element counts of shape {counts.shape} do not match {len(energies)} energies and {len(elements)} elements"
        )
    if len(energies) == 0:
        raise ValueError("cannot fit energy shifts without training energies")
    per_atom = float(np.mean(energies) / np.mean(counts.sum(axis=1)))
    deviation, *_ = np.linalg.lstsq(counts, energies - per_atom * counts.sum(axis=1), rcond=None)
    solution = per_atom + deviation
    return {int(z): float(value) for z, value in zip(elements, solution, strict=True)}


def rms_force(forces: np.ndarray) -> float:
    """Root mean square of force components (the default energy scale, energy unit per Å x 1 Å)."""
    forces = np.asarray(forces, dtype=np.float64)
    value = float(np.sqrt(np.mean(forces * forces))) if forces.size else 0.0
    return value if value > 0 else 1.0
