"""Local energy minimisation of ML Systems with OpenMM's L-BFGS, robust to its two failures with them.

1. OpenMM's ``LocalEnergyMinimizer`` starts its line search with a step of
   total length 1 nm along the gradient, however large the system. For 148
   atoms that moves some atoms by 2 Å and can push two carbons to 0.25 Å. An
   SO3krates model (attention without softmax: products of features over the
   layers) grows steeply so far outside its data: in float32 its energy
   overflows to inf/NaN, OpenMM cannot backtrack from a NaN and stops with
   "Particle coordinate is NaN". In float64 the same energy is merely huge, the
   line search backtracks, and the minimisation converges.
2. On a steep surface far from a minimum (a snapshot of 500 K MD) the line
   search can give up and leave the positions *above* the starting energy with
   large forces, without an error. A capped steepest descent first, then
   L-BFGS again, reaches the minimum.

:class:`Minimizer` handles both and checks the result (below the starting
energy, small forces); what it cannot minimise it reports as an error.
"""

from __future__ import annotations

import io

import numpy as np
import openmm as mm
from openmm import unit

FLOAT64_FALLBACK = "float64"
AS_GIVEN = "as given"
DESCENT_FIRST = "steepest descent first"


def _torch_force_type():
    from so3krates_openmm.openmm_force import openmmtorch_module

    return openmmtorch_module().TorchForce


def _float64_module(module):
    """A float64 copy of a TorchScript module that computes in float32, else ``None``."""
    import torch

    # The reference export keeps its weights as parameters, the fast one as buffers.
    if not any(tensor.dtype == torch.float32 for tensor in (*module.parameters(), *module.buffers())):
        return None
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    buffer.seek(0)
    copy = torch.jit.load(buffer)
    copy.to(torch.float64)
    return copy


def _torch_force_with_module(original, module) -> mm.Force:
    """A new ``TorchForce`` running ``module`` with every setting of ``original``.

    (OpenMM's XML serialisation cannot copy a ``TorchForce``.)
    """
    copy = _torch_force_type()(module, dict(original.getProperties()))
    copy.setOutputsForces(original.getOutputsForces())
    copy.setUsesPeriodicBoundaryConditions(original.usesPeriodicBoundaryConditions())
    copy.setForceGroup(original.getForceGroup())
    copy.setName(original.getName())
    for index in range(original.getNumGlobalParameters()):
        copy.addGlobalParameter(original.getGlobalParameterName(index), original.getGlobalParameterDefaultValue(index))
    for index in range(original.getNumEnergyParameterDerivatives()):
        copy.addEnergyParameterDerivative(original.getEnergyParameterDerivativeName(index))
    return copy


def float64_system(system: mm.System) -> mm.System | None:
    """A copy of ``system`` whose float32 ``TorchForce`` modules compute in float64.

    Other forces are copied unchanged. Returns ``None`` when the System has no
    float32 ``TorchForce`` (nothing to gain) or has virtual sites (not copied here).
    """
    if any(system.isVirtualSite(index) for index in range(system.getNumParticles())):
        return None
    torch_force_type = _torch_force_type()
    copy = mm.System()
    for index in range(system.getNumParticles()):
        copy.addParticle(system.getParticleMass(index))
    for index in range(system.getNumConstraints()):
        copy.addConstraint(*system.getConstraintParameters(index))
    copy.setDefaultPeriodicBoxVectors(*system.getDefaultPeriodicBoxVectors())
    changed = False
    for force in system.getForces():
        if not torch_force_type.isinstance(force):
            copy.addForce(mm.XmlSerializer.clone(force))
            continue
        original = torch_force_type.cast(force)
        module = _float64_module(original.getModule())
        changed = changed or module is not None
        copy.addForce(_torch_force_with_module(original, module if module is not None else original.getModule()))
    return copy if changed else None


def _float64_context(context: mm.Context) -> mm.Context | None:
    system = float64_system(context.getSystem())
    if system is None:
        return None
    platform = context.getPlatform()
    properties = {name: platform.getPropertyValue(context, name) for name in platform.getPropertyNames()}
    copy = mm.Context(system, mm.VerletIntegrator(0.001), platform, properties)
    copy.setPeriodicBoxVectors(*context.getState().getPeriodicBoxVectors())
    return copy


class MinimizationError(RuntimeError):
    """L-BFGS ended above its starting energy or far from a stationary point, even after a steepest-descent start."""


def _energy_and_forces(context: mm.Context) -> tuple[float, np.ndarray]:
    state = context.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    return float(energy), np.asarray(forces)


def steepest_descent(context: mm.Context, steps: int = 200, max_displacement_nm: float = 0.005) -> float:
    """Steepest descent with an adaptive step capped at ``max_displacement_nm`` per atom; returns the energy (kJ/mol).

    Slow but sure where L-BFGS's line search fails (a steep ML surface far from
    its minimum): a step that raises the energy is undone and halved, one that
    lowers it is kept and the next one grows by 20 %.
    """
    positions = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    energy, forces = _energy_and_forces(context)
    step = max_displacement_nm
    for _ in range(steps):
        largest = np.linalg.norm(forces, axis=1).max()
        if not np.isfinite(largest) or largest == 0.0:
            break
        trial = positions + forces * (step / largest)
        context.setPositions(trial)
        trial_energy, trial_forces = _energy_and_forces(context)
        if np.isfinite(trial_energy) and trial_energy < energy:
            positions, energy, forces = trial, trial_energy, trial_forces
            step = min(1.2 * step, max_displacement_nm)
        else:
            step *= 0.5
    context.setPositions(positions)
    return energy


class Minimizer:
    """OpenMM's L-BFGS on a context, made robust for ML potentials.

    Two failures of ``LocalEnergyMinimizer`` with SO3krates models are handled:
    a float32 energy that overflows on the first trial step ("Particle coordinate
    is NaN": the minimisation is repeated with a float64 copy of the model), and a
    line search that gives up on a steep surface and leaves the positions above
    the starting energy (a steepest-descent start, :func:`steepest_descent`, then
    L-BFGS again). The float64 context is built on first need and kept for later
    calls (the minima workers minimise hundreds of snapshots with one Minimizer).
    """

    def __init__(self, context: mm.Context, tolerance_kj_mol_nm: float = 10.0, max_iterations: int = 0) -> None:
        self.context = context
        self.tolerance_kj_mol_nm = tolerance_kj_mol_nm
        self.max_iterations = max_iterations
        self._float64: mm.Context | None = None

    def __call__(self) -> str:
        """Minimise from the context's positions; the context ends at the minimum.

        Returns how: :data:`AS_GIVEN`, :data:`FLOAT64_FALLBACK`, or either after
        :data:`DESCENT_FIRST`. Raises ``openmm.OpenMMException`` when OpenMM fails
        in both precisions (or with an error other than NaN) and
        :class:`MinimizationError` when no attempt ends below the starting energy;
        the context is then back at its starting positions.
        """
        start = self.context.getState(getPositions=True).getPositions(asNumpy=True)
        start_energy, _ = _energy_and_forces(self.context)
        how = self._lbfgs(start)
        if self._converged(start_energy):
            return how
        self.context.setPositions(start)
        steepest_descent(self.context)
        how = f"{DESCENT_FIRST}, {self._lbfgs(self.context.getState(getPositions=True).getPositions(asNumpy=True))}"
        if self._converged(start_energy):
            return how
        self.context.setPositions(start)
        raise MinimizationError(
            "L-BFGS ended above the starting energy or with large forces, also after a steepest-descent start"
        )

    def _converged(self, start_energy: float) -> bool:
        """Below the starting energy and, for an unlimited run, with RMS force within 10x the tolerance."""
        energy, forces = _energy_and_forces(self.context)
        if not np.isfinite(energy) or energy > start_energy:
            return False
        rms_force = float(np.sqrt(np.mean(forces**2)))
        return self.max_iterations > 0 or rms_force <= 10.0 * self.tolerance_kj_mol_nm

    def _lbfgs(self, start) -> str:
        """L-BFGS from ``start``, in float64 if the float32 model overflows; the context ends where it stopped."""
        try:
            mm.LocalEnergyMinimizer.minimize(self.context, self.tolerance_kj_mol_nm, self.max_iterations)
            return AS_GIVEN
        except mm.OpenMMException as error:
            self.context.setPositions(start)
            if "NaN" not in str(error):
                raise
            if self._float64 is None:
                self._float64 = _float64_context(self.context)
            if self._float64 is None:
                raise
        self._float64.setPositions(start)
        mm.LocalEnergyMinimizer.minimize(self._float64, self.tolerance_kj_mol_nm, self.max_iterations)
        self.context.setPositions(self._float64.getState(getPositions=True).getPositions(asNumpy=True))
        return FLOAT64_FALLBACK
