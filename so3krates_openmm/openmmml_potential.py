"""openmm-ml plugin: ``MLPotential('so3krates', modelPath=CHECKPOINT)``.

Registered through the entry-point group ``openmmml.potentials`` (see
``setup.py``), so that after ``pip install so3krates-openmm``::

    from openmmml import MLPotential
    potential = MLPotential("so3krates", modelPath="best_checkpoint.pt")
    system = potential.createSystem(topology)                       # all atoms ML
    mixed = potential.createMixedSystem(topology, mm_system, ml_atoms)  # ML/MM

The potential scripts and self-checks the checkpoint for the topology's
atoms itself (no separate export step). Options of ``createSystem`` /
``createMixedSystem``: ``precision`` (``"single"`` default, or ``"double"``),
``backend`` (``"torchforce"`` default, or ``"pythonforce"``),
``useCUDAGraphs`` and ``compileModel``.
"""

from __future__ import annotations

import warnings
from typing import Iterable, Optional

import numpy as np
import openmm
from openmm import unit
from openmmml.mlpotential import MLPotentialImpl, MLPotentialImplFactory

PRECISIONS = {"single": "float32", "double": "float64"}


class SO3kratesPotentialImplFactory(MLPotentialImplFactory):
    """Creates :class:`SO3kratesPotentialImpl` objects for openmm-ml."""

    def createImpl(self, name: str, modelPath: Optional[str] = None, **args) -> MLPotentialImpl:
        return SO3kratesPotentialImpl(name, modelPath)


class SO3kratesPotentialImpl(MLPotentialImpl):
    """An SO3krates checkpoint as an openmm-ml potential (short-ranged: cutoff r_c)."""

    def __init__(self, name: str, modelPath: Optional[str]) -> None:
        if modelPath is None:
            raise ValueError("give the checkpoint: MLPotential('so3krates', modelPath='best_checkpoint.pt')")
        self.name = name
        self.modelPath = str(modelPath)

    def addForces(
        self,
        topology: openmm.app.Topology,
        system: openmm.System,
        atoms: Optional[Iterable[int]],
        forceGroup: int,
        precision: str = "single",
        backend: str = "torchforce",
        useCUDAGraphs: bool = False,
        compileModel: bool = False,
        **args,
    ) -> None:
        from so3krates_openmm.openmm_force import create_force

        if backend == "torchforce" and system.getNumParticles() == 0:
            # openmm-ml builds the ML terms of createMixedSystem(interpolate=True) in an empty
            # System and deep-copies them into a CustomCVForce. Copying (deserialising) a
            # TorchForce crashes acellera-openmmtorch 1.10, so that path runs through PythonForce.
            warnings.warn(
                "so3krates: interpolated ML/MM copies the ML force, which TorchForce does not survive "
                "in acellera-openmmtorch 1.10; using the PythonForce backend for it",
                stacklevel=2,
            )
            backend = "pythonforce"
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        atomic_numbers = []
        for atom in topology.atoms():
            if atom.element is None:
                raise ValueError(f"atom {atom.name} of residue {atom.residue.name} has no element")
            atomic_numbers.append(atom.element.atomic_number)
        vectors = topology.getPeriodicBoxVectors()
        periodic = vectors is not None or system.usesPeriodicBoundaryConditions()
        if vectors is None and periodic:
            vectors = system.getDefaultPeriodicBoxVectors()
        box_angstrom = None if vectors is None else np.asarray([v.value_in_unit(unit.angstrom) for v in vectors])
        force = create_force(
            self.modelPath,
            atomic_numbers,
            atom_indices=None if atoms is None else list(atoms),
            periodic=periodic,
            box_angstrom=box_angstrom,
            backend=backend,
            dtype=PRECISIONS[precision],
            use_cuda_graphs=useCUDAGraphs,
            compile_model=compileModel,
            force_group=forceGroup,
        )
        system.addForce(force)

    def getMLLongRange(self) -> bool:
        """SO3krates is short-ranged (no interactions beyond the cutoff)."""
        return False
