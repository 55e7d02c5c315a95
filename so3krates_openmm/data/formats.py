"""Reading and writing reference data: MD22/sGDML ``.npz`` and ASE formats (extended XYZ).

MD22/sGDML layout (what :func:`load_npz` reads and :func:`save_npz` writes):

=========  ===========  =====================================================
key        shape        meaning
=========  ===========  =====================================================
``R``      (M, N, 3)    positions, Å by convention (``r_unit``)
``E``      (M,)/(M, 1)  energies, kcal/mol by convention (``e_unit``)
``F``      (M, N, 3)    forces, ``e_unit`` per ``r_unit``
``z``      (N,)         atomic numbers
=========  ===========  =====================================================

Optional keys, written by :func:`save_npz` and honoured on reading:
``e_unit`` and ``r_unit`` (as in sGDML files), ``theory``, ``name`` and
``metadata_json`` (the data set's whole ``metadata`` dict as JSON).

Every loader returns a :class:`~so3krates_openmm.data.dataset.MolecularDataset`
with positions in Å, energies in the file's energy unit and forces in that
unit per Å; use ``dataset.converted(unit)`` for another energy unit.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from so3krates_openmm.data.dataset import DataError, MolecularDataset
from so3krates_openmm.files import write_atomically
from so3krates_openmm.units import length_conversion, normalise_energy_unit, normalise_length_unit

NPZ_REQUIRED_KEYS = ("R", "E", "F", "z")


def _check_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    if not path.is_file():
        raise DataError(f"{path}: is not a file")
    return path


def _unit(value: str, kind: str, path: Path) -> str:
    try:
        return normalise_energy_unit(value) if kind == "energy" else normalise_length_unit(value)
    except ValueError as error:
        raise DataError(f"{path}: {error}") from error


def _choose_unit(explicit: str | None, recorded: str | None, default: str, kind: str, path: Path) -> str:
    """The unit to use: the caller's if given (warning if the file says otherwise), else the file's, else the
    default."""
    recorded_canonical = _unit(recorded, kind, path) if recorded else None
    if explicit is not None:
        chosen = _unit(explicit, kind, path)
        if recorded_canonical is not None and recorded_canonical != chosen:
            warnings.warn(
                f"{path}: the file records {kind} unit {recorded_canonical!r} but {kind}_unit={explicit!r} "
                "was given; using the given unit",
                stacklevel=3,
            )
        return chosen
    return recorded_canonical or _unit(default, kind, path)


def _scalar_string(value: np.ndarray) -> str:
    value = np.asarray(value)
    return str(value.item() if value.size == 1 else value.tolist())


def load_npz(
    path: str | Path, energy_unit: str | None = None, length_unit: str | None = None
) -> MolecularDataset:
    """Load an MD22/sGDML-layout ``.npz`` file.

    Args:
        path: the ``.npz`` file.
        energy_unit: unit of ``E`` (and of ``F`` per length). ``None``: the
            file's ``e_unit`` key if present, else ``"kcal/mol"`` (the MD22
            convention). A given unit overrides the file's (with a warning if
            they differ).
        length_unit: unit of ``R`` (and of the force denominator). ``None``:
            the file's ``r_unit`` if present, else Å. Positions are converted
            to Å and forces to energy per Å.

    Returns:
        The data set, energies in ``energy_unit``, positions in Å.

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: not a readable ``.npz``, missing keys, mismatched shapes,
            NaN values, unknown elements or units; the message names the file.
    """
    path = _check_file(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {key: archive[key] for key in archive.files}
    except Exception as error:  # zipfile/numpy raise several types for a bad archive
        raise DataError(f"{path}: not a readable .npz archive ({error})") from error

    missing = [key for key in NPZ_REQUIRED_KEYS if key not in contents]
    if missing:
        raise DataError(
            f"{path}: missing key(s) {missing}; an MD22/sGDML file needs R (M,N,3) positions, "
            f"E (M,) energies, F (M,N,3) forces and z (N,) atomic numbers (found {sorted(contents)})"
        )
    positions, energies, forces, numbers = (contents[k] for k in NPZ_REQUIRED_KEYS)
    if numbers.ndim != 1:
        raise DataError(f"{path}: z must have shape (N,), got {numbers.shape}")
    n_atoms = len(numbers)
    if positions.ndim != 3 or positions.shape[1:] != (n_atoms, 3):
        raise DataError(f"{path}: R has shape {positions.shape}, expected (M, {n_atoms}, 3) for {n_atoms} atoms in z")
    n_frames = positions.shape[0]
    if forces.shape != positions.shape:
        raise DataError(f"{path}: F has shape {forces.shape}, expected {positions.shape} like R")
    if energies.shape not in ((n_frames,), (n_frames, 1)):
        raise DataError(f"{path}: E has shape {energies.shape}, expected ({n_frames},) or ({n_frames}, 1)")
    if numbers.dtype.kind not in "iu":
        if numbers.dtype.kind == "f" and np.all(np.isfinite(numbers)) and np.all(numbers == np.round(numbers)):
            numbers = numbers.astype(np.int64)
        else:
            raise DataError(f"{path}: z must hold integer atomic numbers, got dtype {numbers.dtype}")

    recorded_e = _scalar_string(contents["e_unit"]) if "e_unit" in contents else None
    recorded_r = _scalar_string(contents["r_unit"]) if "r_unit" in contents else None
    e_unit = _choose_unit(energy_unit, recorded_e, "kcal/mol", "energy", path)
    r_unit = _choose_unit(length_unit, recorded_r, "Angstrom", "length", path)
    to_angstrom = length_conversion(r_unit, "Angstrom")

    metadata: dict[str, Any] = {}
    if "metadata_json" in contents:
        try:
            metadata = json.loads(_scalar_string(contents["metadata_json"]))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: metadata_json is not valid JSON ({error})") from error
    for key in ("theory", "name"):
        if key in contents and key not in metadata:
            metadata[key] = _scalar_string(contents[key])
    if "source" in metadata:
        metadata["origin"] = metadata["source"]
    metadata["source"] = str(path)
    metadata["file_units"] = {"energy": e_unit, "length": r_unit}

    return MolecularDataset(
        numbers.astype(np.int64),
        positions.astype(np.float64) * to_angstrom,
        energies.astype(np.float64),
        forces.astype(np.float64) / to_angstrom,
        energy_unit=e_unit,
        metadata=metadata,
    )


def _frame_value(atoms: Any, key: str, kind: str) -> Any:
    """Energy or forces of one ASE frame from info/arrays, else from the attached calculator."""
    store = atoms.info if kind == "energy" else atoms.arrays
    if key in store:
        return store[key]
    calc = getattr(atoms, "calc", None)
    results = getattr(calc, "results", None) or {}
    if key in results:
        return results[key]
    if kind == "energy" and key == "energy" and "free_energy" in results:
        return results["free_energy"]
    return None


def load_ase(
    path: str | Path,
    energy_unit: str | None = None,
    length_unit: str = "Angstrom",
    energy_key: str = "energy",
    forces_key: str = "forces",
    index: str | int | slice = ":",
    format: str | None = None,
) -> MolecularDataset:
    """Load every frame of an ASE-readable file (extended XYZ first) with energies and forces.

    Per frame, the energy is ``atoms.info[energy_key]`` or the attached
    calculator's result (ASE puts extended XYZ's ``energy=`` and ``forces``
    there), and the forces ``atoms.arrays[forces_key]`` or the calculator's.

    Args:
        path: any file ``ase.io.read`` understands.
        energy_unit: ``None``: the frames' ``energy_unit`` info entry (written
            by :func:`save_extxyz`) if present, else eV (ASE's convention).
        length_unit: unit of the positions (forces are per this unit); the
            data set holds Å.
        energy_key, forces_key: names of the energy (info) and forces (arrays)
            entries, e.g. ``"REF_energy"`` and ``"REF_forces"`` for MACE-style files.
        index: frames to read (ASE syntax, default all).
        format: ASE format name when the suffix does not tell.

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: unreadable file, a frame without energy or forces, shape
            mismatch, NaN, unknown elements; the message names the file and frame.
    """
    path = _check_file(path)
    from ase.io import read

    try:
        frames = read(str(path), index=index, format=format)
    except Exception as error:  # ASE raises many types for unreadable input
        raise DataError(f"{path}: ASE could not read it ({type(error).__name__}: {error})") from error
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise DataError(f"{path}: contains no frames")

    recorded = {str(atoms.info["energy_unit"]) for atoms in frames if "energy_unit" in atoms.info}
    if len(recorded) > 1:
        raise DataError(f"{path}: frames record different energy units {sorted(recorded)}")
    e_unit = _choose_unit(energy_unit, recorded.pop() if recorded else None, "eV", "energy", path)
    to_angstrom = length_conversion(_unit(length_unit, "length", path), "Angstrom")

    numbers, positions, energies, forces = [], [], [], []
    for i, atoms in enumerate(frames):
        energy = _frame_value(atoms, energy_key, "energy")
        if energy is None:
            raise DataError(
                f"{path}: frame {i} has no energy {energy_key!r} (in its info or calculator); "
                "pass energy_key= to name the right entry"
            )
        frame_forces = _frame_value(atoms, forces_key, "forces")
        if frame_forces is None:
            raise DataError(
                f"{path}: frame {i} has no forces {forces_key!r} (in its arrays or calculator); "
                "pass forces_key= to name the right entry"
            )
        frame_forces = np.asarray(frame_forces, dtype=np.float64)
        if frame_forces.shape != (len(atoms), 3):
            raise DataError(f"{path}: frame {i}: forces have shape {frame_forces.shape}, expected ({len(atoms)}, 3)")
        try:
            energy = float(np.asarray(energy, dtype=np.float64).reshape(-1)[0])
        except (TypeError, ValueError) as error:
            raise DataError(f"{path}: frame {i}: energy {energy!r} is not a number") from error
        if np.any(atoms.numbers < 1):
            raise DataError(f"{path}: frame {i}: unknown element (atomic number {atoms.numbers.min()})")
        numbers.append(atoms.numbers.copy())
        positions.append(atoms.positions * to_angstrom)
        energies.append(energy)
        forces.append(frame_forces / to_angstrom)

    metadata: dict[str, Any] = {"source": str(path), "file_units": {"energy": e_unit, "length": length_unit}}
    theories = {str(atoms.info["theory"]) for atoms in frames if "theory" in atoms.info}
    if len(theories) == 1:
        metadata["theory"] = theories.pop()
    return MolecularDataset(numbers, positions, np.array(energies), forces, e_unit, metadata)


def load_dataset(path: str | Path, **kwargs: Any) -> MolecularDataset:
    """Load a data set, choosing the reader from the suffix.

    ``.npz`` goes to :func:`load_npz`, anything else to :func:`load_ase`;
    keyword arguments are passed on (``energy_unit``, ``length_unit``, ...).
    """
    path = _check_file(path)
    if path.suffix.lower() == ".npz":
        return load_npz(path, **kwargs)
    return load_ase(path, **kwargs)


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` to a compressed ``.npz`` file at ``path`` (atomically; ``path`` is used as given)."""

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    return write_atomically(path, write)


def save_npz(
    dataset: MolecularDataset,
    path: str | Path,
    float32: bool = False,
    energy_unit: str | None = None,
    name: str | None = None,
) -> Path:
    """Write a single-molecule data set in the MD22/sGDML layout (compressed, atomic rename).

    Args:
        dataset: frames that all share the same atomic numbers.
        path: output ``.npz``.
        float32: store ``R`` and ``F`` as float32 (about half the size);
            ``E`` always stays float64.
        energy_unit: unit to write (default: the data set's; MD22 uses kcal/mol).
        name: short name stored as ``name`` (default ``metadata["name"]`` or the file stem).

    The file also holds ``e_unit``, ``r_unit`` (``"Ang"``), ``theory`` and
    ``metadata_json``. Returns the path written.
    """
    path = Path(path)
    if not dataset.same_molecule:
        raise DataError(
            f"{dataset.source}: the MD22 .npz layout holds one molecule; these frames differ in "
            "atoms. Write extended XYZ (save_extxyz) instead."
        )
    data = dataset.converted(energy_unit) if energy_unit else dataset
    numbers, positions, energies, forces = data.stacked()
    dtype = np.float32 if float32 else np.float64
    metadata = dict(data.metadata)
    arrays = {
        "R": positions.astype(dtype),
        "E": energies.astype(np.float64),
        "F": forces.astype(dtype),
        "z": numbers.astype(np.int64),
        "e_unit": np.array(data.energy_unit),
        "r_unit": np.array("Ang"),
        "theory": np.array(str(metadata.get("theory", "unknown"))),
        "name": np.array(name or str(metadata.get("name", path.stem))),
        "metadata_json": np.array(json.dumps(metadata, default=str, sort_keys=True)),
    }
    return write_npz(path, arrays)


def save_extxyz(dataset: MolecularDataset, path: str | Path, energy_unit: str = "eV") -> Path:
    """Write all frames as extended XYZ (energies and forces in ``energy_unit``, default eV as ASE expects).

    Each frame records ``energy_unit`` (and ``theory`` when known) in its
    info line, so :func:`load_ase` reads the units back. Returns the path written.
    """
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    path = Path(path)
    data = dataset.converted(energy_unit)
    frames = []
    for frame in data:
        atoms = Atoms(numbers=frame.atomic_numbers, positions=frame.positions)
        atoms.info["energy_unit"] = data.energy_unit
        if "theory" in data.metadata:
            atoms.info["theory"] = str(data.metadata["theory"])
        atoms.calc = SinglePointCalculator(atoms, energy=frame.energy, forces=frame.forces)
        frames.append(atoms)

    return write_atomically(path, lambda temporary: write(str(temporary), frames, format="extxyz"))


def merge_datasets(
    inputs: list[str | Path], output: str | Path, float32: bool = False, name: str | None = None
) -> MolecularDataset:
    """Concatenate data set files in order and write them to ``output`` (``.npz`` or extended XYZ).

    Energies are converted to the first file's unit. The result's metadata
    are the first part's theory with ``parts``: each input's file name,
    frame count and metadata (settings, timing). Returns the merged data set.
    """
    parts = [load_dataset(path) for path in inputs]
    merged = MolecularDataset.concatenate(parts)
    theories = sorted({str(p.metadata.get("theory", "unknown")) for p in parts})
    if len(theories) > 1:
        raise DataError(f"the inputs were made with different reference methods {theories}; refusing to merge")
    metadata = {
        "theory": theories[0],
        "source": "so3krates-data merge",
        "parts": [
            {"file": Path(path).name, "frames": len(part),
             **{k: v for k, v in part.metadata.items() if k not in ("source", "concatenated_from")}}
            for path, part in zip(inputs, parts, strict=True)
        ],
    }
    if name:
        metadata["name"] = name
    merged.metadata = metadata
    output = Path(output)
    if output.suffix.lower() == ".npz":
        save_npz(merged, output, float32=float32, name=name)
    else:
        save_extxyz(merged, output)
    return merged
