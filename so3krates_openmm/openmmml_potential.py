"""openmm-ml plugin: ``MLPotential('so3krates', modelPath=CHECKPOINT)``.

Registered through the entry-point group ``openmmml.potentials`` (see
``setup.py``), so that after ``pip install so3krates-openmm``::

    from openmmml import MLPotential
    potential = MLPotential("so3krates", modelPath="best_checkpoint.pt")
    system = potential.createSystem(topology)                       # all atoms ML
    mixed = potential.createMixedSystem(topology, mm_system, ml_atoms)  # ML/MM

The potential scripts and self-checks the checkpoint for the topology's
atoms itself (no separate export step). Options of ``createSystem`` /
``createMixedSystem``, named and meant as in openmm-ml's own potentials
(``macepotential.py``):

- ``precision``: ``None`` (default) computes in the checkpoint's dtype,
  ``"single"`` in float32, ``"double"`` in float64.
- ``device``: torch device (string or ``torch.device``) the model runs on with
  ``backend="pythonforce"``; by default CUDA when torch sees a GPU, else the
  CPU. With ``TorchForce`` openmm-torch runs the model on the device of the
  OpenMM platform the ``Context`` uses, so ``device`` does not apply there.
- ``backend``: ``"torchforce"`` (default) or ``"pythonforce"``.
- ``useCUDAGraphs`` and ``compileModel``.
- ``kernels``: kind of TorchScript module the checkpoint is scripted as,
  ``"reference"`` (default), ``"analytic"`` or ``"fused"`` (C++/OpenMP pair
  kernels, the fastest on the CPU), as ``so3krates-export --kernels``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np
import openmm
from openmm import unit
from openmmml.mlpotential import MLPotentialImpl, MLPotentialImplFactory

PRECISIONS = {"single": "float32", "double": "float64"}


class SO3kratesPotentialImplFactory(MLPotentialImplFactory):
    """Creates :class:`SO3kratesPotentialImpl` objects for openmm-ml."""

    def createImpl(self, name: str, modelPath: str | None = None, **args) -> MLPotentialImpl:
        return SO3kratesPotentialImpl(name, modelPath)


class SO3kratesPotentialImpl(MLPotentialImpl):
    """An SO3krates checkpoint as an openmm-ml potential (short-ranged: cutoff r_c)."""

    def __init__(self, name: str, modelPath: str | None) -> None:
        if modelPath is None:
            raise ValueError("give the checkpoint: MLPotential('so3krates', modelPath='best_checkpoint.pt')")
        self.name = name
        self.modelPath = str(modelPath)

    def addForces(
        self,
        topology: openmm.app.Topology,
        system: openmm.System,
        atoms: Iterable[int] | None,
        forceGroup: int,
        precision: str | None = None,
        backend: str = "torchforce",
        useCUDAGraphs: bool = False,
        compileModel: bool = False,
        kernels: str | None = None,
        **args,
    ) -> None:
        """Add the model's force for ``atoms`` (all when ``None``) of ``topology`` to ``system``.

        ``precision``: ``None`` for the checkpoint's dtype, ``"single"`` or
        ``"double"``. ``device`` (in ``args``): torch device of the
        ``pythonforce`` backend, chosen as by openmm-ml when not given.
        """
        from so3krates_openmm.model.checkpoint import read_checkpoint
        from so3krates_openmm.openmm_force import create_force, topology_atomic_numbers

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
        if backend == "torchforce" and "device" in args:
            warnings.warn(
                "so3krates: TorchForce runs the model on the device of the OpenMM platform; "
                "'device' applies to backend='pythonforce' only",
                stacklevel=2,
            )
        if precision is None:
            dtype = read_checkpoint(self.modelPath)["config"]["dtype"]
        elif precision in PRECISIONS:
            dtype = PRECISIONS[precision]
        else:
            raise ValueError(
                f"precision must be None (the checkpoint's dtype), 'single' or 'double', got {precision!r}"
            )
        atom_indices = None if atoms is None else list(atoms)
        vectors = topology.getPeriodicBoxVectors()
        periodic = vectors is not None or system.usesPeriodicBoundaryConditions()
        if vectors is None and periodic:
            vectors = system.getDefaultPeriodicBoxVectors()
        box_angstrom = None if vectors is None else np.asarray([v.value_in_unit(unit.angstrom) for v in vectors])
        force = create_force(
            self.modelPath,
            topology_atomic_numbers(topology, atom_indices),
            atom_indices=atom_indices,
            periodic=periodic,
            box_angstrom=box_angstrom,
            backend=backend,
            dtype=dtype,
            use_cuda_graphs=useCUDAGraphs,
            compile_model=compileModel,
            device=self._getTorchDevice(args),
            force_group=forceGroup,
            kernels=kernels,
        )
        system.addForce(force)

    def getMLLongRange(self) -> bool:
        """SO3krates is short-ranged (no interactions beyond the cutoff)."""
        return False
