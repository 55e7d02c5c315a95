"""Offline reference data: Langevin MD sampling with GFN2-xTB (tblite) as the reference.

The reference method is GFN2-xTB (semi-empirical tight binding with D4
dispersion) through ``tblite.ase.TBLite``, not the DFT of MD22: models trained
on these data are compared with each other, not with the paper's tables.

Sampling protocol (:func:`generate_reference_data`): ASE Langevin dynamics
from a starting structure. For each temperature in ``temperatures_K``, in
order and continuing the same trajectory: ``equilibration_steps`` steps
without recording, then ``frames_per_temperature`` frames, one every
``stride`` steps. Frames are therefore in blocks of ``frames_per_temperature``
per temperature. Energies are written in kcal/mol and forces in kcal/(mol Å)
(MD22 convention) unless asked otherwise.

Resumability: every ``checkpoint_every`` frames the frames so far and the MD
state (positions, momenta, the random generator's state, where in the
schedule the run is) are written atomically
(:func:`~so3krates_openmm.files.write_atomically`) to ``<output stem>.partial.npz`` next to the output. A new
run with the same output continues from the last checkpoint after checking
that the settings match (a kill loses at most ``checkpoint_every`` frames of
work, never frames already saved, and never duplicates one). The xTB SCF
normally starts from the previous step's wavefunction; at every checkpoint
frame a fresh calculator recomputes the forces from scratch, exactly as a
resumed run does, so a resumed run reproduces the frames of an uninterrupted
run bit for bit (with one OpenMP thread). The partial file is itself an
MD22-layout ``.npz`` that :func:`~so3krates_openmm.data.formats.load_npz` reads.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from so3krates_openmm.data.dataset import DataError, MolecularDataset
from so3krates_openmm.data.formats import load_npz, save_extxyz, save_npz, write_npz
from so3krates_openmm.data.structures import Structure, read_structure
from so3krates_openmm.elements import formula
from so3krates_openmm.runtime import preloaded_openblas
from so3krates_openmm.units import energy_conversion, normalise_energy_unit

PARTIAL_FORMAT_VERSION = 1


@dataclass
class SamplingSettings:
    """Everything that determines the sampled frames (checked on resume).

    Attributes:
        temperatures_K: Langevin temperatures in K, sampled in this order.
        frames_per_temperature: frames recorded at each temperature.
        timestep_fs: MD time step in fs.
        stride: MD steps between recorded frames.
        equilibration_steps: steps run at each temperature before recording.
        friction_per_ps: Langevin friction in 1/ps.
        seed: seeds the initial Maxwell-Boltzmann velocities and the Langevin noise.
        method: tblite method, ``"GFN2-xTB"`` (or ``"GFN1-xTB"``).
        charge: total charge in e.
        multiplicity: spin multiplicity (1 = closed shell).
        electronic_temperature_K: xTB Fermi smearing temperature in K.
        accuracy: xTB numerical accuracy (1.0 is tblite's default).
        checkpoint_every: frames between partial-file writes.
        float32: store positions and forces as float32 (energies stay float64).
        scf_guess: ``"previous"``: each SCF starts from the previous step's
            wavefunction (about 2x faster for 148 atoms), except at checkpoint
            frames, where a fresh calculator starts from scratch, as a resumed
            run does; ``"fresh"``: every call starts from scratch.
    """

    temperatures_K: list[float]
    frames_per_temperature: int
    timestep_fs: float = 0.5
    stride: int = 10
    equilibration_steps: int = 200
    friction_per_ps: float = 10.0
    seed: int = 0
    method: str = "GFN2-xTB"
    charge: int = 0
    multiplicity: int = 1
    electronic_temperature_K: float = 300.0
    accuracy: float = 1.0
    checkpoint_every: int = 10
    float32: bool = False
    scf_guess: str = "previous"

    def __post_init__(self) -> None:
        self.temperatures_K = [float(t) for t in self.temperatures_K]
        problems = []
        if not self.temperatures_K or any(t <= 0 for t in self.temperatures_K):
            problems.append(f"temperatures_K must be positive, got {self.temperatures_K}")
        for name in ("frames_per_temperature", "stride", "checkpoint_every", "multiplicity"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if int(self.equilibration_steps) < 0:
            problems.append(f"equilibration_steps must be >= 0, got {self.equilibration_steps}")
        if not self.timestep_fs > 0 or self.timestep_fs > 5:
            problems.append(f"timestep_fs must be in (0, 5] fs, got {self.timestep_fs}")
        if self.friction_per_ps < 0:
            problems.append(f"friction_per_ps must be >= 0, got {self.friction_per_ps}")
        if self.scf_guess not in ("previous", "fresh"):
            problems.append(f"scf_guess must be 'previous' or 'fresh', got {self.scf_guess!r}")
        if self.method not in ("GFN2-xTB", "GFN1-xTB", "IPEA1-xTB"):
            problems.append(f"method must be GFN2-xTB, GFN1-xTB or IPEA1-xTB, got {self.method!r}")
        if problems:
            raise ValueError("invalid sampling settings: " + "; ".join(problems))
        for name in ("frames_per_temperature", "stride", "equilibration_steps", "seed", "charge",
                     "multiplicity", "checkpoint_every"):
            setattr(self, name, int(getattr(self, name)))
        for name in ("timestep_fs", "friction_per_ps", "electronic_temperature_K", "accuracy"):
            setattr(self, name, float(getattr(self, name)))
        self.float32 = bool(self.float32)

    @property
    def total_frames(self) -> int:
        return self.frames_per_temperature * len(self.temperatures_K)

    @property
    def steps_per_temperature(self) -> int:
        return self.equilibration_steps + self.frames_per_temperature * self.stride

    @property
    def total_steps(self) -> int:
        return self.steps_per_temperature * len(self.temperatures_K)


@dataclass
class _RunState:
    """Where a sampling run is: schedule position, MD state, frames so far."""

    temperature_index: int
    step_in_temperature: int
    positions: np.ndarray
    momenta: np.ndarray
    rng_state: dict
    energies: list[float] = field(default_factory=list)
    positions_frames: list[np.ndarray] = field(default_factory=list)
    forces_frames: list[np.ndarray] = field(default_factory=list)
    compute_seconds: float = 0.0
    force_calls: int = 0
    sessions: int = 1


def structure_fingerprint(structure: Structure) -> str:
    """SHA-256 of the starting structure's atomic numbers and positions (float64 bytes)."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(structure.atomic_numbers, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(structure.positions_angstrom, dtype=np.float64).tobytes())
    return digest.hexdigest()


def partial_path_for(output: str | Path) -> Path:
    """The partial (resume) file that belongs to ``output``: ``<dir>/<stem>.partial.npz``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.partial.npz")


_COLD_START_CLASS = None


def _cold_start_class():
    """``TBLite`` subclass whose every calculation starts the SCF from the default guess.

    tblite reuses the previous wavefunction as the SCF guess; converged
    results then depend (at the 1e-5 level) on the history, and a resumed run
    would not reproduce an uninterrupted one. ``reset()`` with
    ``cache_api=False`` drops that guess, so each result depends only on the
    positions.
    """
    global _COLD_START_CLASS
    if _COLD_START_CLASS is None:
        from ase.calculators.calculator import all_changes
        from tblite.ase import TBLite

        class ColdStartTBLite(TBLite):
            def calculate(self, atoms=None, properties=None, system_changes=all_changes):
                self.reset()
                super().calculate(atoms, properties, all_changes)

        _COLD_START_CLASS = ColdStartTBLite
    return _COLD_START_CLASS


def make_calculator(settings: SamplingSettings):
    """A quiet tblite ASE calculator for ``settings``.

    With ``scf_guess="fresh"`` every calculation starts the SCF from scratch
    (results depend only on the positions); with ``"previous"`` tblite reuses
    the last wavefunction as the guess, and a new calculator starts from scratch.
    """
    parameters = dict(
        method=settings.method,
        charge=settings.charge,
        multiplicity=settings.multiplicity,
        electronic_temperature=settings.electronic_temperature_K,
        accuracy=settings.accuracy,
        verbosity=0,
    )
    if settings.scf_guess == "fresh":
        return _cold_start_class()(cache_api=False, **parameters)
    from tblite.ase import TBLite

    return TBLite(**parameters)


def theory_label(method: str = "GFN2-xTB") -> str:
    """Human-readable label of the reference method with package versions."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        tblite_version = version("tblite")
    except PackageNotFoundError:  # pragma: no cover - tblite is a dependency
        tblite_version = "unknown"
    return f"{method} (tblite {tblite_version} via ASE; semi-empirical reference, not DFT)"


def _settings_differences(a: dict, b: dict) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k)!r} (partial file) != {b.get(k)!r} (this run)" for k in keys if a.get(k) != b.get(k)]


def _run_settings(settings: SamplingSettings, structure: Structure) -> dict:
    record = asdict(settings)
    record["structure_sha256"] = structure_fingerprint(structure)
    record["n_atoms"] = structure.n_atoms
    record["formula"] = formula(structure.atomic_numbers.tolist())
    return record


def _write_partial(path: Path, structure: Structure, run_settings: dict, state: _RunState,
                   energy_unit: str) -> None:
    dtype = np.float32 if run_settings["float32"] else np.float64
    n = structure.n_atoms
    metadata = {
        "theory": theory_label(run_settings["method"]),
        "settings": run_settings,
        "source": "so3krates-data generate (partial: run not finished)",
        "name": structure.source,
    }
    arrays = {
        # MD22 layout: this file loads with load_npz as a data set of the frames so far.
        "R": np.asarray(state.positions_frames, dtype=dtype).reshape(-1, n, 3),
        "E": np.asarray(state.energies, dtype=np.float64),
        "F": np.asarray(state.forces_frames, dtype=dtype).reshape(-1, n, 3),
        "z": structure.atomic_numbers.astype(np.int64),
        "e_unit": np.array(energy_unit),
        "r_unit": np.array("Ang"),
        "theory": np.array(metadata["theory"]),
        "metadata_json": np.array(json.dumps(metadata, sort_keys=True)),
        # Resume state.
        "partial_format_version": np.array(PARTIAL_FORMAT_VERSION),
        "settings_json": np.array(json.dumps(run_settings, sort_keys=True)),
        "start_positions": structure.positions_angstrom.astype(np.float64),
        "md_positions": state.positions.astype(np.float64),
        "md_momenta": state.momenta.astype(np.float64),
        "rng_state_json": np.array(json.dumps(state.rng_state)),
        "temperature_index": np.array(state.temperature_index),
        "step_in_temperature": np.array(state.step_in_temperature),
        "compute_seconds": np.array(state.compute_seconds),
        "force_calls": np.array(state.force_calls),
        "sessions": np.array(state.sessions),
    }
    write_npz(path, arrays)


def read_partial(path: str | Path) -> tuple[dict, Structure, _RunState, str]:
    """Read a partial file: (run settings, starting structure, run state, energy unit).

    Raises:
        DataError: the file is not a partial file of this format.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            data = {key: archive[key] for key in archive.files}
    except Exception as error:
        raise DataError(f"{path}: cannot read the partial file ({error}); delete it to start afresh") from error
    if "partial_format_version" not in data:
        raise DataError(f"{path}: not a so3krates-data partial file (no resume state)")
    if int(data["partial_format_version"]) != PARTIAL_FORMAT_VERSION:
        raise DataError(f"{path}: partial file format {int(data['partial_format_version'])} is not "
                        f"{PARTIAL_FORMAT_VERSION}; finish it with the version that wrote it")
    run_settings = json.loads(str(data["settings_json"]))
    run_settings.setdefault("scf_guess", "fresh")  # partial files written before the option existed
    structure = Structure(data["z"], data["start_positions"], source=str(path))
    state = _RunState(
        temperature_index=int(data["temperature_index"]),
        step_in_temperature=int(data["step_in_temperature"]),
        positions=data["md_positions"].astype(np.float64),
        momenta=data["md_momenta"].astype(np.float64),
        rng_state=json.loads(str(data["rng_state_json"])),
        energies=[float(e) for e in data["E"]],
        positions_frames=[r for r in data["R"]],
        forces_frames=[f for f in data["F"]],
        compute_seconds=float(data["compute_seconds"]),
        force_calls=int(data["force_calls"]),
        sessions=int(data["sessions"]) + 1,
    )
    return run_settings, structure, state, str(data["e_unit"])


def settings_from_partial(path: str | Path) -> tuple[SamplingSettings, Structure]:
    """The sampling settings and starting structure recorded in a partial file (for ``--resume``)."""
    run_settings, structure, _, _ = read_partial(path)
    fields = {k: v for k, v in run_settings.items() if k in SamplingSettings.__dataclass_fields__}
    return SamplingSettings(**fields), structure


def resumed_settings(
    output: str | Path, overrides: dict[str, Any], structure: str | Path | None = None
) -> tuple[SamplingSettings, Structure]:
    """The settings and starting structure of the partial run of ``output``, for resuming it.

    ``overrides`` are sampling settings given anew (e.g. on the command line):
    each must equal the recorded one; ``structure``, if given, must be the
    recorded starting structure. Raises :class:`DataError` naming every conflict.
    """
    partial = partial_path_for(output)
    if not partial.exists():
        raise DataError(f"--resume: {partial} does not exist (nothing to resume)")
    settings, recorded_structure = settings_from_partial(partial)
    recorded = asdict(settings)
    unknown = sorted(set(overrides) - set(recorded))
    if unknown:
        raise DataError(f"unknown sampling settings {unknown}; known: {sorted(recorded)}")
    conflicts = [f"{key}={value!r} (partial file: {recorded[key]!r})" for key, value in overrides.items()
                 if recorded[key] != value
                 and not (key == "temperatures_K" and [float(t) for t in value] == recorded[key])]
    if conflicts:
        raise DataError(f"--resume: options differ from the partial run's settings: {', '.join(conflicts)}")
    if structure is not None and structure_fingerprint(read_structure(structure)) != structure_fingerprint(
            recorded_structure):
        raise DataError(f"--resume: {structure} is not the starting structure recorded in {partial}")
    return settings, recorded_structure


class _Interrupted(Exception):
    pass


def _on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
    raise _Interrupted()


def interrupt_on_sigterm() -> Any:
    """Make SIGTERM raise ``_Interrupted`` (as Ctrl-C raises ``KeyboardInterrupt``) so that a long run can save
    its work; returns the previous handler for :func:`restore_sigterm` (``None`` outside the main thread)."""
    if not hasattr(signal, "SIGTERM"):
        return None
    try:
        return signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not in the main thread
        return None


def restore_sigterm(previous_handler: Any) -> None:
    """Put back the handler :func:`interrupt_on_sigterm` replaced."""
    if previous_handler is not None:
        signal.signal(signal.SIGTERM, previous_handler)


def generate_reference_data(
    structure: Structure | str | Path,
    output: str | Path,
    settings: SamplingSettings,
    energy_unit: str | None = None,
    resume: bool | None = None,
    restart: bool = False,
    stop_after_frames: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> MolecularDataset | None:
    """Sample frames by Langevin MD and label them with GFN2-xTB energies and forces.

    Args:
        structure: starting structure (a :class:`Structure` or a PDB/XYZ file).
        output: ``.npz`` (MD22 layout) or ``.xyz``/``.extxyz`` (extended XYZ).
        settings: the sampling protocol.
        energy_unit: unit of the written energies (default kcal/mol for
            ``.npz``, eV for extended XYZ); forces are in this unit per Å.
        resume: ``None`` continues from an existing partial file when its
            settings match (else raises); ``True`` requires a partial file;
            ``False`` refuses to run when one exists.
        restart: delete an existing partial file and start afresh.
        stop_after_frames: stop at the first checkpoint (partial file written)
            after at least this many new frames in this call; ``None`` runs to the end.
        progress: show a tqdm progress bar.
        log: where to send progress messages.

    Returns:
        The finished data set (also written to ``output``), or ``None`` when
        stopped early by ``stop_after_frames`` or an interruption (the partial
        file then holds the work so far).

    Raises:
        DataError: settings differ from the partial file's, or a finished
            output with other settings already exists.
    """
    from ase import Atoms
    from ase import units as ase_units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    output = Path(output)
    energy_unit = output_energy_unit(output, energy_unit)
    if not isinstance(structure, Structure):
        structure = read_structure(structure)
    run_settings = _run_settings(settings, structure)
    partial = partial_path_for(output)
    finished = check_output(output, run_settings, energy_unit, restart, log)
    if finished is not None:
        return finished

    if partial.exists():
        if resume is False:
            raise DataError(f"{partial} exists: resume it (--resume) or delete it (--restart)")
        old_settings, old_structure, state, old_unit = read_partial(partial)
        differences = _settings_differences(old_settings, run_settings)
        if differences:
            raise DataError(f"{partial}: the settings of this run differ from the partial run's: "
                            + "; ".join(differences) + ". Use the same settings (or --resume alone), "
                            "or --restart to discard the partial file.")
        if old_unit != energy_unit:
            raise DataError(f"{partial}: holds energies in {old_unit}, this run asks for {energy_unit}")
        log(f"resuming from {partial}: {len(state.energies)} of {settings.total_frames} frames done, "
            "temperature "
            f"{settings.temperatures_K[min(state.temperature_index, len(settings.temperatures_K) - 1)]:g} K")
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = state.rng_state
    else:
        if resume is True:
            raise DataError(f"nothing to resume: {partial} does not exist")
        rng = np.random.default_rng(settings.seed)
        atoms0 = Atoms(numbers=structure.atomic_numbers, positions=structure.positions_angstrom)
        MaxwellBoltzmannDistribution(atoms0, temperature_K=settings.temperatures_K[0], rng=rng)
        Stationary(atoms0)
        state = _RunState(0, 0, atoms0.get_positions(), atoms0.get_momenta(), rng.bit_generator.state)

    atoms = Atoms(numbers=structure.atomic_numbers, positions=state.positions)
    atoms.set_momenta(state.momenta, apply_constraint=False)
    atoms.calc = make_calculator(settings)
    dynamics = Langevin(
        atoms,
        timestep=settings.timestep_fs * ase_units.fs,
        temperature_K=settings.temperatures_K[min(state.temperature_index, len(settings.temperatures_K) - 1)],
        friction=settings.friction_per_ps / (1000.0 * ase_units.fs),
        fixcm=False,
        rng=rng,
    )
    to_unit = energy_conversion("eV", energy_unit)
    dtype = np.float32 if settings.float32 else np.float64

    def checkpoint() -> None:
        _write_partial(partial, structure, run_settings, state, energy_unit)

    previous_handler = interrupt_on_sigterm()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=settings.total_frames, initial=len(state.energies), unit="frame",
                   desc=f"{formula(structure.atomic_numbers.tolist())} {settings.method}",
                   dynamic_ncols=True, file=sys.stderr)
    new_frames = 0
    stopped_early = False
    try:
        while state.temperature_index < len(settings.temperatures_K):
            temperature = settings.temperatures_K[state.temperature_index]
            dynamics.set_temperature(temperature_K=temperature)
            while state.step_in_temperature < settings.steps_per_temperature:
                started = time.perf_counter()
                dynamics.step()
                state.step_in_temperature += 1
                sampled = state.step_in_temperature - settings.equilibration_steps
                is_frame = sampled > 0 and sampled % settings.stride == 0
                is_checkpoint = is_frame and (len(state.energies) + 1) % settings.checkpoint_every == 0
                if is_checkpoint and settings.scf_guess == "previous":
                    # A resumed run starts from a fresh calculator here; so does this one
                    # (same positions, same SCF start), which keeps both runs identical.
                    atoms.calc = make_calculator(settings)
                    atoms.get_forces()
                    state.force_calls += 1
                state.compute_seconds += time.perf_counter() - started
                state.force_calls += 1
                if not is_frame:
                    continue
                state.energies.append(float(atoms.get_potential_energy()) * to_unit)
                state.positions_frames.append(atoms.get_positions().astype(dtype))
                state.forces_frames.append((atoms.get_forces() * to_unit).astype(dtype))
                if state.step_in_temperature == settings.steps_per_temperature:
                    state.temperature_index += 1
                    state.step_in_temperature = 0
                state.positions = atoms.get_positions()
                state.momenta = atoms.get_momenta()
                state.rng_state = rng.bit_generator.state
                new_frames += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(T=f"{temperature:g}K", E=f"{state.energies[-1]:.2f}",
                                    ms_per_call=f"{1000 * state.compute_seconds / max(state.force_calls, 1):.0f}")
                done = len(state.energies) == settings.total_frames
                if is_checkpoint and not done:
                    checkpoint()
                    if stop_after_frames is not None and new_frames >= stop_after_frames:
                        stopped_early = True
                        break
                if state.step_in_temperature == 0:
                    break
            if stopped_early:
                break
    except (KeyboardInterrupt, _Interrupted):
        if partial.exists():
            frames_saved = len(np.load(partial)["E"])
            log(f"interrupted: {frames_saved} frames (the last checkpoint) are in {partial}; run the same command "
                f"again (or `so3krates-data generate --resume -o {output}`) to continue")
        else:
            log("interrupted before the first checkpoint; nothing to resume")
        stopped_early = True
    finally:
        if bar is not None:
            bar.close()
        restore_sigterm(previous_handler)
    if stopped_early:
        if stop_after_frames is not None:
            log(f"stopped after {new_frames} new frames; {len(state.energies)}/{settings.total_frames} "
                f"frames in {partial}")
        return None

    ms_per_step = 1000.0 * state.compute_seconds / max(settings.total_steps, 1)
    metadata = {
        "theory": theory_label(settings.method),
        "settings": run_settings,
        "source": "so3krates-data generate",
        "name": Path(structure.source).stem,
        "frame_order": "blocks of frames_per_temperature frames per temperature, in the order of temperatures_K",
        "timing": {
            "md_steps": settings.total_steps,
            "force_calls": state.force_calls,
            "compute_seconds": round(state.compute_seconds, 2),
            "ms_per_step": round(ms_per_step, 2),
            "sessions": state.sessions,
            "openblas_preload": preloaded_openblas(),
        },
    }
    dataset = MolecularDataset(
        structure.atomic_numbers,
        np.asarray(state.positions_frames, dtype=np.float64).reshape(-1, structure.n_atoms, 3),
        np.asarray(state.energies),
        np.asarray(state.forces_frames, dtype=np.float64).reshape(-1, structure.n_atoms, 3),
        energy_unit=energy_unit,
        metadata=metadata,
    )
    write_finished(dataset, output, settings.float32, energy_unit)
    log(f"wrote {output}: {len(dataset)} frames, {settings.total_steps} MD steps, {state.force_calls} force calls, "
        f"{state.compute_seconds:.0f} s ({ms_per_step:.1f} ms per step)")
    return dataset


def output_energy_unit(output: Path, energy_unit: str | None) -> str:
    """The energy unit to write to ``output`` (default kcal/mol for ``.npz``, eV for extended XYZ).

    Raises:
        DataError: ``output`` is neither ``.npz`` nor ``.xyz``/``.extxyz``, or the unit is unknown.
    """
    suffix = output.suffix.lower()
    if suffix not in (".npz", ".xyz", ".extxyz"):
        raise DataError(f"{output}: output must end in .npz (MD22 layout) or .xyz/.extxyz (extended XYZ)")
    try:
        return normalise_energy_unit(energy_unit or ("kcal/mol" if suffix == ".npz" else "eV"))
    except ValueError as error:
        raise DataError(str(error)) from error


def check_output(output: Path, run_settings: dict, energy_unit: str, restart: bool,
                 log: Callable[[str], None]) -> MolecularDataset | None:
    """Before a resumable run: delete the partial file on ``restart``; return the finished data set when
    ``output`` is already complete with ``run_settings`` (nothing to do), else ``None`` (the run goes on).

    Raises:
        DataError: ``output`` exists (without a partial file) with other or unknown settings.
    """
    partial = partial_path_for(output)
    if restart and partial.exists():
        partial.unlink()
        log(f"deleted {partial} (--restart)")
    if not output.exists() or partial.exists():
        return None
    finished = _finished_settings(output)
    if finished == run_settings:
        log(f"{output} is already complete with these settings; nothing to do")
        return _load_output(output, energy_unit)
    detail = ""
    if finished is not None:
        detail = ": " + "; ".join(_settings_differences(finished, run_settings)).replace(
            "(partial file)", "(existing file)"
        )
    raise DataError(f"{output} already exists (written with other or unknown settings{detail}); "
                    "choose another output or delete it")


def write_finished(dataset: MolecularDataset, output: Path, float32: bool, energy_unit: str) -> None:
    """Write a finished run's frames to ``output`` (``.npz``: MD22 layout; else extended XYZ) and delete
    its partial file."""
    if output.suffix.lower() == ".npz":
        save_npz(dataset, output, float32=float32)
    else:
        save_extxyz(dataset, output, energy_unit=energy_unit)
    partial = partial_path_for(output)
    if partial.exists():
        partial.unlink()


def _finished_settings(output: Path) -> dict | None:
    """The run settings recorded in a finished output file, if any."""
    try:
        if output.suffix.lower() == ".npz":
            return load_npz(output).metadata.get("settings")
    except (DataError, OSError):
        return None
    return None


def _load_output(output: Path, energy_unit: str) -> MolecularDataset:
    from so3krates_openmm.data.formats import load_dataset

    return load_dataset(output).converted(energy_unit)
