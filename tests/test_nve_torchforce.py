"""Energy conservation of the SO3krates force itself: NVE through openmm-torch's TorchForce.

A float64 model with random weights and the polynomial cutoff drives ethanol + water with
OpenMM's VerletIntegrator on the Reference platform (double precision). Random weights
make the molecule rearrange (the potential energy changes by ~200 kJ/mol), so energy is
only conserved if the forces are the exact gradient of the energy, smooth through the
cutoff. The same bounds must fail for forces that are 5 % off.
"""

from __future__ import annotations

import numpy as np
import openmm
import torch
from conftest import ETHANOL_WATER_NUMBERS, ETHANOL_WATER_POSITIONS, randomise, small_config
from openmm import unit

from so3krates_openmm import SO3krates, create_system, export_checkpoint
from so3krates_openmm.data.structures import Structure
from so3krates_openmm.model.checkpoint import save_checkpoint

TIME_STEP_FS = 0.5
STEPS = 300
#: Bounds: fluctuation of the total energy relative to that of the potential energy, and
#: the linear drift of the total energy per atom (kJ/mol/ps). Correct forces give ~1e-4
#: and ~1e-3; forces scaled by 1.05 give 0.05 and ~2.
MAX_FLUCTUATION_RATIO = 1e-3
MAX_DRIFT_KJ_PER_MOL_PER_PS_PER_ATOM = 0.02


class ScaledForces(torch.nn.Module):
    """An exported (energy, forces) module with its forces multiplied by ``factor``: a wrong force."""

    def __init__(self, module: torch.nn.Module, factor: float) -> None:
        super().__init__()
        self.module = module
        self.factor = factor

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        energy, forces = self.module(positions)
        return energy, forces * self.factor


def nve_energies(system: openmm.System, molecule: Structure) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Time (ps), total and potential energy (kJ/mol) after each Verlet step from 300 K velocities."""
    integrator = openmm.VerletIntegrator(TIME_STEP_FS * unit.femtosecond)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(molecule.positions_angstrom / 10.0)
    context.setVelocitiesToTemperature(300 * unit.kelvin, 2)
    total, potential = [], []
    for _ in range(STEPS):
        integrator.step(1)
        state = context.getState(getEnergy=True)
        potential.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        total.append(potential[-1] + state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole))
    time_ps = np.arange(1, STEPS + 1) * TIME_STEP_FS / 1000.0
    return time_ps, np.array(total), np.array(potential)


def conservation(time_ps: np.ndarray, total: np.ndarray, potential: np.ndarray, n_atoms: int) -> tuple[float, float]:
    """(std of the total energy / std of the potential energy, |linear drift| in kJ/mol/ps per atom)."""
    slope, _ = np.polyfit(time_ps, total, 1)
    return float(total.std() / potential.std()), abs(float(slope)) / n_atoms


def test_nve_with_the_so3krates_torchforce_conserves_energy(tmp_path):
    model = randomise(SO3krates(small_config(cutoff_function="polynomial")), seed=1).eval()
    molecule = Structure(ETHANOL_WATER_NUMBERS, ETHANOL_WATER_POSITIONS.copy(), source="ethanol+water")
    path = export_checkpoint(save_checkpoint(model, tmp_path / "random.pt"), tmp_path / "model.pt", structure=molecule,
                             dtype="float64", outputs_forces=True)
    system = create_system(molecule, path)
    time_ps, total, potential = nve_energies(system, molecule)
    assert np.ptp(potential) > 50.0  # the molecule really moves on the model's surface
    ratio, drift = conservation(time_ps, total, potential, molecule.n_atoms)
    assert ratio < MAX_FLUCTUATION_RATIO, f"total energy fluctuates {ratio:.2e} of the potential energy"
    assert drift < MAX_DRIFT_KJ_PER_MOL_PER_PS_PER_ATOM, f"energy drift {drift:.3g} kJ/mol/ps per atom"

    # The bounds catch forces that are not the gradient of the energy (here 5 % too large).
    import openmmtorch

    system.removeForce(0)
    scaled = torch.jit.script(ScaledForces(torch.jit.load(str(path)), 1.05))
    force = openmmtorch.TorchForce(scaled)
    force.setOutputsForces(True)
    system.addForce(force)
    wrong_ratio, wrong_drift = conservation(*nve_energies(system, molecule), molecule.n_atoms)
    assert wrong_ratio > 10 * MAX_FLUCTUATION_RATIO
    assert wrong_drift > MAX_DRIFT_KJ_PER_MOL_PER_PS_PER_ATOM
