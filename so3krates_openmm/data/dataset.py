"""In-memory data sets of molecular frames with reference energies and forces.

A :class:`MolecularDataset` holds ``M`` frames, possibly of different
molecules. Each frame has atomic numbers, positions in Å, one energy and one
force per atom. Energies are in ``dataset.energy_unit`` (a canonical name from
:mod:`so3krates_openmm.units`, e.g. ``"kcal/mol"`` or ``"eV"``) and forces in
that unit per Å. Everything is plain numpy (float64 values, int64 atomic
numbers); no torch is needed.

Storage is flat, which makes batching cheap: the atoms of all frames are
concatenated, and ``offsets[i]:offsets[i + 1]`` are the atoms of frame ``i``::

    dataset.atomic_numbers_flat[dataset.offsets[i]:dataset.offsets[i + 1]]

For frame-by-frame access use ``dataset[i]``, which returns a :class:`Frame`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from so3krates_openmm.elements import MAX_ATOMIC_NUMBER
from so3krates_openmm.units import energy_conversion, normalise_energy_unit


class DataError(ValueError):
    """Bad or inconsistent reference data (the message names the source and the problem)."""


@dataclass(frozen=True)
class Frame:
    """One frame of a data set.

    Attributes:
        atomic_numbers: (N,) int64.
        positions: (N, 3) float64, Å.
        energy: float, in the data set's ``energy_unit``.
        forces: (N, 3) float64, ``energy_unit`` per Å.
        index: the frame's index in the data set it came from.
    """

    atomic_numbers: np.ndarray
    positions: np.ndarray
    energy: float
    forces: np.ndarray
    index: int

    @property
    def n_atoms(self) -> int:
        return len(self.atomic_numbers)


def _as_frame_list(values: Any, name: str, source: str) -> list[np.ndarray]:
    """Accept an (M, N, ...) array or a sequence of per-frame arrays."""
    if isinstance(values, np.ndarray) and values.dtype != object:
        if values.ndim < 2:
            raise DataError(f"{source}: {name} must have one entry per frame, got shape {values.shape}")
        return list(values)
    return [np.asarray(v) for v in values]


class MolecularDataset:
    """Frames with atomic numbers, positions (Å), energies and forces.

    Args:
        atomic_numbers: one (N,) array shared by all frames, or a sequence of
            per-frame (N_i,) arrays (or an (M, N) array).
        positions: (M, N, 3) array or a sequence of (N_i, 3) arrays, Å.
        energies: (M,) energies in ``energy_unit`` (an (M, 1) array is accepted).
        forces: like ``positions``, in ``energy_unit`` per Å.
        energy_unit: any spelling :func:`so3krates_openmm.units.normalise_energy_unit`
            accepts; stored canonically.
        metadata: free-form dict, by convention with ``theory`` (e.g.
            ``"GFN2-xTB"``), ``settings`` (how the data were made) and
            ``source`` (file or generator); copied.

    Raises:
        DataError: mismatched shapes or counts, NaN or infinite values, or
            atomic numbers that are not elements. The message starts with
            ``metadata["source"]`` when it is set.
    """

    def __init__(
        self,
        atomic_numbers: Any,
        positions: Any,
        energies: Any,
        forces: Any,
        energy_unit: str = "kcal/mol",
        metadata: dict | None = None,
    ) -> None:
        self.metadata: dict = copy.deepcopy(dict(metadata or {}))
        source = str(self.metadata.get("source", "<memory>"))
        try:
            self.energy_unit = normalise_energy_unit(energy_unit)
        except ValueError as error:
            raise DataError(f"{source}: {error}") from error

        position_list = _as_frame_list(positions, "positions", source)
        n_frames = len(position_list)
        force_list = _as_frame_list(forces, "forces", source)
        energies = np.asarray(energies, dtype=np.float64)
        if energies.ndim == 2 and energies.shape[1] == 1:
            energies = energies[:, 0]
        if energies.ndim != 1:
            raise DataError(f"{source}: energies must have shape (M,) or (M, 1), got {energies.shape}")

        numbers = atomic_numbers
        if isinstance(numbers, np.ndarray) and numbers.dtype != object and numbers.ndim == 1:
            number_list = [numbers] * n_frames
        elif isinstance(numbers, np.ndarray) and numbers.dtype != object and numbers.ndim == 2:
            number_list = list(numbers)
        else:
            number_list = [np.asarray(z) for z in numbers]
            if len(number_list) and np.ndim(number_list[0]) == 0:
                number_list = [np.asarray(numbers)] * n_frames

        counts = {"positions": n_frames, "forces": len(force_list), "energies": len(energies),
                  "atomic_numbers": len(number_list)}
        if len(set(counts.values())) != 1:
            raise DataError(f"{source}: the number of frames differs between arrays: {counts}")

        n_atoms = np.zeros(n_frames, dtype=np.int64)
        for i, (z, r, f) in enumerate(zip(number_list, position_list, force_list, strict=True)):
            n = len(z)
            if np.ndim(z) != 1 or n == 0:
                raise DataError(f"{source}: frame {i}: atomic numbers must be a non-empty 1-d array")
            if np.shape(r) != (n, 3):
                raise DataError(f"{source}: frame {i}: positions have shape {np.shape(r)}, expected ({n}, 3)")
            if np.shape(f) != (n, 3):
                raise DataError(f"{source}: frame {i}: forces have shape {np.shape(f)}, expected ({n}, 3)")
            n_atoms[i] = n

        self.n_atoms: np.ndarray = n_atoms
        """(M,) int64: number of atoms of each frame."""
        self.offsets: np.ndarray = np.concatenate([[0], np.cumsum(n_atoms)]).astype(np.int64)
        """(M + 1,) int64: atoms of frame i are ``offsets[i]:offsets[i+1]`` in the flat arrays."""
        empty3 = np.zeros((0, 3))
        raw_numbers = np.concatenate(number_list) if n_frames else np.zeros(0, np.int64)
        if raw_numbers.dtype.kind not in "iuf" or not np.array_equal(raw_numbers, np.round(raw_numbers)):
            raise DataError(f"{source}: atomic numbers must be integers, got {raw_numbers[:5].tolist()}...")
        self.atomic_numbers_flat: np.ndarray = raw_numbers.astype(np.int64)
        """(sum N_i,) int64 atomic numbers of all frames, concatenated."""
        self.positions_flat: np.ndarray = (
            np.concatenate(position_list).astype(np.float64) if n_frames else empty3
        )
        """(sum N_i, 3) float64 positions of all frames in Å, concatenated."""
        self.forces_flat: np.ndarray = np.concatenate(force_list).astype(np.float64) if n_frames else empty3
        """(sum N_i, 3) float64 forces of all frames in ``energy_unit``/Å, concatenated."""
        self.energies: np.ndarray = energies.astype(np.float64)
        """(M,) float64 energies in ``energy_unit``."""

        bad = (self.atomic_numbers_flat < 1) | (self.atomic_numbers_flat > MAX_ATOMIC_NUMBER)
        if bad.any():
            frame = int(np.searchsorted(self.offsets, np.flatnonzero(bad)[0], side="right") - 1)
            raise DataError(
                f"{source}: unknown element: atomic number {int(self.atomic_numbers_flat[bad][0])} "
                f"in frame {frame} (valid: 1..{MAX_ATOMIC_NUMBER})"
            )
        for name, values in (("positions", self.positions_flat), ("forces", self.forces_flat),
                             ("energies", self.energies)):
            finite = np.isfinite(values)
            if not finite.all():
                flat_index = np.flatnonzero(~finite.reshape(len(values), -1).all(axis=1))[0]
                frame = (int(flat_index) if name == "energies"
                         else int(np.searchsorted(self.offsets, flat_index, side="right") - 1))
                raise DataError(f"{source}: {name} contain NaN or infinite values (first in frame {frame})")

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.energies)

    def __getitem__(self, index: int) -> Frame:
        n = len(self)
        if not -n <= int(index) < n:
            raise IndexError(f"frame index {index} out of range for a data set of {n} frames")
        i = int(index) % n
        atoms = slice(self.offsets[i], self.offsets[i + 1])
        return Frame(
            atomic_numbers=self.atomic_numbers_flat[atoms],
            positions=self.positions_flat[atoms],
            energy=float(self.energies[i]),
            forces=self.forces_flat[atoms],
            index=i,
        )

    def __iter__(self) -> Iterator[Frame]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        sizes = sorted(set(self.n_atoms.tolist()))
        return (f"MolecularDataset({len(self)} frames, atoms per frame {sizes}, "
                f"elements {self.elements.tolist()}, energy_unit={self.energy_unit!r})")

    @property
    def elements(self) -> np.ndarray:
        """Sorted unique atomic numbers present in the data set (int64)."""
        return np.unique(self.atomic_numbers_flat)

    @property
    def same_molecule(self) -> bool:
        """True when every frame has the same atomic numbers in the same order."""
        if len(self) == 0:
            return True
        if not np.all(self.n_atoms == self.n_atoms[0]):
            return False
        return bool(
            np.all(self.atomic_numbers_flat.reshape(len(self), -1) == self.atomic_numbers_flat[: self.n_atoms[0]])
        )

    def stacked(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(z (N,), positions (M, N, 3) Å, energies (M,), forces (M, N, 3)) for a single-molecule set.

        Raises:
            DataError: when the frames are not all the same molecule.
        """
        if not self.same_molecule:
            raise DataError(f"{self.source}: frames are of different molecules; use per-frame access")
        n = int(self.n_atoms[0]) if len(self) else 0
        return (
            self.atomic_numbers_flat[:n].copy(),
            self.positions_flat.reshape(len(self), n, 3),
            self.energies,
            self.forces_flat.reshape(len(self), n, 3),
        )

    @property
    def source(self) -> str:
        return str(self.metadata.get("source", "<memory>"))

    # ------------------------------------------------------------ operations
    def subset(self, indices: Sequence[int] | np.ndarray) -> MolecularDataset:
        """A new data set with the frames ``indices`` (in that order; repeats allowed)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < -len(self) or indices.max() >= len(self)):
            raise IndexError(f"subset indices out of range for a data set of {len(self)} frames")
        indices = indices % max(len(self), 1)
        frames = [self[int(i)] for i in indices]
        return MolecularDataset(
            [f.atomic_numbers for f in frames],
            [f.positions for f in frames] if frames else np.zeros((0, 0, 3)),
            np.array([f.energy for f in frames], dtype=np.float64),
            [f.forces for f in frames] if frames else np.zeros((0, 0, 3)),
            energy_unit=self.energy_unit,
            metadata=self.metadata,
        )

    def split_indices(
        self, train: int | float | None, valid: int | float, test: int | float | None = None, seed: int = 0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Disjoint random train/validation/test frame indices, reproducible from ``seed``.

        Sizes are frame counts (ints) or fractions of the data set (floats in
        (0, 1]). ``test=None`` takes all frames left over; ``train=None`` takes
        all frames but the validation and test ones (then ``test`` must be
        given), so a data set that grows keeps the same call. The permutation is
        ``numpy.random.default_rng(seed).permutation(len(self))``; the three
        parts are consecutive slices of it, so the same seed and sizes always
        give the same split.

        Raises:
            DataError: sizes that are negative or add up to more than the data set.
        """
        n = len(self)

        def count(size: int | float | None, name: str, left: int) -> int:
            if size is None:
                return left
            if isinstance(size, float):
                if not 0.0 < size <= 1.0:
                    raise DataError(f"{name} fraction {size} must be in (0, 1] (give an int for a frame count)")
                return int(round(size * n))
            if int(size) < 0:
                raise DataError(f"{name} size {size} is negative")
            return int(size)

        if train is None and test is None:
            raise DataError("a split with all the rest for training needs a test size (give test as well)")
        n_valid = count(valid, "valid", n)
        if train is None:
            n_test = count(test, "test", n)
            n_train = n - n_valid - n_test
        else:
            n_train = count(train, "train", n)
            n_test = count(test, "test", n - n_train - n_valid)
        if min(n_train, n_test) < 0 or n_train + n_valid + n_test > n:
            raise DataError(
                f"{self.source}: split sizes train={n_train} + valid={n_valid} + test={max(n_test, 0)} "
                f"exceed the {n} frames of the data set"
            )
        order = np.random.default_rng(seed).permutation(n)
        return (
            np.sort(order[:n_train]),
            np.sort(order[n_train:n_train + n_valid]),
            np.sort(order[n_train + n_valid:n_train + n_valid + n_test]),
        )

    def split(
        self, train: int | float | None, valid: int | float, test: int | float | None = None, seed: int = 0
    ) -> tuple[MolecularDataset, MolecularDataset, MolecularDataset]:
        """Disjoint train/validation/test data sets (see :meth:`split_indices`).

        Each part's ``metadata["split"]`` records ``part``, ``seed`` and its
        ``indices`` into this data set.
        """
        parts = []
        for name, indices in zip(("train", "valid", "test"), self.split_indices(train, valid, test, seed), strict=True):
            part = self.subset(indices)
            part.metadata["split"] = {"part": name, "seed": int(seed), "indices": indices.tolist()}
            parts.append(part)
        return tuple(parts)  # type: ignore[return-value]

    @staticmethod
    def concatenate(datasets: Iterable[MolecularDataset], energy_unit: str | None = None) -> MolecularDataset:
        """One data set with the frames of all ``datasets`` in order.

        Energies are converted to ``energy_unit`` (default: the first data
        set's unit). Metadata are those of the first data set, with
        ``metadata["concatenated_from"]`` listing every part's metadata.
        """
        datasets = list(datasets)
        if not datasets:
            raise DataError("concatenate needs at least one data set")
        unit = normalise_energy_unit(energy_unit or datasets[0].energy_unit)
        converted = [d.converted(unit) for d in datasets]
        numbers, positions, energies, forces = [], [], [], []
        for d in converted:
            for frame in d:
                numbers.append(frame.atomic_numbers)
                positions.append(frame.positions)
                energies.append(frame.energy)
                forces.append(frame.forces)
        metadata = copy.deepcopy(datasets[0].metadata)
        metadata["concatenated_from"] = [copy.deepcopy(d.metadata) for d in datasets]
        return MolecularDataset(numbers, positions, np.array(energies), forces, unit, metadata)

    def converted(self, energy_unit: str) -> MolecularDataset:
        """A copy with energies and forces in ``energy_unit`` (forces per Å).

        The factor is :func:`so3krates_openmm.units.energy_conversion`; the same
        unit returns an identical copy.
        """
        unit = normalise_energy_unit(energy_unit)
        factor = 1.0 if unit == self.energy_unit else energy_conversion(self.energy_unit, unit)
        new = copy.copy(self)
        new.metadata = copy.deepcopy(self.metadata)
        new.energy_unit = unit
        new.atomic_numbers_flat = self.atomic_numbers_flat.copy()
        new.positions_flat = self.positions_flat.copy()
        new.energies = self.energies * factor
        new.forces_flat = self.forces_flat * factor
        new.n_atoms = self.n_atoms.copy()
        new.offsets = self.offsets.copy()
        return new

    def sampling_temperatures(self) -> np.ndarray:
        """The bath temperature (K) at which each frame was sampled, from the metadata of ``so3krates-data
        generate`` (blocks of ``frames_per_temperature`` frames per temperature, also through ``merge`` and
        :meth:`concatenate`); NaN for frames of unknown temperature (e.g. labelled MD frames).

        Raises:
            DataError: the metadata's frame counts do not add up to the data set's frames.
        """
        temperatures: list[float] = []
        for metadata in self.metadata.get("concatenated_from") or [self.metadata]:
            for part in metadata.get("parts") or [metadata]:
                settings = part.get("settings") or {}
                listed = settings.get("temperatures_K") or []
                per_temperature = settings.get("frames_per_temperature")
                count = part.get("frames", len(listed) * (per_temperature or 0))
                if listed and per_temperature and count == len(listed) * per_temperature:
                    temperatures += [float(t) for t in listed for _ in range(per_temperature)]
                else:
                    temperatures += [math.nan] * int(count or 0)
        if len(temperatures) != len(self):
            raise DataError(f"{self.source}: the metadata describe {len(temperatures)} frames but the data set has "
                            f"{len(self)}: the sampling temperatures of its frames are unknown")
        return np.asarray(temperatures, dtype=np.float64)

    def summary(self) -> str:
        """A few human-readable lines: frames, molecules, elements, units and energy range."""
        from so3krates_openmm.elements import formula

        formulas = sorted({formula(frame.atomic_numbers.tolist()) for frame in self})
        if len(self):
            force_norms = np.linalg.norm(self.forces_flat, axis=1)
            energy_line = (f"energies {self.energies.min():.6g} .. {self.energies.max():.6g} {self.energy_unit}; "
                           f"mean |F| {force_norms.mean():.4g} {self.energy_unit}/Angstrom")
        else:
            energy_line = "no frames"
        lines = [
            f"{self.source}: {len(self)} frames, formula(s) {', '.join(formulas) or '-'}, "
            f"elements {self.elements.tolist()}",
            energy_line,
        ]
        for key in ("theory", "settings"):
            if key in self.metadata:
                lines.append(f"{key}: {self.metadata[key]}")
        for part in self.metadata.get("parts", []):
            settings = part.get("settings", {})
            head = f"part {part.get('file', '?')}: {part.get('frames', '?')} frames, "
            trajectory = part.get("inputs", {}).get("trajectory") if isinstance(part.get("inputs"), dict) else None
            if trajectory:  # labelled frames of an existing trajectory (so3krates-data label)
                times = part.get("frame_times_ps") or []
                span = f", {times[0]:g}-{times[-1]:g} ps" if times else ""
                lines.append(f"{head}labelled from {trajectory}{span}, stride {settings.get('stride', '?')}")
            else:
                lines.append(f"{head}T = {settings.get('temperatures_K', '?')} K, seed {settings.get('seed', '?')}, "
                             f"stride {settings.get('stride', '?')}, timestep {settings.get('timestep_fs', '?')} fs")
        return "\n".join(lines)
