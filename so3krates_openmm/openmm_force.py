"""OpenMM glue: the model as an OpenMM ``Force``, and a ``System`` for a molecule.

Typical use::

    from so3krates_openmm.data.structures import read_structure
    from so3krates_openmm.openmm_force import create_system

    structure = read_structure("structure.pdb")
    system = create_system(structure, "model.pt")            # masses from elements
    # or, to add the model to a System of your own:
    system.addForce(create_torch_force("model.pt"))

``model_path`` may be an exported TorchScript ``.pt`` (from ``so3krates-export``;
it must have been exported for these particles, which is checked from the
metadata stored in it) or a checkpoint (scripted and self-checked in memory
for these particles). Two backends:

- ``"torchforce"`` (default): openmm-torch's ``TorchForce`` runs the TorchScript
  module in C++; ``use_cuda_graphs`` is passed through on the CUDA platform.
- ``"pythonforce"``: ``openmm.PythonForce`` calls the model from Python each step
  (eager, or ``torch.compile``d with ``compile_model=True``, from a checkpoint).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import openmm
from openmm import unit

from so3krates_openmm.data.structures import Structure
from so3krates_openmm.elements import masses_dalton, symbol
from so3krates_openmm.export import read_export_metadata, script_checkpoint
from so3krates_openmm.units import ANGSTROM_PER_NM

BACKENDS = ("torchforce", "pythonforce")
read_model_metadata = read_export_metadata


def is_exported_model(model_path: str | Path) -> bool:
    """True for a TorchScript file written by ``so3krates-export``, False for anything else."""
    try:
        read_export_metadata(model_path)
    except ValueError:
        return False
    return True


def _torch_force(module_or_path: Any, periodic: bool, outputs_forces: bool, use_cuda_graphs: bool, force_group: int) -> "openmm.Force":
    import openmmtorch

    properties = {"useCUDAGraphs": "true" if use_cuda_graphs else "false", "CUDAGraphWarmupSteps": "10"}
    force = openmmtorch.TorchForce(module_or_path, properties)
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
    force.setOutputsForces(bool(outputs_forces))
    force.setForceGroup(force_group)
    return force


def create_torch_force(model_path: str | Path, *, use_cuda_graphs: bool = False, force_group: int = 0) -> "openmm.Force":
    """An openmm-torch ``TorchForce`` for an exported ``.pt``.

    Periodicity and whether the module returns forces are read from the
    ``.pt``'s metadata and set on the force. ``use_cuda_graphs`` is passed to
    openmm-torch (``useCUDAGraphs``); it only takes effect on the CUDA
    platform, and needs a model exported with ``--static-pairs``.
    """
    metadata = read_export_metadata(model_path)
    _check_cuda_graphs(metadata, use_cuda_graphs, model_path)
    return _torch_force(str(model_path), metadata["periodic"], metadata["outputs_forces"], use_cuda_graphs, force_group)


def _check_cuda_graphs(metadata: Dict[str, Any], use_cuda_graphs: bool, model_path: str | Path) -> None:
    if use_cuda_graphs and not metadata.get("static_pairs", False):
        raise ValueError(
            f"{model_path} prunes its pair list every step, which CUDA graphs cannot capture: "
            "export with --static-pairs to use CUDA graphs"
        )


def check_model_matches(metadata: Dict[str, Any], atomic_numbers: Sequence[int], model_path: str | Path) -> None:
    """Raise ``ValueError`` unless the exported model fits these particles."""
    if metadata["n_particles"] != len(atomic_numbers):
        raise ValueError(
            f"{model_path} was exported for {metadata['n_particles']} particles but the structure has "
            f"{len(atomic_numbers)}: export the checkpoint for this structure with so3krates-export"
        )
    indices = metadata["atom_indices"] if metadata["atom_indices"] is not None else range(len(atomic_numbers))
    structure_numbers = [int(atomic_numbers[i]) for i in indices]
    if structure_numbers != list(metadata["atomic_numbers"]):
        first = next(k for k, (a, b) in enumerate(zip(structure_numbers, metadata["atomic_numbers"])) if a != b)
        raise ValueError(
            f"{model_path} was exported for another structure: modelled atom {first} is "
            f"{symbol(metadata['atomic_numbers'][first])} in the model but {symbol(structure_numbers[first])} "
            "in the structure (same atom order is required)"
        )


def create_force(
    model_path: str | Path,
    atomic_numbers: Sequence[int],
    *,
    atom_indices: Optional[Sequence[int]] = None,
    periodic: bool = False,
    box_angstrom: Optional[np.ndarray] = None,
    backend: str = "torchforce",
    dtype: str = "float32",
    use_cuda_graphs: bool = False,
    compile_model: bool = False,
    force_group: int = 0,
) -> "openmm.Force":
    """The model as an OpenMM ``Force`` for a System whose particles have ``atomic_numbers``.

    Args:
        model_path: exported ``.pt`` or checkpoint (see the module docstring).
        atomic_numbers: atomic numbers of ALL particles of the System.
        atom_indices: the modelled particles (ML/MM); ``None`` for all.
        periodic: whether the System is periodic (checkpoints only; an exported
            ``.pt`` carries its own periodicity).
        box_angstrom: the periodic box (Å), used for the checkpoint's self-check.
        backend: ``"torchforce"`` or ``"pythonforce"``.
        dtype: compute precision when scripting a checkpoint.
        use_cuda_graphs: passed to openmm-torch (CUDA platform only).
        compile_model: ``torch.compile`` the eager model (``pythonforce`` with a checkpoint).
        force_group: OpenMM force group.
    """
    from so3krates_openmm.model.checkpoint import load_model
    from so3krates_openmm.python_force import EagerModelCallback, ScriptedModuleCallback, create_python_force

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS}")
    numbers = [int(z) for z in atomic_numbers]
    if is_exported_model(model_path):
        metadata = read_export_metadata(model_path)
        check_model_matches(metadata, numbers, model_path)
        if compile_model:
            raise ValueError("torch.compile needs the eager model: pass the checkpoint instead of the exported .pt")
        if backend == "torchforce":
            return create_torch_force(model_path, use_cuda_graphs=use_cuda_graphs, force_group=force_group)
        import torch

        callback = ScriptedModuleCallback(torch.jit.load(str(model_path)), metadata["periodic"])
        return create_python_force(callback, metadata["periodic"], force_group=force_group)
    if backend == "torchforce":
        module, metadata, _ = script_checkpoint(
            model_path,
            atomic_numbers=numbers,
            atom_indices=atom_indices,
            periodic=periodic,
            dtype=dtype,
            box_angstrom=box_angstrom,
        )
        return _torch_force(module, periodic, metadata["outputs_forces"], use_cuda_graphs, force_group)
    import torch

    model = load_model(model_path).to(getattr(torch, dtype))
    modelled = numbers if atom_indices is None else [numbers[i] for i in atom_indices]
    callback = EagerModelCallback(model, modelled, periodic, compile_model)
    return create_python_force(callback, periodic, atom_indices, force_group)


def create_system(
    structure: Structure,
    model_path: str | Path,
    *,
    backend: str = "torchforce",
    use_cuda_graphs: bool = False,
    compile_model: bool = False,
    dtype: str = "float32",
    force_group: int = 0,
) -> "openmm.System":
    """A ``System`` with one particle per atom (masses from elements) and the model's force.

    ``model_path`` is an exported ``.pt`` or a checkpoint. A periodic model
    (or any model, when the structure has a box and ``model_path`` is a
    checkpoint) gets the structure's box as default periodic box vectors; the
    box must be at least twice the model cutoff wide.
    """
    periodic = structure.box_angstrom is not None
    if is_exported_model(model_path):
        metadata = read_export_metadata(model_path)
        check_model_matches(metadata, structure.atomic_numbers, model_path)
        _check_cuda_graphs(metadata, use_cuda_graphs, model_path)
        periodic = bool(metadata["periodic"])
        if periodic:
            _check_box_fits(structure, metadata["cutoff_nm"], model_path)
    system = openmm.System()
    for mass in masses_dalton(structure.atomic_numbers):
        system.addParticle(mass * unit.dalton)
    if periodic:
        box_nm = structure.box_angstrom / ANGSTROM_PER_NM
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) * unit.nanometer for row in box_nm])
    system.addForce(
        create_force(
            model_path,
            structure.atomic_numbers,
            periodic=periodic,
            box_angstrom=structure.box_angstrom,
            backend=backend,
            dtype=dtype,
            use_cuda_graphs=use_cuda_graphs,
            compile_model=compile_model,
            force_group=force_group,
        )
    )
    return system


def _check_box_fits(structure: Structure, cutoff_nm: float, model_path: str | Path) -> None:
    if structure.box_angstrom is None:
        raise ValueError(f"{model_path} is periodic but the structure {structure.source} has no box")
    smallest = float(min(np.diag(structure.box_angstrom))) / ANGSTROM_PER_NM
    if smallest < 2.0 * cutoff_nm:
        raise ValueError(
            f"the model cutoff ({cutoff_nm} nm) exceeds half the smallest box width "
            f"({smallest:.4g} nm) of {structure.source}"
        )


def positions_nm(structure: Structure) -> "unit.Quantity":
    """Positions of a structure as an OpenMM quantity in nm."""
    return unit.Quantity(structure.positions_angstrom / ANGSTROM_PER_NM, unit.nanometer)
