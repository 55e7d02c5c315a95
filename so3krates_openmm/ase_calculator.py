"""ASE calculator: ``SO3kratesCalculator(CHECKPOINT)``, energies in eV and forces in eV/Å.

    from so3krates_openmm import SO3kratesCalculator
    atoms.calc = SO3kratesCalculator("best_checkpoint.pt")
    atoms.get_potential_energy(), atoms.get_forces()

Works with ASE optimisers and molecular dynamics; periodic cells (all three
directions periodic, reduced to OpenMM's lower-triangular form by rotation)
use the minimum image convention and also give the ``stress`` (eV/Å^3, ASE's
sign and Voigt order ``xx, yy, zz, yz, xz, xy``), so that cell filters
(``ase.filters.FrechetCellFilter``) and NPT integrators work.

Constructing the calculator changes nothing process-wide; for long CPU runs
call :func:`so3krates_openmm.memory.reuse_freed_memory` once yourself (glibc
keeps freed model memory for the next step; see :mod:`so3krates_openmm.memory`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

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

    implemented_properties = ["energy", "free_energy", "forces", "energies", "stress"]

    def __init__(self, checkpoint: str | Path, device: str = "cpu", dtype: str = "float64", **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = load_model(checkpoint, map_location=device).to(getattr(torch, dtype))
        self.device = torch.device(device)
        self.ev_per_model_unit = energy_conversion(self.model.config.energy_unit, "eV")

    @property
    def elements(self) -> Sequence[int]:
        """Atomic numbers the model knows."""
        return self.model.config.elements

    def calculate(self, atoms=None, properties: list[str] | None = None, system_changes=all_changes) -> None:
        properties = properties or ["energy"]
        super().calculate(atoms, properties, system_changes)
        positions = np.asarray(self.atoms.positions, dtype=np.float64)
        box = None
        rotation = np.eye(3)
        if self.atoms.pbc.any():
            if not self.atoms.pbc.all():
                raise ValueError("SO3kratesCalculator supports fully periodic or non-periodic systems, not mixed pbc")
            box, rotation = reduced_cell(np.asarray(self.atoms.cell.array))
            positions = positions @ rotation.T
        elif "stress" in properties:
            raise PropertyNotImplementedError("stress needs a periodic cell (atoms.pbc all True and a cell)")
        atomic_energies, gradient, strain_derivative = self._evaluate(positions, box)
        energy_ev = float(atomic_energies.sum()) * self.ev_per_model_unit
        self.results["energy"] = energy_ev
        self.results["free_energy"] = energy_ev
        self.results["energies"] = atomic_energies * self.ev_per_model_unit
        self.results["forces"] = -(gradient @ rotation) * self.ev_per_model_unit
        if strain_derivative is not None:
            # dE/d(strain) in the reduced frame, rotated back to the cell's frame.
            stress = rotation.T @ strain_derivative @ rotation / abs(np.linalg.det(box))
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress * self.ev_per_model_unit)

    def _evaluate(
        self, positions: np.ndarray, box: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Per-atom energies, dE/dR (Å^-1) and, for a cell, dE/d(strain), all in the model's energy unit.

        A symmetric strain ``e`` deforms positions, box and so the periodic
        shifts of the pairs by ``(1 + e)``; its derivative at ``e = 0`` is the
        virial (ASE's stress times the volume).
        """
        dtype, device = self.model.dtype, self.device
        numbers = torch.as_tensor(self.atoms.numbers, dtype=torch.long, device=device)
        coordinates = torch.as_tensor(positions, device=device).to(dtype)
        boxes = None if box is None else torch.as_tensor(box, device=device).to(dtype).unsqueeze(0)
        self.model.validate_inputs(numbers, coordinates, None, 1, boxes)
        batch = torch.zeros(len(numbers), dtype=torch.long, device=device)
        first, second, shifts = neighbour_list(coordinates, batch, 1, self.model.cutoff, boxes)
        coordinates = coordinates.detach().requires_grad_(True)
        strain = torch.zeros(3, 3, dtype=dtype, device=device, requires_grad=box is not None)
        deformation = torch.eye(3, dtype=dtype, device=device) + 0.5 * (strain + strain.T)
        atomic_energies = self.model.atomic_energies(
            numbers, coordinates @ deformation, first, second, shifts.detach() @ deformation
        )
        inputs = [coordinates, strain] if box is not None else [coordinates]
        gradients = torch.autograd.grad(atomic_energies.sum(), inputs, allow_unused=True)
        gradient = torch.zeros_like(coordinates) if gradients[0] is None else gradients[0]
        strain_derivative = None
        if box is not None:
            strain_derivative = (
                np.zeros((3, 3)) if gradients[1] is None else gradients[1].detach().cpu().double().numpy()
            )
        return (
            atomic_energies.detach().cpu().double().numpy(),
            gradient.detach().cpu().double().numpy(),
            strain_derivative,
        )
