"""OpenMM reporters of the MD protocols, all of them resumable.

Every file written here only ever grows by whole records (a CSV row, a DCD
frame, a velocity frame). ``checkpoint_record()`` flushes the file and returns
its size in bytes and records; ``truncate_output()`` cuts a file back to such a
record when a run is resumed, so a run killed at any moment and resumed from
its last checkpoint has no lost and no duplicated records.

Reports happen at steps that are multiples of the reporter's interval (as with
OpenMM's own reporters; step 0 is not reported).
"""

from __future__ import annotations

import os
import struct
import sys
import time
from pathlib import Path

import numpy as np
import openmm as mm
from openmm import app, unit

CSV_COLUMNS = (
    "step",
    "time_ps",
    "potential_energy_kJ/mol",
    "kinetic_energy_kJ/mol",
    "total_energy_kJ/mol",
    "temperature_K",
    "ns_per_day",
)

_KJ_PER_MOL = unit.kilojoule_per_mole
_BOLTZMANN_KJ_MOL_K = (unit.MOLAR_GAS_CONSTANT_R).value_in_unit(unit.kilojoule_per_mole / unit.kelvin)


def _next_report(simulation: app.Simulation, interval: int, include: list[str]) -> dict:
    steps = interval - simulation.currentStep % interval
    return {"steps": steps, "periodic": None, "include": include}


def degrees_of_freedom(system: mm.System) -> int:
    """Kinetic degrees of freedom: 3 per massive particle, minus constraints and removed COM motion."""
    dof = sum(3 for i in range(system.getNumParticles()) if system.getParticleMass(i) > 0 * unit.dalton)
    dof -= system.getNumConstraints()
    if any(isinstance(force, mm.CMMotionRemover) for force in system.getForces()):
        dof -= 3
    return max(dof, 1)


def _file_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


class OutputReplacedError(RuntimeError):
    """An output file was replaced or deleted by another program while the run was writing it."""


def _sync(handle, path: Path) -> None:
    """Flush ``handle`` to disk and check that ``path`` is still the file it writes.

    Another program that rewrites a run's output while the run goes on (``git
    stash`` or ``git checkout`` of committed run files, an editor, a copy)
    leaves the run writing to a file that no longer has a name: every record
    after that would be lost while the checkpoints carried on. The run stops
    instead, before its next checkpoint, so that ``--resume`` continues from the
    last checkpoint with no hole in the outputs.
    """
    handle.flush()
    os.fsync(handle.fileno())
    written = os.fstat(handle.fileno())
    try:
        named = os.stat(path)
    except FileNotFoundError:
        named = None
    if named is None or (named.st_ino, named.st_dev) != (written.st_ino, written.st_dev):
        raise OutputReplacedError(
            f"{path} was {'deleted' if named is None else 'replaced'} by another program while this run was "
            "writing it (git stash/checkout of run files, an editor, a copy?); the run stops before its next "
            "checkpoint so that nothing is lost: continue it with --resume, and leave the output directory "
            "alone while a run writes to it"
        )


def truncate_output(path: str | Path, n_bytes: int) -> None:
    """Cut ``path`` back to its first ``n_bytes`` bytes (a size recorded by a checkpoint).

    Raises ``ValueError`` when the file is shorter than that, since records the
    checkpoint relies on would then be missing.
    """
    path = Path(path)
    size = _file_size(path)
    if size < n_bytes:
        raise ValueError(
            f"{path} has {size} bytes but the checkpoint covers {n_bytes}; "
            "it was truncated or replaced since, so the run cannot be resumed without losing records"
        )
    with open(path, "r+b") as handle:
        handle.truncate(n_bytes)


class CSVLogReporter:
    """CSV log: step, time in ps, potential, kinetic and total energy in kJ/mol, temperature in K, ns/day.

    ns/day is the simulated time per wall-clock day since the previous row (or
    since the reporter was created, for the first row).
    """

    def __init__(self, path: str | Path, interval: int, system: mm.System, timestep_fs: float, *, append: bool = False):
        if interval < 1:
            raise ValueError(f"report interval must be at least 1 step, got {interval}")
        self.path = Path(path)
        self.interval = int(interval)
        self._timestep_ps = timestep_fs * 1e-3
        self._dof = degrees_of_freedom(system)
        existing = append and _file_size(self.path) > 0
        self._rows = _count_csv_rows(self.path) if existing else 0
        self._handle = open(self.path, "a" if existing else "w", encoding="utf-8")
        if not existing:
            self._handle.write(",".join(CSV_COLUMNS) + "\n")
            self._handle.flush()
        self._last_wall = time.perf_counter()
        self._last_step: int | None = None

    def describeNextReport(self, simulation: app.Simulation) -> dict:
        return _next_report(simulation, self.interval, ["energy"])

    def report(self, simulation: app.Simulation, state: mm.State) -> None:
        step = simulation.currentStep
        now = time.perf_counter()
        previous = self._last_step if self._last_step is not None else step - self.interval
        elapsed = now - self._last_wall
        ns_per_day = (step - previous) * self._timestep_ps * 1e-3 / (elapsed / 86400.0) if elapsed > 0 else float("nan")
        self._last_wall, self._last_step = now, step
        potential = state.getPotentialEnergy().value_in_unit(_KJ_PER_MOL)
        kinetic = state.getKineticEnergy().value_in_unit(_KJ_PER_MOL)
        temperature = 2.0 * kinetic / (self._dof * _BOLTZMANN_KJ_MOL_K)
        time_ps = state.getTime().value_in_unit(unit.picosecond)
        values = [potential, kinetic, potential + kinetic, temperature]
        row = [str(step), f"{time_ps:.6f}"] + [repr(float(v)) for v in values] + [f"{ns_per_day:.4g}"]
        self._handle.write(",".join(row) + "\n")
        self._handle.flush()
        self._rows += 1

    def checkpoint_record(self) -> dict:
        """Flush to disk and return ``{"bytes", "rows"}`` for the checkpoint."""
        _sync(self._handle, self.path)
        return {"bytes": _file_size(self.path), "rows": self._rows}

    def close(self) -> None:
        self._handle.close()


def _count_csv_rows(path: Path) -> int:
    with open(path, encoding="utf-8") as handle:
        return max(sum(1 for line in handle if line.strip()) - 1, 0)


def read_csv_log(path: str | Path) -> dict[str, np.ndarray]:
    """Read a CSV log written by :class:`CSVLogReporter` into column arrays."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"log file {str(path)!r} does not exist")
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().strip().split(",")
        rows = [line.strip().split(",") for line in handle if line.strip()]
    missing = [column for column in ("step", "time_ps", "potential_energy_kJ/mol") if column not in header]
    if missing:
        raise ValueError(f"{path} is not an MD log: columns {missing} are missing")
    columns = {}
    for index, name in enumerate(header):
        values = [row[index] if index < len(row) else "nan" for row in rows]
        columns[name] = np.asarray(values, dtype=np.int64 if name == "step" else np.float64)
    return columns


class DCDReporter:
    """DCD trajectory reporter (positions in Å, OpenMM's ``DCDFile``) that can be resumed.

    With ``append=True`` the file must already hold a valid header (it was cut
    back to a checkpoint by :func:`truncate_dcd`); frames are appended to it.
    """

    def __init__(
        self,
        path: str | Path,
        interval: int,
        topology: app.Topology,
        timestep_fs: float,
        *,
        append: bool = False,
        enforce_periodic_box: bool | None = None,
    ):
        if interval < 1:
            raise ValueError(f"trajectory interval must be at least 1 step, got {interval}")
        self.path = Path(path)
        self.interval = int(interval)
        self._periodic = enforce_periodic_box
        self._handle = open(self.path, "r+b" if append else "wb")
        self._dcd = app.DCDFile(
            self._handle, topology, timestep_fs * unit.femtoseconds, firstStep=self.interval,
            interval=self.interval, append=append,
        )

    @property
    def frames(self) -> int:
        """Frames in the file."""
        return self._dcd._modelCount

    def describeNextReport(self, simulation: app.Simulation) -> dict:
        report = _next_report(simulation, self.interval, ["positions"])
        report["periodic"] = self._periodic
        return report

    def report(self, simulation: app.Simulation, state: mm.State) -> None:
        self._dcd.writeModel(state.getPositions(), periodicBoxVectors=state.getPeriodicBoxVectors())

    def checkpoint_record(self) -> dict:
        """Flush to disk and return ``{"bytes", "frames"}`` for the checkpoint."""
        _sync(self._handle, self.path)
        return {"bytes": _file_size(self.path), "frames": self.frames}

    def close(self) -> None:
        self._handle.close()


def truncate_dcd(path: str | Path, n_bytes: int, n_frames: int, interval: int) -> None:
    """Cut a DCD file back to ``n_bytes`` and set its header to ``n_frames`` frames.

    ``interval`` is the reporter's interval in steps (the first frame is at that
    step), used for the header's last-step field.
    """
    truncate_output(path, n_bytes)
    with open(path, "r+b") as handle:
        magic = handle.read(8)
        if len(magic) < 8 or magic[4:8] != b"CORD":
            raise ValueError(f"{path} is not a DCD file written by OpenMM")
        handle.seek(8)
        handle.write(struct.pack("<i", n_frames))
        handle.seek(20)
        handle.write(struct.pack("<i", interval * n_frames))


_VELOCITY_MAGIC = b"SO3KVEL1"
_VELOCITY_HEADER = struct.Struct("<8siidq")  # magic, n_atoms, interval, timestep_ps, first step


class VelocityReporter:
    """Writes velocities in nm/ps as float32 frames to a small binary file.

    Layout: header (magic ``SO3KVEL1``, number of atoms, interval in steps, time
    step in ps, step of the first frame) followed by frames of (N, 3) float32,
    little-endian. Read with :func:`read_velocities`.
    """

    def __init__(self, path: str | Path, interval: int, n_atoms: int, timestep_fs: float, *, append: bool = False):
        if interval < 1:
            raise ValueError(f"velocity interval must be at least 1 step, got {interval}")
        self.path = Path(path)
        self.interval = int(interval)
        self.n_atoms = int(n_atoms)
        if append:
            header = read_velocity_header(self.path)
            if header["n_atoms"] != self.n_atoms or header["interval"] != self.interval:
                raise ValueError(f"{self.path}: written with different atoms or interval; cannot append")
            self._handle = open(self.path, "ab")
        else:
            self._handle = open(self.path, "wb")
            self._handle.write(
                _VELOCITY_HEADER.pack(_VELOCITY_MAGIC, self.n_atoms, self.interval, timestep_fs * 1e-3, self.interval)
            )
            self._handle.flush()

    def describeNextReport(self, simulation: app.Simulation) -> dict:
        return _next_report(simulation, self.interval, ["velocities"])

    def report(self, simulation: app.Simulation, state: mm.State) -> None:
        velocities = state.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond)
        self._handle.write(np.asarray(velocities, dtype="<f4").tobytes())
        self._handle.flush()

    def checkpoint_record(self) -> dict:
        """Flush to disk and return ``{"bytes", "frames"}`` for the checkpoint."""
        _sync(self._handle, self.path)
        size = _file_size(self.path)
        return {"bytes": size, "frames": (size - _VELOCITY_HEADER.size) // (12 * self.n_atoms)}

    def close(self) -> None:
        self._handle.close()


def read_velocity_header(path: str | Path) -> dict:
    """Header of a velocity file: ``n_atoms``, ``interval`` (steps), ``timestep_ps``, ``first_step``."""
    path = Path(path)
    with open(path, "rb") as handle:
        raw = handle.read(_VELOCITY_HEADER.size)
    if len(raw) < _VELOCITY_HEADER.size or raw[:8] != _VELOCITY_MAGIC:
        raise ValueError(f"{path} is not a velocity file written by VelocityReporter")
    _, n_atoms, interval, timestep_ps, first_step = _VELOCITY_HEADER.unpack(raw)
    return {"n_atoms": n_atoms, "interval": interval, "timestep_ps": timestep_ps, "first_step": first_step}


def read_velocities(path: str | Path) -> tuple[np.ndarray, float]:
    """Velocities (frames, atoms, 3) in nm/ps and the time between frames in ps.

    A trailing partial frame (a run killed while writing) is ignored.
    """
    header = read_velocity_header(path)
    data = np.fromfile(path, dtype="<f4", offset=_VELOCITY_HEADER.size)
    frame = 3 * header["n_atoms"]
    n_frames = data.size // frame
    velocities = data[: n_frames * frame].reshape(n_frames, header["n_atoms"], 3).astype(np.float64)
    return velocities, header["interval"] * header["timestep_ps"]


class ProgressReporter:
    """Progress bar with ETA on stderr (tqdm): steps done, potential energy and temperature."""

    def __init__(self, interval: int, total_steps: int, start_step: int, system: mm.System, *, stream=None):
        from tqdm import tqdm

        self.interval = max(1, int(interval))
        self._dof = degrees_of_freedom(system)
        self._bar = tqdm(
            total=total_steps, initial=start_step, unit="step", file=stream or sys.stderr,
            dynamic_ncols=True, smoothing=0.1, mininterval=1.0,
        )
        self._last_step = start_step

    def describeNextReport(self, simulation: app.Simulation) -> dict:
        return _next_report(simulation, self.interval, ["energy"])

    def report(self, simulation: app.Simulation, state: mm.State) -> None:
        step = simulation.currentStep
        kinetic = state.getKineticEnergy().value_in_unit(_KJ_PER_MOL)
        self._bar.set_postfix(
            E_pot=f"{state.getPotentialEnergy().value_in_unit(_KJ_PER_MOL):.1f} kJ/mol",
            T=f"{2 * kinetic / (self._dof * _BOLTZMANN_KJ_MOL_K):.0f} K",
            refresh=False,
        )
        self._bar.update(step - self._last_step)
        self._last_step = step

    def close(self) -> None:
        self._bar.close()
