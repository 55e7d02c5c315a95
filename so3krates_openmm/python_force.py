"""The second OpenMM path: the model inside ``openmm.PythonForce`` (OpenMM >= 8.5).

No C++ plugin is involved, so there is no ABI tie between OpenMM and the
torch version: the eager model (optionally ``torch.compile``d) or an exported
TorchScript module is called from Python each step, as openmm-ml 1.6+ does for
its own potentials.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import openmm
import torch
from openmm import unit

from so3krates_openmm.model.so3krates import SO3krates
from so3krates_openmm.units import ANGSTROM_PER_NM, energy_conversion


def _positions_and_box_nm(state: openmm.State, periodic: bool) -> tuple[np.ndarray, np.ndarray | None]:
    positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    if not np.all(np.isfinite(positions)):
        raise ValueError("so3krates: positions contain NaN or infinite values (the simulation has become unstable)")
    box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer) if periodic else None
    return positions, box


class EagerModelCallback:
    """PythonForce computation running an :class:`SO3krates` model in eager mode.

    Receives the positions of the modelled particles only (the force's
    particle subset) and returns energy (kJ/mol) and forces (kJ/mol/nm).
    """

    def __init__(
        self, model: SO3krates, atomic_numbers: Sequence[int], periodic: bool, compile_model: bool = False
    ) -> None:
        model.check_elements(torch.as_tensor(list(atomic_numbers)))
        self.model = model.eval()
        self.device = model.embedding.weight.device
        self.dtype = model.dtype
        self.atomic_numbers = torch.as_tensor(list(atomic_numbers), dtype=torch.long, device=self.device)
        self.periodic = periodic
        self.kj_per_mol = energy_conversion(model.config.energy_unit, "kJ/mol")
        self.energy_function: Callable = torch.compile(model, dynamic=True) if compile_model else model

    def __call__(self, state: openmm.State) -> tuple[float, np.ndarray]:
        positions_nm, box_nm = _positions_and_box_nm(state, self.periodic)
        positions = torch.as_tensor(
            positions_nm * ANGSTROM_PER_NM, dtype=self.dtype, device=self.device
        ).requires_grad_(True)
        boxes = None
        if box_nm is not None:
            boxes = torch.as_tensor(box_nm * ANGSTROM_PER_NM, dtype=self.dtype, device=self.device).reshape(1, 3, 3)
        energy = self.energy_function(self.atomic_numbers, positions, None, 1, boxes)
        (gradient,) = torch.autograd.grad(energy.sum(), positions, allow_unused=True)
        forces = np.zeros_like(positions_nm) if gradient is None else -gradient.detach().cpu().double().numpy()
        return float(energy.detach()) * self.kj_per_mol, forces * (self.kj_per_mol * ANGSTROM_PER_NM)


class ScriptedModuleCallback:
    """PythonForce computation running an exported TorchScript module (positions of all particles)."""

    def __init__(self, module: torch.jit.ScriptModule, periodic: bool, device: torch.device | str = "cpu") -> None:
        self.module = module
        self.periodic = periodic
        self.device = torch.device(device)

    def __call__(self, state: openmm.State) -> tuple[float, np.ndarray]:
        positions_nm, box_nm = _positions_and_box_nm(state, self.periodic)
        positions = torch.as_tensor(positions_nm, dtype=torch.float64, device=self.device).requires_grad_(True)
        box = None if box_nm is None else torch.as_tensor(box_nm, dtype=torch.float64, device=self.device)
        output = self.module(positions, box) if box is not None else self.module(positions)
        if isinstance(output, tuple):
            energy, forces = output
        else:
            (gradient,) = torch.autograd.grad(output, positions)
            energy, forces = output, -gradient
        return float(energy.detach()), forces.detach().double().cpu().numpy()


def create_python_force(
    computation: Callable[[openmm.State], tuple[float, np.ndarray]],
    periodic: bool,
    particles: Sequence[int] | None = None,
    force_group: int = 0,
) -> openmm.Force:
    """An ``openmm.PythonForce`` around a computation; ``particles`` restricts it to a subset."""
    if not hasattr(openmm, "PythonForce"):
        raise RuntimeError(f"openmm.PythonForce needs OpenMM >= 8.5; this is OpenMM {openmm.__version__}")
    force = openmm.PythonForce(computation)
    force.setUsesPeriodicBoundaryConditions(periodic)
    if particles is not None:
        force.setParticles(list(particles))
    force.setForceGroup(force_group)
    return force
