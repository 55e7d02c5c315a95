"""OpenMM glue: the model as an OpenMM ``Force``, and a ``System`` for a molecule.

Typical use::

    from openmm.app import PDBFile
    from so3krates_openmm import create_system, create_torch_force, read_structure

    pdb = PDBFile("structure.pdb")
    system = create_system(pdb.topology, "model.pt")          # elements and box from the Topology
    # positions go to the Context or Simulation, as with openmm-ml's createSystem(topology):
    # simulation.context.setPositions(pdb.positions)
    system = create_system(read_structure("structure.xyz"), "model.pt")  # or a Structure / a file
    # or, to add the model to a System of your own:
    system.addForce(create_torch_force("model.pt"))

``model_path`` may be an exported TorchScript ``.pt`` (from ``so3krates-export``;
it must have been exported for these particles, which is checked from the
metadata stored in it) or a checkpoint (scripted and self-checked in memory
for these particles, as the kind of module ``kernels`` names: ``"reference"``,
the default, ``"analytic"`` or ``"fused"``, see :mod:`so3krates_openmm.export`;
a ``.pt`` keeps the kind it was exported as). Two backends:

- ``"torchforce"`` (default): openmm-torch's ``TorchForce`` runs the TorchScript
  module in C++ on the OpenMM platform's device; ``use_cuda_graphs`` is passed
  through on the CUDA platform.
- ``"pythonforce"``: ``openmm.PythonForce`` calls the model from Python each step
  on a torch ``device`` (eager, or ``torch.compile``d with ``compile_model=True``,
  from a checkpoint).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import openmm
from openmm import app, unit

from so3krates_openmm.data.structures import Structure, read_structure
from so3krates_openmm.elements import masses_dalton, symbol
from so3krates_openmm.export import KERNELS, read_export_metadata, script_checkpoint
from so3krates_openmm.units import ANGSTROM_PER_NM

if TYPE_CHECKING:
    import torch

BACKENDS = ("torchforce", "pythonforce")
read_model_metadata = read_export_metadata


def is_exported_model(model_path: str | Path) -> bool:
    """True for a TorchScript file written by ``so3krates-export``, False for anything else."""
    try:
        read_export_metadata(model_path)
    except ValueError:
        return False
    return True


class _SimtkNotice(logging.Filter):
    """Drops the "importing 'simtk.openmm' is deprecated" warning and nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "simtk.openmm" not in record.getMessage()


def openmmtorch_module() -> ModuleType:
    """The ``openmmtorch`` module (``TorchForce``), imported without the notice it would print.

    Its SWIG wrapper imports ``simtk.openmm``, whose shim logs a deprecation warning on the root logger that
    is about openmm-torch, not about the user's code; the filter is in place only during the import.
    """
    if "openmmtorch" not in sys.modules:
        root, notice = logging.getLogger(), _SimtkNotice()
        root.addFilter(notice)
        try:
            import openmmtorch  # noqa: F401
        finally:
            root.removeFilter(notice)
    return sys.modules["openmmtorch"]


def _torch_force(
    module_or_path: Any, periodic: bool, outputs_forces: bool, use_cuda_graphs: bool, force_group: int
) -> openmm.Force:
    openmmtorch = openmmtorch_module()
    properties = {"useCUDAGraphs": "true" if use_cuda_graphs else "false", "CUDAGraphWarmupSteps": "10"}
    force = openmmtorch.TorchForce(module_or_path, properties)
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
    force.setOutputsForces(bool(outputs_forces))
    force.setForceGroup(force_group)
    return force


def create_torch_force(model_path: str | Path, *, use_cuda_graphs: bool = False, force_group: int = 0) -> openmm.Force:
    """An openmm-torch ``TorchForce`` for an exported ``.pt``.

    Periodicity and whether the module returns forces are read from the
    ``.pt``'s metadata and set on the force. ``use_cuda_graphs`` is passed to
    openmm-torch (``useCUDAGraphs``); it only takes effect on the CUDA
    platform, and needs a model exported with ``--static-pairs``.
    """
    metadata = read_export_metadata(model_path)
    _check_cuda_graphs(metadata, use_cuda_graphs, model_path)
    if metadata.get("kernels") == "fused":  # the .pt calls the so3krates:: operators: register them first
        from so3krates_openmm.model import kernels

        kernels.load()
    return _torch_force(str(model_path), metadata["periodic"], metadata["outputs_forces"], use_cuda_graphs, force_group)


def _check_cuda_graphs(metadata: dict[str, Any], use_cuda_graphs: bool, model_path: str | Path) -> None:
    if use_cuda_graphs and not metadata.get("static_pairs", False):
        raise ValueError(
            f"{model_path} prunes its pair list every step, which CUDA graphs cannot capture: "
            "export with --static-pairs to use CUDA graphs"
        )


def check_kernels_match(metadata: dict[str, Any], kernels: str | None, model_path: str | Path) -> None:
    """Raise ``ValueError`` when ``kernels`` is given and is not the kind the ``.pt`` was exported as."""
    exported = metadata.get("kernels", "reference")
    if kernels is not None and kernels != exported:
        raise ValueError(
            f"{model_path} was exported with kernels {exported!r}, not {kernels!r}: the kind of an exported .pt "
            f"is fixed; leave kernels unset, or export the checkpoint again (so3krates-export --kernels {kernels}) "
            "or give the checkpoint itself"
        )


def check_model_matches(metadata: dict[str, Any], atomic_numbers: Sequence[int], model_path: str | Path) -> None:
    """Raise ``ValueError`` unless the exported model fits these particles."""
    if metadata["n_particles"] != len(atomic_numbers):
        raise ValueError(
            f"{model_path} was exported for {metadata['n_particles']} particles but the structure has "
            f"{len(atomic_numbers)}: export the checkpoint for this structure with so3krates-export"
        )
    indices = metadata["atom_indices"] if metadata["atom_indices"] is not None else range(len(atomic_numbers))
    structure_numbers = [int(atomic_numbers[i]) for i in indices]
    if structure_numbers != list(metadata["atomic_numbers"]):
        pairs = zip(structure_numbers, metadata["atomic_numbers"], strict=True)
        first = next(k for k, (a, b) in enumerate(pairs) if a != b)
        raise ValueError(
            f"{model_path} was exported for another structure: modelled atom {first} is "
            f"{symbol(metadata['atomic_numbers'][first])} in the model but {symbol(structure_numbers[first])} "
            "in the structure (same atom order is required)"
        )


def create_force(
    model_path: str | Path,
    atomic_numbers: Sequence[int],
    *,
    atom_indices: Sequence[int] | None = None,
    periodic: bool = False,
    box_angstrom: np.ndarray | None = None,
    backend: str = "torchforce",
    dtype: str = "float32",
    use_cuda_graphs: bool = False,
    compile_model: bool = False,
    device: str | torch.device | None = None,
    force_group: int = 0,
    kernels: str | None = None,
) -> openmm.Force:
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
        device: torch device the ``pythonforce`` backend runs the model on (as
            openmm-ml's ``device``); ``None`` picks CUDA when torch sees a GPU,
            else the CPU. ``TorchForce`` runs on the OpenMM platform's device instead.
        force_group: OpenMM force group.
        kernels: kind of TorchScript module a checkpoint is scripted as (``"reference"``,
            ``"analytic"`` or ``"fused"``, :data:`~so3krates_openmm.export.KERNELS`; ``None``:
            ``"reference"``). With ``pythonforce`` ``"reference"`` runs the eager model, the fast
            kinds their scripted module. An exported ``.pt`` keeps its own kind: ``None`` or that
            kind, anything else is an error.
    """
    from so3krates_openmm.model.checkpoint import load_model
    from so3krates_openmm.python_force import EagerModelCallback, ScriptedModuleCallback, create_python_force

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS}")
    numbers = [int(z) for z in atomic_numbers]
    modelled = numbers if atom_indices is None else [numbers[i] for i in atom_indices]
    check_known_elements(modelled, model_elements(model_path), model_path)
    if kernels is not None and kernels not in KERNELS:
        raise ValueError(f"unknown kernels {kernels!r}; use one of {KERNELS}")
    if is_exported_model(model_path):
        metadata = read_export_metadata(model_path)
        check_model_matches(metadata, numbers, model_path)
        check_kernels_match(metadata, kernels, model_path)
        if compile_model:
            raise ValueError("torch.compile needs the eager model: pass the checkpoint instead of the exported .pt")
        if backend == "torchforce":
            return create_torch_force(model_path, use_cuda_graphs=use_cuda_graphs, force_group=force_group)
        import torch

        module = torch.jit.load(str(model_path), map_location=torch_device(device))
        callback = ScriptedModuleCallback(module, metadata["periodic"], torch_device(device))
        return create_python_force(callback, metadata["periodic"], force_group=force_group)
    kernels = kernels or "reference"
    if backend == "torchforce" or kernels != "reference":
        if compile_model:
            raise ValueError(f"torch.compile needs the eager model: kernels={kernels!r} gives a TorchScript module; "
                             "use kernels='reference' with compile_model")
        module, metadata, _ = script_checkpoint(
            model_path,
            atomic_numbers=numbers,
            atom_indices=atom_indices,
            periodic=periodic,
            dtype=dtype,
            box_angstrom=box_angstrom,
            kernels=kernels,
        )
        if backend == "torchforce":
            return _torch_force(module, periodic, metadata["outputs_forces"], use_cuda_graphs, force_group)
        import torch

        callback = ScriptedModuleCallback(module.to(torch_device(device)), periodic, torch_device(device))
        return create_python_force(callback, periodic, force_group=force_group)
    import torch

    model = load_model(model_path, map_location=torch_device(device)).to(getattr(torch, dtype))
    callback = EagerModelCallback(model, modelled, periodic, compile_model)
    return create_python_force(callback, periodic, atom_indices, force_group)


def create_system(
    system_input: Structure | app.Topology | str | Path,
    model_path: str | Path,
    *,
    backend: str = "torchforce",
    use_cuda_graphs: bool = False,
    compile_model: bool = False,
    dtype: str = "float32",
    device: str | torch.device | None = None,
    force_group: int = 0,
    kernels: str | None = None,
) -> openmm.System:
    """A ``System`` with one particle per atom (masses from elements) and the model's force.

    ``system_input`` is an OpenMM ``Topology`` (elements from its atoms, the
    periodic box from ``topology.getPeriodicBoxVectors()``; positions are set
    on the ``Context`` afterwards, as with openmm-ml's ``createSystem``), a
    :class:`~so3krates_openmm.data.structures.Structure`, or a structure file
    (PDB, XYZ, anything :func:`~so3krates_openmm.data.structures.read_structure` reads).

    ``model_path`` is an exported ``.pt`` or a checkpoint. A periodic model
    (or any model, when the input has a box and ``model_path`` is a
    checkpoint) gets the input's box as default periodic box vectors; the
    box must be at least twice the model cutoff wide. ``kernels`` chooses the
    kind of module a checkpoint is scripted as (``"fused"``: the C++/OpenMP pair
    kernels, about 1.8x faster on the CPU); other arguments as for :func:`create_force`.
    """
    atomic_numbers, box_angstrom, source = _particles(system_input)
    periodic = box_angstrom is not None
    if is_exported_model(model_path):
        metadata = read_export_metadata(model_path)
        _check_cuda_graphs(metadata, use_cuda_graphs, model_path)
        periodic = bool(metadata["periodic"])
        if periodic:
            _check_box_fits(box_angstrom, metadata["cutoff_nm"], model_path, source)
    system = openmm.System()
    for mass in masses_dalton(atomic_numbers):
        system.addParticle(mass * unit.dalton)
    if periodic:
        box_nm = box_angstrom / ANGSTROM_PER_NM
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) * unit.nanometer for row in box_nm])
    system.addForce(
        create_force(
            model_path,
            atomic_numbers,
            periodic=periodic,
            box_angstrom=box_angstrom,
            backend=backend,
            dtype=dtype,
            use_cuda_graphs=use_cuda_graphs,
            compile_model=compile_model,
            device=device,
            force_group=force_group,
            kernels=kernels,
        )
    )
    return system


def _particles(system_input: Structure | app.Topology | str | Path) -> tuple[list[int], np.ndarray | None, str]:
    """Atomic numbers, periodic box (Å, rows are vectors, or ``None``) and a name for messages."""
    if isinstance(system_input, app.Topology):
        vectors = system_input.getPeriodicBoxVectors()
        box = None if vectors is None else np.array([v.value_in_unit(unit.angstrom) for v in vectors])
        return topology_atomic_numbers(system_input), box, "the topology"
    if isinstance(system_input, (str, Path)):
        system_input = read_structure(system_input)
    if not isinstance(system_input, Structure):
        raise TypeError(
            "create_system takes an openmm.app.Topology, a Structure or a structure file, "
            f"not {type(system_input).__name__}"
        )
    return [int(z) for z in system_input.atomic_numbers], system_input.box_angstrom, str(system_input.source)


def topology_atomic_numbers(topology: app.Topology, atom_indices: Sequence[int] | None = None) -> list[int]:
    """Atomic numbers of a ``Topology``'s atoms.

    Every modelled atom (``atom_indices``, all when ``None``) needs an element:
    ``ValueError`` names the first one without. Other particles without an
    element (virtual sites of an MM water model) get 0.
    """
    modelled = None if atom_indices is None else set(int(i) for i in atom_indices)
    numbers = []
    for atom in topology.atoms():
        if atom.element is not None:
            numbers.append(int(atom.element.atomic_number))
        elif modelled is not None and atom.index not in modelled:
            numbers.append(0)
        else:
            raise ValueError(
                f"atom {atom.index} ({atom.name!r} of residue {atom.residue.name} {atom.residue.id}) has no element: "
                "the model needs the element of every atom it models (give the PDB element columns 77-78, "
                "or set atom.element; virtual sites and extra particles cannot be modelled)"
            )
    return numbers


def model_elements(model_path: str | Path) -> list[int]:
    """Atomic numbers the model knows, from an exported ``.pt``'s metadata or a checkpoint's config."""
    from so3krates_openmm.model.checkpoint import read_checkpoint

    if is_exported_model(model_path):
        return [int(z) for z in read_export_metadata(model_path)["elements"]]
    return [int(z) for z in read_checkpoint(model_path)["config"]["elements"]]


def check_known_elements(atomic_numbers: Sequence[int], elements: Sequence[int], model_path: str | Path) -> None:
    """Raise ``ValueError`` naming the first atom whose element the model does not know."""
    known = set(int(z) for z in elements)
    for index, z in enumerate(atomic_numbers):
        if int(z) not in known:
            unknown = sorted({int(n) for n in atomic_numbers if int(n) not in known})
            raise ValueError(
                f"the model {model_path} does not know element(s) {', '.join(symbol(n) for n in unknown)} "
                f"(first: atom {index}, {symbol(int(z))}); it was trained on "
                f"{', '.join(symbol(n) for n in sorted(known))}"
            )


def torch_device(device: str | torch.device | None) -> torch.device:
    """A torch device; ``None`` is CUDA when torch sees a GPU, else the CPU (openmm-ml's rule)."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _check_box_fits(box_angstrom: np.ndarray | None, cutoff_nm: float, model_path: str | Path, source: str) -> None:
    if box_angstrom is None:
        raise ValueError(f"{model_path} is periodic but {source} has no periodic box")
    smallest = float(min(np.diag(box_angstrom))) / ANGSTROM_PER_NM
    if smallest < 2.0 * cutoff_nm:
        raise ValueError(
            f"the model cutoff ({cutoff_nm} nm) exceeds half the smallest box width ({smallest:.4g} nm) of {source}"
        )


def positions_nm(structure: Structure) -> unit.Quantity:
    """Positions of a structure as an OpenMM quantity in nm."""
    return unit.Quantity(structure.positions_angstrom / ANGSTROM_PER_NM, unit.nanometer)
