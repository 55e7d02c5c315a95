"""Local energy minimisation of ML Systems with OpenMM's L-BFGS, robust to float32 overflow.

OpenMM's ``LocalEnergyMinimizer`` starts its line search with a step of total
length 1 nm along the gradient, however large the system. For 148 atoms that
moves some atoms by 2 Å and can push two carbons to 0.25 Å. An SO3krates model
(attention without softmax: products of features over the layers) grows
steeply so far outside its data: in float32 its energy overflows to inf/NaN,
OpenMM cannot backtrack from a NaN, and stops with "Particle coordinate is
NaN". In float64 the same energy is merely huge, the line search backtracks,
and the minimisation converges. :func:`minimize` therefore tries the System as
it is and, when that ends in NaN and the System holds float32 ``TorchForce``
modules, minimises from the same positions with a float64 copy of them.
"""

from __future__ import annotations

import io
from typing import Optional

import openmm as mm

FLOAT64_FALLBACK = "float64"
AS_GIVEN = "as given"


def _torch_force_type():
    from openmmtorch import TorchForce

    return TorchForce


def _float64_module(module):
    """A float64 copy of a TorchScript module that computes in float32, else ``None``."""
    import torch

    if not any(parameter.dtype == torch.float32 for parameter in module.parameters()):
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


def float64_system(system: mm.System) -> Optional[mm.System]:
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


def _float64_context(context: mm.Context) -> Optional[mm.Context]:
    system = float64_system(context.getSystem())
    if system is None:
        return None
    platform = context.getPlatform()
    properties = {name: platform.getPropertyValue(context, name) for name in platform.getPropertyNames()}
    copy = mm.Context(system, mm.VerletIntegrator(0.001), platform, properties)
    copy.setPeriodicBoxVectors(*context.getState().getPeriodicBoxVectors())
    return copy


class Minimizer:
    """OpenMM's L-BFGS on a context, repeated in float64 when float32 overflows.

    The float64 context is built on first need and kept for later calls (the
    minima workers minimise hundreds of snapshots with one Minimizer).
    """

    def __init__(self, context: mm.Context, tolerance_kj_mol_nm: float = 10.0, max_iterations: int = 0) -> None:
        self.context = context
        self.tolerance_kj_mol_nm = tolerance_kj_mol_nm
        self.max_iterations = max_iterations
        self._float64: Optional[mm.Context] = None

    def __call__(self) -> str:
        """Minimise from the context's positions; the context ends at the minimum.

        Returns :data:`AS_GIVEN` or :data:`FLOAT64_FALLBACK` (which model precision
        found the minimum). Raises ``openmm.OpenMMException`` when both fail (or the
        error is not a NaN), with the context back at its starting positions.
        """
        start = self.context.getState(getPositions=True).getPositions(asNumpy=True)
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
