"""ASE calculator: ``SO3kratesCalculator(CHECKPOINT)``, energies in eV and forces in eV/Å.

    from so3krates_openmm import SO3kratesCalculator
    atoms.calc = SO3kratesCalculator("best_checkpoint.pt")
    atoms.get_potential_energy(), atoms.get_forces()

Works with ASE optimisers and molecular dynamics; periodic cells (all three
directions periodic, reduced to OpenMM's lower-triangular form by rotation)
use the minimum image convention.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from so3krates_openmm.memory import reuse_freed_memory
from so3krates_openmm.model.checkpoint import load_model
from so3krates_openmm.model.neighbours import neighbour_list
from so3krates_openmm.units import energy_conversion


def reduced_cell(cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower-triangular cell with the same lengths and angles, and the rotation to it.

    Returns ``(reduced, rotation)`` with ``reduced = cell @ rotation.T`` (rows
    are vectors); positions are rotated the same way. Raises ``ValueError`` for
    a left-handed or degenerate cell.
    """
    a, b, c = cell
    a_len = np.linalg.norm(a)
    ex = a / a_len
    b_perp = b - np.dot(b, ex) * ex
    ey = b_perp / np.linalg.norm(b_perp)
    ez = np.cross(ex, ey)
    if np.dot(c, ez) <= 0:
        raise ValueError("the periodic cell is degenerate or left-handed")
    rotation = np.stack([ex, ey, ez])
    reduced = cell @ rotation.T
    reduced[np.abs(reduced) < 1e-12] = 0.0
    reduced[0, 1:] = 0.0
    reduced[1, 2] = 0.0
    # OpenMM's reduced form also needs |bx| <= ax/2 etc.: subtract lattice vectors.
    reduced[2] -= reduced[1] * np.round(reduced[2, 1] / reduced[1, 1])
    reduced[2] -= reduced[0] * np.round(reduced[2, 0] / reduced[0, 0])
    reduced[1] -= reduced[0] * np.round(reduced[1, 0] / reduced[0, 0])
    return reduced, rotation


class SO3kratesCalculator(Calculator):
    """ASE calculator for an SO3krates checkpoint.

    Args:
        checkpoint: checkpoint written by ``so3krates-train`` or ``save_checkpoint``.
        device: torch device, e.g. ``"cpu"`` or ``"cuda"``.
        dtype: ``"float64"`` (default; for optimisation) or ``"float32"`` (faster MD).
    """

    implemented_properties = ["energy", "free_energy", "forces", "energies"]

    def __init__(self, checkpoint: str | Path, device: str = "cpu", dtype: str = "float64", **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = load_model(checkpoint, map_location=device).to(getattr(torch, dtype))
        self.device = torch.device(device)
        if self.device.type == "cpu":
            reuse_freed_memory()
        self.ev_per_model_unit = energy_conversion(self.model.config.energy_unit, "eV")

    @property
    def elements(self) -> Sequence[int]:
        """Atomic numbers the model knows."""
        return self.model.config.elements

    def calculate(self, atoms=None, properties: Optional[list[str]] = None, system_changes=all_changes) -> None:
        super().calculate(atoms, properties or ["energy"], system_changes)
        positions = np.asarray(self.atoms.positions, dtype=np.float64)
        boxes = None
        rotation = np.eye(3)
        if self.atoms.pbc.any():
            if not self.atoms.pbc.all():
                raise ValueError("SO3kratesCalculator supports fully periodic or non-periodic systems, not mixed pbc")
            box, rotation = reduced_cell(np.asarray(self.atoms.cell.array))
            positions = positions @ rotation.T
            boxes = torch.as_tensor(box, device=self.device).unsqueeze(0)
        numbers = torch.as_tensor(self.atoms.numbers, dtype=torch.long, device=self.device)
        coordinates = torch.as_tensor(positions, device=self.device)
        energy, forces = self.model.energy_and_forces(numbers, coordinates, boxes=boxes)
        energy_ev = float(energy[0]) * self.ev_per_model_unit
        self.results["energy"] = energy_ev
        self.results["free_energy"] = energy_ev
        self.results["forces"] = (forces.detach().cpu().double().numpy() @ rotation) * self.ev_per_model_unit
        if "energies" in (properties or []):
            self.results["energies"] = self._atomic_energies(numbers, coordinates, boxes) * self.ev_per_model_unit

    def _atomic_energies(self, numbers: torch.Tensor, coordinates: torch.Tensor, boxes: Optional[torch.Tensor]) -> np.ndarray:
        """Per-atom energies in the model's unit."""
        with torch.no_grad():
            positions = coordinates.to(self.model.dtype)
            batch = torch.zeros(len(numbers), dtype=torch.long, device=self.device)
            pairs = neighbour_list(positions, batch, 1, self.model.cutoff, boxes)
            return self.model.atomic_energies(numbers, positions, *pairs).cpu().numpy()
