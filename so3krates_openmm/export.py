"""Export a checkpoint to a TorchScript ``.pt`` with openmm-torch's ``TorchForce`` contract.

The exported module takes positions in nm for ALL particles of the OpenMM
``System`` (and the periodic box in nm, rows are box vectors, when the export
is periodic) and returns the energy in kJ/mol, or ``(energy, forces)`` with
forces in kJ/mol/nm when exported with ``outputs_forces=True``. Unit
conversion from the checkpoint's units is exact (see :mod:`so3krates_openmm.units`).

Model metadata (elements, atomic numbers, atom indices, cutoff, units, dtype,
periodicity, hash of the source checkpoint) is stored in the ``.pt`` as the
extra file ``so3krates_metadata.json``; :func:`read_export_metadata` reads it.

Three kinds of module (``kernels``, recorded in the metadata):

- ``"reference"``: the readable model, forces by autograd (by openmm-torch, or
  inside the module with ``outputs_forces``); pure TorchScript.
- ``"analytic"``: :class:`~so3krates_openmm.model.fast.FastSO3krates`, energy
  and forces in one pass with a hand-derived backward; pure TorchScript, any device.
- ``"fused"``: the same as one C++/OpenMP operator for the whole energy and
  forces (:mod:`so3krates_openmm.model.kernels`) on the CPU (the PyTorch
  operations on other devices). Loading such a ``.pt`` needs the operators registered in the
  process: ``import so3krates_openmm.model`` does that (after the first fused
  export on the machine has built them).

The two fast kinds always return ``(energy, forces)`` (``outputs_forces`` is implied).

Every export checks itself before anything is written: the scripted module's
energy and forces on a perturbed frame must equal the eager model's (float64,
relative 1e-9), and the file written must load and give the same numbers.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from so3krates_openmm import __version__
from so3krates_openmm.data.structures import Structure
from so3krates_openmm.files import write_atomically
from so3krates_openmm.model.checkpoint import file_sha256, load_model
from so3krates_openmm.model.fast import FastSO3krates
from so3krates_openmm.model.neighbours import check_box, minimum_image_shifts, neighbour_list, structure_pairs
from so3krates_openmm.model.so3krates import SO3krates
from so3krates_openmm.units import ANGSTROM_PER_NM, energy_conversion

METADATA_FILE = "so3krates_metadata.json"
EXPORT_FORMAT_VERSION = 1
#: Relative tolerance of the float64 self-check (scripted vs eager).
SELF_CHECK_RTOL = 1e-9
#: Relative tolerance of a float32 module against the float64 eager model.
FLOAT32_CHECK_RTOL = 1e-3
#: Kinds of exported module (see the module docstring); the first is the default.
KERNELS = ("reference", "analytic", "fused")


class ExportError(RuntimeError):
    """The export failed its self-check or got inconsistent input; nothing was written."""


class OpenMMContract(nn.Module):
    """Input side of openmm-torch's contract shared by every exported module: particle
    selection, nm -> Å, checks, periodic box and the pair list.

    Args:
        model: the SO3krates model (its dtype is the compute dtype).
        atomic_numbers: (M,) atomic numbers of the modelled atoms.
        atom_indices: (M,) indices of the modelled atoms among the System's
            ``n_particles`` particles (ML/MM sub-system), or ``None`` for all.
        n_particles: number of particles in the OpenMM System.
        periodic: whether ``forward`` receives a box and applies minimum image.
        static_pairs: keep every pair of modelled atoms in the edge list
            (fixed shapes, no host synchronisation: for CUDA graphs; O(M^2)
            work) instead of pruning pairs beyond the cutoff each step.
        kernels: ``"reference"``: the module holds the model as ``self.model``;
            ``"fused"`` or ``"torch"``: it holds ``self.fast``, a
            :class:`~so3krates_openmm.model.fast.FastSO3krates` with these kernels.
    """

    def __init__(
        self,
        model: SO3krates,
        atomic_numbers: Tensor,
        atom_indices: Optional[Tensor],
        n_particles: int,
        periodic: bool,
        static_pairs: bool = False,
        kernels: str = "reference",
    ) -> None:
        super().__init__()
        if kernels == "reference":
            self.model = model
        else:
            self.fast = FastSO3krates(model, kernels)
        self.register_buffer("atomic_numbers", atomic_numbers.to(torch.long))
        self.use_subset = atom_indices is not None
        indices = atom_indices if atom_indices is not None else torch.arange(len(atomic_numbers))
        self.register_buffer("atom_indices", indices.to(torch.long))
        self.n_particles = int(n_particles)
        self.periodic = bool(periodic)
        self.static_pairs = bool(static_pairs)
        self.angstrom_per_nm = float(ANGSTROM_PER_NM)
        self.cutoff = float(model.cutoff)
        self.cutoff_nm = float(model.cutoff) / ANGSTROM_PER_NM
        self.kj_per_mol_per_model_unit = float(energy_conversion(model.config.energy_unit, "kJ/mol"))
        self.register_buffer("dtype_probe", torch.zeros(0, dtype=model.dtype))
        self.register_buffer("batch", torch.zeros(len(atomic_numbers), dtype=torch.long))
        first, second = structure_pairs(self.batch, 1)
        self.register_buffer("all_first", first)
        self.register_buffer("all_second", second)

    def coordinates_and_pairs(self, positions: Tensor, box: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Modelled coordinates (M, 3) in Å in the model dtype and the unordered pairs
        ``first``, ``second``, ``shifts`` (Å) of the model, from positions (n_particles, 3) in nm."""
        if not positions.is_cuda:
            # Input checks need the host; skipped on GPUs so that CUDA graphs can capture the step.
            if positions.shape[0] != self.n_particles:
                raise RuntimeError(
                    "so3krates: the System has a different number of particles than the model was exported for"
                )
            # the sum is finite exactly when every coordinate is (coordinates in nm do not overflow);
            # one reduction instead of isfinite's four passes and all()
            if not bool(torch.isfinite(positions.sum())):
                raise RuntimeError(
                    "so3krates: positions contain NaN or infinite values (the simulation has become unstable)"
                )
        dtype = self.dtype_probe.dtype
        selected = positions[self.atom_indices] if self.use_subset else positions
        coordinates = selected.to(dtype) * self.angstrom_per_nm
        boxes: Optional[Tensor] = None
        if self.periodic:
            if box is None:
                raise RuntimeError("so3krates: this model was exported as periodic but OpenMM passed no box")
            boxes = (box.to(dtype) * self.angstrom_per_nm).unsqueeze(0)
            if not positions.is_cuda:
                if bool(torch.min(torch.diagonal(box)) < 2.0 * self.cutoff_nm):
                    raise RuntimeError("so3krates: the model cutoff exceeds half the smallest periodic box width")
        if self.static_pairs:
            vectors = coordinates[self.all_second] - coordinates[self.all_first]
            if boxes is None:
                shifts = torch.zeros_like(vectors)
            else:
                shifts = minimum_image_shifts(vectors.detach(), boxes.expand(vectors.shape[0], 3, 3))
            return coordinates, self.all_first, self.all_second, shifts
        first, second, shifts = neighbour_list(
            coordinates, self.batch, 1, self.cutoff, boxes, True, all_pairs=(self.all_first, self.all_second)
        )
        return coordinates, first, second, shifts


class SO3kratesEnergy(OpenMMContract):
    """TorchScript module: positions (nm) [+ box (nm)] -> energy (kJ/mol), the reference model
    (arguments: :class:`OpenMMContract`, ``kernels="reference"``)."""

    def energy(self, positions: Tensor, box: Optional[Tensor]) -> Tensor:
        """Energy in kJ/mol (0-d, float64) of positions (n_particles, 3) in nm."""
        coordinates, first, second, shifts = self.coordinates_and_pairs(positions, box)
        energies = self.model.energy_from_neighbours(
            self.atomic_numbers, coordinates, self.batch, 1, first, second, shifts
        )
        # "+ 0 * sum": the energy depends on the positions even when no pair is within the cutoff,
        # so that openmm-torch's backward pass always has a gradient (zero) to read.
        return energies[0] * self.kj_per_mol_per_model_unit + 0.0 * coordinates.sum()

    def forward(self, positions: Tensor, box: Optional[Tensor] = None) -> Tensor:
        return self.energy(positions, box)


class SO3kratesEnergyForces(SO3kratesEnergy):
    """Like :class:`SO3kratesEnergy` but returns ``(energy kJ/mol, forces kJ/mol/nm)``.

    For ``TorchForce.setOutputsForces(True)``: the forces of all particles,
    zero for those outside the modelled sub-system.
    """

    def forward(self, positions: Tensor, box: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        positions = positions.detach().requires_grad_(True)
        energy = self.energy(positions, box)
        gradients = torch.autograd.grad([energy], [positions])
        gradient = gradients[0]
        if gradient is None:
            gradient = torch.zeros_like(positions)
        return energy, -gradient


class SO3kratesFastEnergyForces(OpenMMContract):
    """TorchScript module: positions (nm) [+ box (nm)] -> ``(energy kJ/mol, forces kJ/mol/nm)``
    by :class:`~so3krates_openmm.model.fast.FastSO3krates`, no autograd (arguments:
    :class:`OpenMMContract` with ``kernels`` ``"fused"`` or ``"torch"``)."""

    def forward(self, positions: Tensor, box: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        coordinates, first, second, shifts = self.coordinates_and_pairs(positions, box)
        energies, gradient = self.fast(self.atomic_numbers, coordinates, self.batch, 1, first, second, shifts)
        scale = self.kj_per_mol_per_model_unit
        # dE/dR in kJ/mol/nm = dE/dR in model units per Å * kJ/mol per unit * Å per nm
        forces = gradient.to(positions.dtype) * (-scale * self.angstrom_per_nm)
        if self.use_subset:
            forces = torch.zeros_like(positions).index_copy_(0, self.atom_indices, forces)
        return energies[0] * scale, forces


def parse_atom_indices(text: str) -> list[int]:
    """Parse an atom index list such as ``"0-41,45,50-52"`` (0-based, ranges inclusive)."""
    indices: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part:
                first, last = part.split("-", 1)
                indices.extend(range(int(first), int(last) + 1))
            else:
                indices.append(int(part))
        except ValueError:
            raise ValueError(f"cannot read atom index list {text!r}: use e.g. '0-41,45'") from None
    if not indices:
        raise ValueError("the atom index list is empty")
    if len(set(indices)) != len(indices) or min(indices) < 0:
        raise ValueError(f"atom index list {text!r} has duplicated or negative indices")
    return indices


def build_energy_module(
    model: SO3krates,
    atomic_numbers: Sequence[int],
    atom_indices: Optional[Sequence[int]] = None,
    n_particles: Optional[int] = None,
    periodic: bool = False,
    outputs_forces: bool = False,
    static_pairs: bool = False,
    kernels: str = "reference",
) -> OpenMMContract:
    """The (unscripted) OpenMM-contract module for ``model``: :class:`SO3kratesEnergy`,
    :class:`SO3kratesEnergyForces` (``outputs_forces``) or, for ``kernels`` ``"analytic"``
    and ``"fused"``, :class:`SO3kratesFastEnergyForces`."""
    if kernels not in KERNELS:
        raise ValueError(f"unknown kernels {kernels!r}; use one of {KERNELS}")
    numbers = torch.as_tensor(list(atomic_numbers), dtype=torch.long)
    indices = None if atom_indices is None else torch.as_tensor(list(atom_indices), dtype=torch.long)
    particles = int(n_particles if n_particles is not None else len(numbers))
    if indices is not None and (len(indices) != len(numbers) or int(indices.max()) >= particles):
        raise ExportError(f"atom indices must be {len(numbers)} indices below the System's {particles} particles")
    model.check_elements(numbers)
    if kernels != "reference":
        fast_kernels = "fused" if kernels == "fused" else "torch"
        return SO3kratesFastEnergyForces(
            model.eval(), numbers, indices, particles, periodic, static_pairs, fast_kernels
        )
    cls = SO3kratesEnergyForces if outputs_forces else SO3kratesEnergy
    return cls(model.eval(), numbers, indices, particles, periodic, static_pairs)


def _evaluate(module: nn.Module, positions_nm: Tensor, box_nm: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """Energy (kJ/mol) and forces (kJ/mol/nm) of an OpenMM-contract module, by autograd if needed."""
    positions = positions_nm.clone().requires_grad_(True)
    output = module(positions, box_nm) if box_nm is not None else module(positions)
    if isinstance(output, tuple):
        return output[0].detach(), output[1].detach()
    (gradient,) = torch.autograd.grad(output, positions)
    return output.detach(), -gradient


def _relative_difference(value: Tensor, reference: Tensor) -> float:
    scale = max(float(reference.abs().max()), 1e-12)
    return float((value.double() - reference.double()).abs().max()) / scale


@dataclass
class SelfCheck:
    """A perturbed frame and the eager float64 model's energy (kJ/mol) and forces (kJ/mol/nm) on it."""

    positions_nm: Tensor
    box_nm: Optional[Tensor]
    energy: Tensor
    forces: Tensor

    @classmethod
    def create(
        cls,
        model: SO3krates,
        model_numbers: Sequence[int],
        indices: Optional[Sequence[int]],
        positions_angstrom: np.ndarray,
        box_angstrom: Optional[np.ndarray],
        seed: int,
    ) -> SelfCheck:
        generator = np.random.default_rng(seed)
        perturbed = positions_angstrom + generator.normal(scale=0.05, size=positions_angstrom.shape)
        positions_nm = torch.as_tensor(perturbed / ANGSTROM_PER_NM, dtype=torch.float64)
        box_nm = None if box_angstrom is None else torch.as_tensor(box_angstrom / ANGSTROM_PER_NM, dtype=torch.float64)
        selected = positions_nm if indices is None else positions_nm[list(indices)]
        boxes = None if box_nm is None else box_nm.unsqueeze(0) * ANGSTROM_PER_NM
        energy, forces = model.energy_and_forces(
            torch.as_tensor(list(model_numbers)), selected * ANGSTROM_PER_NM, boxes=boxes
        )
        kj = energy_conversion(model.config.energy_unit, "kJ/mol")
        all_forces = torch.zeros_like(positions_nm)
        all_forces[slice(None) if indices is None else list(indices)] = forces.double() * kj * ANGSTROM_PER_NM
        return cls(positions_nm, box_nm, energy[0] * kj, all_forces)

    def verify(self, module: nn.Module, tolerance: float, what: str) -> None:
        """Raise :class:`ExportError` unless ``module`` reproduces the reference within ``tolerance``."""
        energy, forces = _evaluate(module, self.positions_nm, self.box_nm)
        errors = (_relative_difference(energy, self.energy), _relative_difference(forces, self.forces))
        if max(errors) > tolerance:
            raise ExportError(
                f"self-check failed: {what} differs from the eager model (energy {errors[0]:.2e}, "
                f"forces {errors[1]:.2e} relative; limit {tolerance:.0e}); nothing written"
            )


def script_checkpoint(
    checkpoint: str | Path,
    structure: Optional[Structure] = None,
    atomic_numbers: Optional[Sequence[int]] = None,
    atom_indices: Optional[Sequence[int]] = None,
    periodic: bool = False,
    dtype: str = "float32",
    outputs_forces: bool = False,
    static_pairs: bool = False,
    box_angstrom: Optional[np.ndarray] = None,
    seed: int = 0,
    kernels: str = "reference",
) -> Tuple[torch.jit.ScriptModule, Dict[str, Any], SelfCheck]:
    """The self-checked TorchScript module of a checkpoint, its metadata, and the check.

    Arguments as for :func:`export_checkpoint`; ``box_angstrom`` gives the box
    of a periodic export when there is no ``structure`` (else its box is used).
    Raises :class:`ExportError` when the scripted float64 module differs from
    the eager model by more than ``SELF_CHECK_RTOL``.
    """
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if kernels not in KERNELS:
        raise ValueError(f"unknown kernels {kernels!r}; use one of {KERNELS}")
    outputs_forces = outputs_forces or kernels != "reference"
    if (structure is None) == (atomic_numbers is None):
        raise ValueError("give exactly one of a structure or a list of atomic numbers")
    all_numbers = [int(z) for z in (structure.atomic_numbers if structure is not None else atomic_numbers)]
    n_particles = len(all_numbers)
    indices = None if atom_indices is None else [int(i) for i in atom_indices]
    if indices is not None and max(indices) >= n_particles:
        raise ValueError(f"atom index {max(indices)} is out of range for {n_particles} particles")
    model_numbers = all_numbers if indices is None else [all_numbers[i] for i in indices]
    if structure is not None:
        positions_angstrom, box_angstrom = structure.positions_angstrom, structure.box_angstrom
    else:
        positions_angstrom = _grid_positions(n_particles)
    if not periodic:
        box_angstrom = None
    elif box_angstrom is None:
        raise ValueError(
            "a periodic export needs a box: give a structure with one (PDB CRYST1 record, extended-XYZ Lattice)"
        )

    reference_model = load_model(checkpoint).double()
    if box_angstrom is not None:
        check_box(torch.as_tensor(box_angstrom, dtype=torch.float64).reshape(1, 3, 3), reference_model.cutoff)
    self_check = SelfCheck.create(reference_model, model_numbers, indices, positions_angstrom, box_angstrom, seed)

    def scripted(model: SO3krates) -> torch.jit.ScriptModule:
        module = build_energy_module(
            model, model_numbers, indices, n_particles, periodic, outputs_forces, static_pairs, kernels
        )
        return torch.jit.script(module)

    self_check.verify(scripted(reference_model), SELF_CHECK_RTOL, "the scripted float64 module")
    final = scripted(load_model(checkpoint).to(getattr(torch, dtype)))
    self_check.verify(final, _tolerance(dtype), f"the scripted {dtype} module")
    metadata = _metadata(
        reference_model, checkpoint, all_numbers, model_numbers, indices, periodic, dtype,
        outputs_forces, static_pairs, kernels,
    )
    return final, metadata, self_check


def _tolerance(dtype: str) -> float:
    return SELF_CHECK_RTOL if dtype == "float64" else FLOAT32_CHECK_RTOL


def export_checkpoint(
    checkpoint: str | Path,
    output: str | Path,
    structure: Optional[Structure] = None,
    atomic_numbers: Optional[Sequence[int]] = None,
    atom_indices: Optional[Sequence[int]] = None,
    periodic: bool = False,
    dtype: str = "float32",
    outputs_forces: bool = False,
    static_pairs: bool = False,
    seed: int = 0,
    kernels: str = "reference",
) -> Path:
    """Export ``checkpoint`` to a TorchScript file at ``output``; returns the path.

    Args:
        checkpoint: a checkpoint written by training or :func:`~so3krates_openmm.model.checkpoint.save_checkpoint`.
        output: the ``.pt`` to write (atomically, only after the self-check passed).
        structure: the System's structure (all particles); its positions are
            used for the self-check and its box for periodic exports.
        atomic_numbers: instead of ``structure``, the atomic numbers of all particles.
        atom_indices: modelled sub-system (ML/MM), indices into all particles.
        periodic: export a module that takes the box and applies minimum image.
        dtype: compute dtype of the exported model, ``"float32"`` or ``"float64"``.
        outputs_forces: module returns ``(energy, forces)`` (``TorchForce.setOutputsForces(True)``).
        static_pairs: fixed all-pairs edge list (for CUDA graphs), see :class:`SO3kratesEnergy`.
        seed: seed of the self-check's perturbation.
        kernels: kind of module, one of :data:`KERNELS` (see the module docstring);
            ``"analytic"`` and ``"fused"`` imply ``outputs_forces``.
    """
    module, metadata, self_check = script_checkpoint(
        checkpoint, structure, atomic_numbers, atom_indices, periodic, dtype, outputs_forces, static_pairs,
        seed=seed, kernels=kernels,
    )

    def write_and_verify(temporary: Path) -> None:
        torch.jit.save(module, str(temporary), _extra_files={METADATA_FILE: json.dumps(metadata, indent=1)})
        self_check.verify(torch.jit.load(str(temporary)), _tolerance(dtype), f"the written {dtype} module")

    return write_atomically(output, write_and_verify)


def _grid_positions(n_particles: int, spacing_angstrom: float = 1.6) -> np.ndarray:
    """Positions on a cubic grid (Å) for a self-check when no geometry is given."""
    side = int(np.ceil(n_particles ** (1.0 / 3.0)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    return grid[:n_particles] * spacing_angstrom


def _metadata(
    model: SO3krates,
    checkpoint: str | Path,
    all_numbers: list[int],
    model_numbers: list[int],
    indices: Optional[list[int]],
    periodic: bool,
    dtype: str,
    outputs_forces: bool,
    static_pairs: bool,
    kernels: str,
) -> Dict[str, Any]:
    config = model.config
    return {
        "format": "so3krates-openmm-export",
        "format_version": EXPORT_FORMAT_VERSION,
        "so3krates_openmm_version": __version__,
        "elements": list(config.elements),
        "atomic_numbers": model_numbers,
        "atom_indices": indices,
        "n_particles": len(all_numbers),
        "cutoff_nm": config.cutoff / ANGSTROM_PER_NM,
        "checkpoint_energy_unit": config.energy_unit,
        "energy_unit": "kJ/mol",
        "length_unit": "nm",
        "kj_per_mol_per_checkpoint_energy_unit": energy_conversion(config.energy_unit, "kJ/mol"),
        "periodic": periodic,
        "outputs_forces": outputs_forces,
        "static_pairs": static_pairs,
        "kernels": kernels,
        "dtype": dtype,
        "checkpoint": Path(checkpoint).name,
        "checkpoint_sha256": file_sha256(checkpoint),
        "config": config.to_dict(),
    }


def model_identity(path: str | Path) -> Dict[str, Any]:
    """What identifies a model file by its content, wherever it is and however often it was exported: for an
    export, the SHA-256 of the checkpoint it was exported from, its kernels and dtype (an export is not
    byte-identical each time); for any other file (e.g. an OpenMM System XML), its SHA-256."""
    from so3krates_openmm.model.checkpoint import file_sha256

    try:
        metadata = read_export_metadata(path)
        return {"checkpoint_sha256": metadata["checkpoint_sha256"],
                "kernels": metadata.get("kernels") or "reference", "dtype": metadata.get("dtype")}
    except (ValueError, KeyError):
        return {"sha256": file_sha256(path)}


def read_export_metadata(path: str | Path) -> Dict[str, Any]:
    """Metadata stored in an exported ``.pt`` (without loading the module)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            names = [name for name in archive.namelist() if name.endswith(f"extra/{METADATA_FILE}")]
            if not names:
                raise ValueError(
                    f"{path} has no so3krates metadata: it is not a model exported by so3krates-export"
                )
            return json.loads(archive.read(names[0]))
    except zipfile.BadZipFile:
        raise ValueError(f"{path} is not a TorchScript file; export a checkpoint with so3krates-export") from None
