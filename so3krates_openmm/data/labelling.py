"""GFN2-xTB energies and forces for the frames of an existing trajectory (``so3krates-data label``).

Use case: label frames of a model-driven MD run to see how the model does
where MD takes it, and add them to the training set (``so3krates-data merge``).

Input (:func:`read_frames`): a DCD (OpenMM's, read by
:func:`so3krates_openmm.data.trajectory.read_dcd`) together with a structure
file (PDB/XYZ) that gives the elements in the DCD's atom order; or an
extended/multi-frame XYZ; or a (multi-model) PDB such as the minima
``so3krates-md-minima`` writes; or an ``.npz`` with positions ``R`` (M, N, 3) and
atomic numbers ``z`` (N,) (an MD22-layout data set works; ``r_unit`` is
honoured; without ``z`` the structure file gives the elements).

Frame selection (:class:`LabelSettings`): drop the first ``skip`` frames (or
the frames of the first ``skip_ps`` ps when the frame times are known, i.e.
for DCD input), then take every ``stride``-th frame, at most ``max_frames``.
The output records the original index of every labelled frame
(``metadata["frame_indices"]``) and, for DCD input, its time.

The reference is the calculator of the generator
(:func:`so3krates_openmm.data.reference.make_calculator`) with every SCF
started from scratch, so each label depends only on the frame's positions.
Energies are written in kcal/mol and forces in kcal/(mol Å) (MD22 layout
through :func:`~so3krates_openmm.data.formats.save_npz`) unless asked otherwise.

Resumability: every ``checkpoint_every`` frames (and on Ctrl-C or SIGTERM)
the frames labelled so far are written atomically to
``<output stem>.partial.npz``, an MD22-layout file that records the run's
settings and a fingerprint of the selected input frames. The same command
again continues after the last saved frame (no frame redone or duplicated)
and gives the file an uninterrupted run gives; other settings or other input
frames are refused with a message naming what differs. A frame that xTB
cannot compute (atoms on top of each other, SCF failure) stops the run with a
:class:`~so3krates_openmm.data.dataset.DataError` naming the frame, after
saving the frames before it.

With workers (``workers`` > 1 or a Dask ``scheduler`` address: ``--workers``,
``--scheduler``) the frames are labelled as independent Dask tasks
(:func:`so3krates_openmm.tasks.run_tasks`) and each one is appended to
``<output stem>.labels.jsonl`` as it arrives: the same command again redoes no
labelled frame (the frames of a partial file count too), and the output is
the one a run without workers writes.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from so3krates_openmm.data.dataset import DataError, MolecularDataset
from so3krates_openmm.data.formats import load_npz, save_npz
from so3krates_openmm.data.reference import (
    SamplingSettings,
    _Interrupted,
    _settings_differences,
    check_output,
    interrupt_on_sigterm,
    make_calculator,
    output_energy_unit,
    partial_path_for,
    restore_sigterm,
    theory_label,
    write_finished,
)
from so3krates_openmm.data.xtb import single_point_task, xtb_settings
from so3krates_openmm.elements import atomic_number, formula
from so3krates_openmm.runtime import preloaded_openblas
from so3krates_openmm.tasks import JournalMismatch, run_tasks
from so3krates_openmm.units import (
    ANGSTROM_PER_NM,
    energy_conversion,
    length_conversion,
    normalise_length_unit,
)

#: Version of the resume record in a label partial file.
LABEL_FORMAT_VERSION = 1
#: GFN1/GFN2-xTB are parametrised for H to Rn.
XTB_MAX_ATOMIC_NUMBER = 86


@dataclass
class LabelSettings:
    """Everything that determines the labelled frames (checked on resume).

    Attributes:
        method: tblite method, ``"GFN2-xTB"`` (or ``"GFN1-xTB"``, ``"IPEA1-xTB"``).
        charge: total charge in e.
        multiplicity: spin multiplicity (1 = closed shell).
        electronic_temperature_K: xTB Fermi smearing temperature in K.
        accuracy: xTB numerical accuracy (1.0 is tblite's default).
        stride: label every ``stride``-th frame (after the skipped ones).
        skip: frames dropped at the start.
        skip_ps: ps dropped at the start (input with frame times only; excludes ``skip``).
        max_frames: label at most this many frames (``None``: all selected).
        checkpoint_every: frames between partial-file writes (does not change the results).
        float32: store positions and forces as float32 (energies stay float64).
    """

    method: str = "GFN2-xTB"
    charge: int = 0
    multiplicity: int = 1
    electronic_temperature_K: float = 300.0
    accuracy: float = 1.0
    stride: int = 1
    skip: int = 0
    skip_ps: float | None = None
    max_frames: int | None = None
    checkpoint_every: int = 10
    float32: bool = False

    def __post_init__(self) -> None:
        problems = []
        for name in ("stride", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if int(self.skip) < 0:
            problems.append(f"skip must be >= 0, got {self.skip}")
        if self.skip_ps is not None and not self.skip_ps >= 0:
            problems.append(f"skip_ps must be >= 0, got {self.skip_ps}")
        if self.skip_ps is not None and int(self.skip):
            problems.append("give skip (frames) or skip_ps (ps), not both")
        if self.max_frames is not None and int(self.max_frames) < 1:
            problems.append(f"max_frames must be >= 1, got {self.max_frames}")
        if problems:
            raise ValueError("invalid label settings: " + "; ".join(problems))
        for name in ("charge", "multiplicity", "stride", "skip", "checkpoint_every"):
            setattr(self, name, int(getattr(self, name)))
        for name in ("electronic_temperature_K", "accuracy"):
            setattr(self, name, float(getattr(self, name)))
        self.skip_ps = None if self.skip_ps is None else float(self.skip_ps)
        self.max_frames = None if self.max_frames is None else int(self.max_frames)
        self.float32 = bool(self.float32)
        self.sampling_settings()  # validates method, multiplicity, ...

    def sampling_settings(self) -> SamplingSettings:
        """The generator's settings for the same xTB calculator, every SCF from scratch (``scf_guess="fresh"``)."""
        return xtb_settings(self.method, self.charge, self.multiplicity, self.electronic_temperature_K, self.accuracy)


@dataclass
class TrajectoryFrames:
    """Frames to label: atomic numbers (N,), positions (M, N, 3) in Å, frame times in ps if known."""

    atomic_numbers: np.ndarray
    positions: np.ndarray
    times_ps: np.ndarray | None
    source: str

    @property
    def n_frames(self) -> int:
        return int(self.positions.shape[0])


def _structure_numbers(path: str | Path) -> np.ndarray:
    from so3krates_openmm.data.structures import read_structure

    try:
        return read_structure(path).atomic_numbers
    except ValueError as error:
        raise DataError(f"--structure: {error}") from error


def _checked_numbers(numbers: np.ndarray, source: str) -> np.ndarray:
    numbers = np.asarray(numbers).reshape(-1)
    if numbers.dtype.kind == "f" and np.all(numbers == np.round(numbers)):
        numbers = numbers.astype(np.int64)
    if numbers.dtype.kind not in "iu" or len(numbers) == 0:
        raise DataError(f"{source}: atomic numbers must be a non-empty list of integers")
    for z in numbers:
        try:
            atomic_number(int(z))
        except ValueError as error:
            raise DataError(f"{source}: unknown element: {error}") from None
        if int(z) > XTB_MAX_ATOMIC_NUMBER:
            raise DataError(f"{source}: element Z={int(z)} is beyond Rn (Z={XTB_MAX_ATOMIC_NUMBER}), the last "
                            "element xTB is parametrised for")
    return numbers.astype(np.int64)


def read_frames(path: str | Path, structure: str | Path | None = None) -> TrajectoryFrames:
    """The frames of a DCD (with ``structure`` for the elements), an (extended) XYZ or an ``.npz`` with ``R``/``z``.

    Raises:
        FileNotFoundError: ``path`` or ``structure`` does not exist.
        DataError: unreadable file, atom counts or elements that disagree, unknown elements.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trajectory {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    numbers_from_structure = _structure_numbers(structure) if structure is not None else None
    times = None
    if suffix == ".dcd":
        from so3krates_openmm.data.trajectory import read_dcd

        if numbers_from_structure is None:
            raise DataError(f"{path}: a DCD file holds no elements; give --structure (PDB or XYZ with the same "
                            "atoms in the same order)")
        try:
            trajectory = read_dcd(path)
        except ValueError as error:
            raise DataError(str(error)) from error
        positions, numbers, times = trajectory.positions_angstrom, numbers_from_structure, trajectory.times_ps
    elif suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                contents = {key: archive[key] for key in archive.files}
        except Exception as error:  # zipfile/numpy raise several types for a bad archive
            raise DataError(f"{path}: not a readable .npz archive ({error})") from error
        if "R" not in contents:
            raise DataError(f"{path}: no positions 'R' (M, N, 3) in the archive (found {sorted(contents)})")
        positions = contents["R"]
        if "r_unit" in contents:
            try:
                unit = normalise_length_unit(str(np.asarray(contents["r_unit"]).item()))
            except ValueError as error:
                raise DataError(f"{path}: {error}") from error
            positions = positions * length_conversion(unit, "Angstrom")
        if "z" in contents:
            numbers = contents["z"]
        elif numbers_from_structure is not None:
            numbers = numbers_from_structure
        else:
            raise DataError(f"{path}: no atomic numbers 'z' in the archive; give --structure for the elements")
    elif suffix == ".pdb":
        # mdtraj, not ASE: ASE reads the CONECT/END records after the last MODEL as one more (empty) frame
        import mdtraj

        try:
            trajectory = mdtraj.load_pdb(str(path), standard_names=False)
        except Exception as error:  # mdtraj raises many types for unreadable input
            raise DataError(f"{path}: mdtraj could not read it ({type(error).__name__}: {error})") from error
        if trajectory.n_frames == 0 or trajectory.n_atoms == 0:
            raise DataError(f"{path}: contains no atoms")
        if any(atom.element is None or atom.element.atomic_number < 1 for atom in trajectory.topology.atoms):
            raise DataError(f"{path}: an atom has no element (columns 77-78 of its ATOM/HETATM record)")
        numbers = np.array([atom.element.atomic_number for atom in trajectory.topology.atoms])
        positions = trajectory.xyz.astype(np.float64) * ANGSTROM_PER_NM
    else:
        from ase.io import read

        try:
            images = read(str(path), index=":")
        except Exception as error:  # ASE raises many types for unreadable input
            raise DataError(f"{path}: ASE could not read it ({type(error).__name__}: {error})") from error
        if not images:
            raise DataError(f"{path}: contains no frames")
        numbers = images[0].numbers
        for i, atoms in enumerate(images):
            if not np.array_equal(atoms.numbers, numbers):
                raise DataError(f"{path}: frame {i} has other atoms than frame 0; label one molecule per file")
        positions = np.stack([atoms.positions for atoms in images])
    numbers = _checked_numbers(numbers, str(path))
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim == 3 and numbers_from_structure is not None and positions.shape[1] != len(numbers_from_structure):
        raise DataError(f"{path} has {positions.shape[1]} atoms per frame but {structure} has "
                        f"{len(numbers_from_structure)}: the structure must hold the trajectory's atoms in order")
    if positions.ndim != 3 or positions.shape[1:] != (len(numbers), 3):
        raise DataError(f"{path}: positions have shape {positions.shape}, expected (M, {len(numbers)}, 3) for "
                        f"{len(numbers)} atoms")
    if numbers_from_structure is not None:
        if len(numbers_from_structure) != len(numbers):
            raise DataError(f"{path} has {len(numbers)} atoms per frame but {structure} has "
                            f"{len(numbers_from_structure)}: the structure must hold the trajectory's atoms in order")
        if not np.array_equal(numbers_from_structure, numbers):
            raise DataError(f"{path}: its elements differ from those of {structure} "
                            f"({formula(numbers.tolist())} vs {formula(numbers_from_structure.tolist())} "
                            "or another order)")
    return TrajectoryFrames(numbers, positions, times, str(path))


def select_frames(frames: TrajectoryFrames, settings: LabelSettings) -> np.ndarray:
    """Indices of the frames to label (skip, then stride, then at most ``max_frames``).

    Raises:
        DataError: ``skip_ps`` without frame times, no frame left, or NaN/infinite positions in a selected frame.
    """
    start = settings.skip
    if settings.skip_ps is not None:
        if frames.times_ps is None:
            raise DataError(f"{frames.source}: the frame times are unknown (only DCD files record them); "
                            "use --skip (frames) instead of --skip-ps")
        times = frames.times_ps
        start = int(np.searchsorted(times, times[0] + settings.skip_ps - 1e-9)) if len(times) else 0
    indices = np.arange(frames.n_frames)[start::settings.stride][: settings.max_frames]
    if len(indices) == 0:
        raise DataError(f"{frames.source}: no frame to label: {frames.n_frames} frames, skipping "
                        f"{start} of them with stride {settings.stride}")
    finite = np.isfinite(frames.positions[indices]).all(axis=(1, 2))
    if not finite.all():
        bad = int(indices[np.flatnonzero(~finite)[0]])
        raise DataError(f"{frames.source}: frame {bad} has NaN or infinite positions (did the simulation blow up?); "
                        f"label the frames before it, e.g. with --max-frames")
    return indices


def frames_fingerprint(frames: TrajectoryFrames, indices: np.ndarray) -> str:
    """SHA-256 of the atomic numbers and the selected frames' positions (float64 bytes)."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(frames.atomic_numbers, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(frames.positions[indices], dtype=np.float64).tobytes())
    return digest.hexdigest()


def _run_settings(settings: LabelSettings, frames: TrajectoryFrames, indices: np.ndarray, energy_unit: str) -> dict:
    record = asdict(settings)
    record.pop("checkpoint_every")  # when the partial file is written does not change the labels
    record.update(energy_unit=energy_unit, n_atoms=len(frames.atomic_numbers),
                  formula=formula(frames.atomic_numbers.tolist()), frames=len(indices),
                  frames_sha256=frames_fingerprint(frames, indices))
    return record


def label_journal_path(output: str | Path) -> Path:
    """The task journal of a labelling run with workers: ``<dir>/<stem>.labels.jsonl``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.labels.jsonl")


def _label_with_tasks(
    frames: TrajectoryFrames,
    indices: np.ndarray,
    settings: LabelSettings,
    run_settings: dict,
    journal: Path,
    *,
    workers: int,
    scheduler: str | None,
    progress: bool,
) -> dict[str, dict]:
    """xTB labels of the frames ``indices`` as Dask tasks (:func:`so3krates_openmm.tasks.run_tasks`), by frame index.

    Every labelled frame is appended to ``journal`` as it arrives; a killed run resumes without redoing one.

    Raises:
        DataError: a frame xTB cannot compute (named), or a journal of other settings or frames.
    """
    tasks = {str(int(index)): {"settings": settings.sampling_settings(), "numbers": frames.atomic_numbers.tolist(),
                               "positions_angstrom": frames.positions[index], "name": f"frame {int(index)}"}
             for index in indices}
    header = {"format": f"so3krates-data label tasks/{LABEL_FORMAT_VERSION}", "settings": run_settings}
    try:
        return run_tasks(single_point_task, tasks, journal, header=header, scheduler=scheduler, workers=workers,
                         progress=progress, description=f"{run_settings['formula']} {settings.method}")
    except JournalMismatch as error:
        raise DataError(f"{error}; or delete it to label these frames afresh") from None
    except RuntimeError as error:  # tblite failed on a frame (single_point_task names it)
        raise DataError(f"{frames.source}: {error}; the frames labelled so far are in {journal}. Label the frames "
                        "before it (--max-frames) or skip past it (--skip)") from None


def label_frames(
    frames: TrajectoryFrames,
    output: str | Path,
    settings: LabelSettings | None = None,
    energy_unit: str | None = None,
    restart: bool = False,
    stop_after_frames: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    inputs: dict | None = None,
    workers: int = 1,
    scheduler: str | None = None,
) -> MolecularDataset | None:
    """Label the selected frames of ``frames`` with xTB energies and forces and write them to ``output``.

    Args:
        frames: from :func:`read_frames`.
        output: ``.npz`` (MD22 layout) or ``.xyz``/``.extxyz``.
        settings: the xTB method and the frame selection (default :class:`LabelSettings`).
        energy_unit: unit of the written energies (default kcal/mol for ``.npz``, eV for extended XYZ).
        restart: delete an existing partial file (and task journal) and start afresh.
        stop_after_frames: stop at the first partial-file write after at least this many new frames.
        progress: show a tqdm progress bar.
        log: where progress messages go.
        inputs: file names recorded in the output's metadata (e.g. trajectory and structure).
        workers: with more than 1, the frames are labelled as Dask tasks on a local cluster of that many
            single-threaded processes (see :func:`_label_with_tasks`).
        scheduler: address of a Dask scheduler whose workers label the frames (instead of a local cluster).

    Returns:
        The labelled data set (also written to ``output``), or ``None`` when stopped early
        (the partial file then holds the frames done).

    Raises:
        DataError: settings or input frames that differ from the partial file's, an existing output
            with other settings, bad frames (see :func:`select_frames`).
    """
    from ase import Atoms

    settings = settings or LabelSettings()
    output = Path(output)
    energy_unit = output_energy_unit(output, energy_unit)
    indices = select_frames(frames, settings)
    run_settings = _run_settings(settings, frames, indices, energy_unit)
    partial = partial_path_for(output)
    metadata = {"theory": theory_label(settings.method), "settings": run_settings, "name": Path(frames.source).stem,
                "inputs": inputs or {"trajectory": frames.source}}
    finished = check_output(output, run_settings, energy_unit, restart, log)
    if finished is not None:
        return finished

    journal = label_journal_path(output)
    if restart and journal.exists():
        journal.unlink()
        log(f"deleted {journal} (--restart)")
    distributed = workers > 1 or scheduler is not None or journal.exists()
    if distributed and stop_after_frames is not None:
        raise ValueError("stop_after_frames works with the labeller in this process only (workers=1, no scheduler"
                         + (f", no task journal {journal} of an earlier run with workers" if journal.exists() else "")
                         + ")")
    labels: list[tuple[float, np.ndarray]] = []
    sessions, compute_seconds = 1, 0.0
    if partial.exists():
        previous = load_npz(partial)
        if previous.metadata.get("label_format_version") != LABEL_FORMAT_VERSION:
            raise DataError(f"{partial}: not a partial file of `so3krates-data label` (another run's, e.g. generate?); "
                            "choose another output, or --restart to discard it")
        differences = _settings_differences(previous.metadata.get("settings", {}), run_settings)
        if differences:
            raise DataError(f"{partial}: the settings of this run differ from the partial run's: "
                            + "; ".join(differences) + ". Use the same input and settings to continue it, "
                            "or --restart to discard the partial file.")
        labels = [(float(e), f) for e, f in zip(previous.energies, previous.stacked()[3], strict=True)]
        sessions = int(previous.metadata.get("timing", {}).get("sessions", 1)) + 1
        compute_seconds = float(previous.metadata.get("timing", {}).get("compute_seconds", 0.0))
        log(f"resuming from {partial}: {len(labels)} of {len(indices)} frames labelled")

    dtype = np.float32 if settings.float32 else np.float64

    def dataset(count: int, extra: dict) -> MolecularDataset:
        chosen = indices[:count]
        record = dict(metadata, frame_indices=chosen.tolist(), **extra)
        if frames.times_ps is not None:
            record["frame_times_ps"] = [round(float(t), 6) for t in frames.times_ps[chosen]]
        record["timing"] = {"compute_seconds": round(compute_seconds, 2), "sessions": sessions,
                            "openblas_preload": preloaded_openblas()}
        return MolecularDataset(
            frames.atomic_numbers, frames.positions[chosen].astype(dtype).reshape(count, -1, 3),
            np.array([e for e, _ in labels[:count]], dtype=np.float64),
            np.array([f for _, f in labels[:count]], dtype=np.float64).reshape(count, -1, 3),
            energy_unit=energy_unit, metadata=record,
        )

    def checkpoint() -> None:
        save_npz(dataset(len(labels), {"label_format_version": LABEL_FORMAT_VERSION,
                                       "source": "so3krates-data label (partial: run not finished)"}),
                 partial, float32=settings.float32)

    previous_handler = interrupt_on_sigterm()
    to_unit = energy_conversion("eV", energy_unit)
    new_frames = 0
    stopped = False
    bar = None
    try:
        if distributed:
            results = _label_with_tasks(frames, indices[len(labels):], settings, run_settings, journal,
                                        workers=workers, scheduler=scheduler, progress=progress)
            for index in indices[len(labels):]:
                result = results[str(int(index))]
                labels.append((result["energy_eV"] * to_unit,
                               (np.asarray(result["forces_eV_per_angstrom"]) * to_unit).astype(dtype)))
                compute_seconds += result["seconds"]
                new_frames += 1
        else:
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=len(indices), initial=len(labels), unit="frame", dynamic_ncols=True,
                           file=sys.stderr, desc=f"{run_settings['formula']} {settings.method}")
            atoms = Atoms(numbers=frames.atomic_numbers, positions=frames.positions[indices[0]])
            atoms.calc = make_calculator(settings.sampling_settings())
            while len(labels) < len(indices):
                started = time.perf_counter()
                atoms.set_positions(frames.positions[indices[len(labels)]])
                try:
                    energy = float(atoms.get_potential_energy()) * to_unit
                    forces = (atoms.get_forces() * to_unit).astype(dtype)
                except RuntimeError as error:  # ASE's CalculatorError from tblite: SCF failure, atoms too close
                    if labels:
                        checkpoint()
                    raise DataError(
                        f"{frames.source}: {settings.method} failed on frame {int(indices[len(labels)])} ({error}); "
                        f"the {len(labels)} frames before it are in {partial}. Label the frames before it "
                        "(--max-frames) or skip past it (--skip)") from None
                labels.append((energy, forces))  # one append: an interruption never leaves half a frame
                compute_seconds += time.perf_counter() - started
                new_frames += 1
                if bar is not None:
                    bar.update(1)
                if len(labels) % settings.checkpoint_every == 0 and len(labels) < len(indices):
                    checkpoint()
                    if stop_after_frames is not None and new_frames >= stop_after_frames:
                        stopped = True
                        log(f"stopped after {new_frames} new frames; {len(labels)}/{len(indices)} frames in {partial}")
                        break
    except (KeyboardInterrupt, _Interrupted):
        stopped = True
        also = f" (and the frames after them in {journal})" if distributed and journal.exists() else ""
        if labels:
            checkpoint()
            log(f"interrupted: {len(labels)} of {len(indices)} frames are in {partial}{also}; run the same command "
                "again to continue")
        elif also:
            log(f"interrupted: the frames labelled so far are in {journal}; run the same command again to continue")
        else:
            log("interrupted before the first frame was labelled; nothing to resume")
    finally:
        if bar is not None:
            bar.close()
        restore_sigterm(previous_handler)
    if stopped:
        return None

    result = dataset(len(labels), {"source": "so3krates-data label"})
    write_finished(result, output, settings.float32, energy_unit)
    journal.unlink(missing_ok=True)
    log(f"wrote {output}: {len(result)} frames of {frames.source} labelled with {settings.method} "
        f"({compute_seconds:.0f} s, {1000 * compute_seconds / max(new_frames, 1):.0f} ms per frame this session)")
    return result
