"""OpenMM glue: a ``TorchForce`` from an exported ``.pt``, and a ``System`` for a molecule.

Typical use::

    from so3krates_openmm.data.structures import read_structure
    from so3krates_openmm.openmm_force import create_system

    structure = read_structure("structure.pdb")
    system = create_system(structure, "model.pt")            # masses from elements
    # or, to add the model to a System of your own:
    system.addForce(create_torch_force("model.pt"))

The ``.pt`` must have been exported for the System's particles (same number
and, for the modelled atoms, the same elements): both are checked here from
the metadata stored in the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import numpy as np
import openmm
from openmm import unit

from so3krates_openmm.data.structures import Structure
from so3krates_openmm.elements import masses_dalton, symbol
from so3krates_openmm.export import ANGSTROM_PER_NM, read_export_metadata

read_model_metadata = read_export_metadata


def create_torch_force(
    model_path: str | Path,
    *,
    use_cuda_graphs: bool = False,
    cuda_graph_warmup_steps: int = 10,
    force_group: int = 0,
) -> "openmm.Force":
    """An openmm-torch ``TorchForce`` for an exported model.

    Periodicity and whether the module returns forces are read from the
    ``.pt``'s metadata and set on the force. ``use_cuda_graphs`` is passed to
    openmm-torch (``useCUDAGraphs``); it only takes effect on the CUDA
    platform, and needs a model exported with ``static_pairs=True``.
    """
    import openmmtorch

    metadata = read_export_metadata(model_path)
    if use_cuda_graphs and not metadata.get("static_pairs", False):
        raise ValueError(
            f"{model_path} prunes its pair list every step, which CUDA graphs cannot capture: "
            "re-export with --static-pairs to use CUDA graphs"
        )
    properties = {
        "useCUDAGraphs": "true" if use_cuda_graphs else "false",
        "CUDAGraphWarmupSteps": str(int(cuda_graph_warmup_steps)),
    }
    force = openmmtorch.TorchForce(str(model_path), properties)
    force.setUsesPeriodicBoundaryConditions(bool(metadata["periodic"]))
    force.setOutputsForces(bool(metadata["outputs_forces"]))
    force.setForceGroup(force_group)
    return force


def check_model_matches(metadata: Dict[str, Any], atomic_numbers: np.ndarray, model_path: str | Path) -> None:
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


def create_system(
    structure: Structure,
    model_path: str | Path,
    *,
    use_cuda_graphs: bool = False,
    force_group: int = 0,
) -> "openmm.System":
    """A ``System`` with one particle per atom (masses from elements) and the model's force.

    A periodic model gets the structure's box as default periodic box vectors;
    the box must be at least twice the model cutoff wide.
    """
    metadata = read_export_metadata(model_path)
    check_model_matches(metadata, structure.atomic_numbers, model_path)
    system = openmm.System()
    for mass in masses_dalton(structure.atomic_numbers):
        system.addParticle(mass * unit.dalton)
    if metadata["periodic"]:
        if structure.box_angstrom is None:
            raise ValueError(f"{model_path} is periodic but the structure {structure.source} has no box")
        box_nm = structure.box_angstrom / ANGSTROM_PER_NM
        smallest = float(min(np.diag(box_nm)))
        if smallest < 2.0 * metadata["cutoff_nm"]:
            raise ValueError(
                f"the model cutoff ({metadata['cutoff_nm']} nm) exceeds half the smallest box width "
                f"({smallest:.4g} nm) of {structure.source}"
            )
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) * unit.nanometer for row in box_nm])
    system.addForce(
        create_torch_force(model_path, use_cuda_graphs=use_cuda_graphs, force_group=force_group)
    )
    return system


def positions_nm(structure: Structure) -> "unit.Quantity":
    """Positions of a structure as an OpenMM quantity in nm."""
    return unit.Quantity(structure.positions_angstrom / ANGSTROM_PER_NM, unit.nanometer)
