"""Reading trajectories back: DCD files (as OpenMM writes them) and mdtraj objects for analysis.

:func:`read_dcd` reads the frames with mdtraj (either byte order, with or
without unit cells, a trailing partial frame of a killed writer left out) and
takes from the DCD header what mdtraj does not expose: the step of the first
frame, the steps between frames and the time step, which give each frame's
time (and the sizes that tell a file with no complete frame yet, which mdtraj
cannot open, from a damaged one). A run's trajectory whose ``log.csv`` beside it has a gap
(records lost while the dynamics went on) gets each frame's step from the log.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from so3krates_openmm.units import ANGSTROM_PER_NM, PS_PER_AKMA_TIME


@dataclass
class DCDTrajectory:
    """Positions (frames, atoms, 3) in Å, unit cells (frames, 6: a, b, c in Å, alpha, beta, gamma in
    degrees) or ``None``, the time between frames in ps and the step of the first frame."""

    positions_angstrom: np.ndarray
    unit_cells: np.ndarray | None
    frame_interval_ps: float
    first_step: int
    steps_between_frames: int
    frame_steps: np.ndarray | None = None

    @property
    def steps(self) -> np.ndarray:
        """The MD step of each frame (from the run's log where its records have a gap)."""
        if self.frame_steps is not None:
            return self.frame_steps
        return self.first_step + np.arange(self.n_frames) * self.steps_between_frames

    @property
    def n_frames(self) -> int:
        """Number of frames."""
        return self.positions_angstrom.shape[0]

    @property
    def times_ps(self) -> np.ndarray:
        """Time of each frame in ps (first frame at ``first_step`` steps)."""
        timestep_ps = self.frame_interval_ps / max(self.steps_between_frames, 1)
        return self.steps * timestep_ps

    def after(self, skip_ps: float) -> DCDTrajectory:
        """The frames from ``skip_ps`` after the first frame on (equilibration dropped)."""
        if skip_ps <= 0 or self.n_frames == 0:
            return self
        skip = int(np.searchsorted(self.times_ps, self.times_ps[0] + skip_ps - 1e-9))
        return DCDTrajectory(
            self.positions_angstrom[skip:],
            None if self.unit_cells is None else self.unit_cells[skip:],
            self.frame_interval_ps,
            int(self.steps[skip]) if skip < self.n_frames else self.first_step + skip * self.steps_between_frames,
            self.steps_between_frames,
            None if self.frame_steps is None else self.frame_steps[skip:],
        )

    def every(self, steps: int) -> DCDTrajectory:
        """Every frame ``steps`` MD steps apart (a multiple of ``steps_between_frames``), from the first."""
        if steps < 1 or steps % self.steps_between_frames:
            raise ValueError(
                f"cannot take a frame every {steps} steps from a trajectory with a frame every "
                f"{self.steps_between_frames} steps: give a multiple of {self.steps_between_frames}"
            )
        stride = steps // self.steps_between_frames
        return DCDTrajectory(
            self.positions_angstrom[::stride],
            None if self.unit_cells is None else self.unit_cells[::stride],
            self.frame_interval_ps * stride,
            self.first_step,
            steps,
            None if self.frame_steps is None else self.frame_steps[::stride],
        )


@dataclass(frozen=True)
class DCDHeader:
    """What mdtraj does not tell about a DCD file: the first frame's step, the steps between frames,
    the time step (AKMA units), and the sizes of the header and of one frame in bytes."""

    first_step: int
    steps_between_frames: int
    timestep_akma: float
    n_atoms: int
    header_bytes: int
    frame_bytes: int


def read_dcd_header(path: Path) -> DCDHeader:
    """The header of a DCD file (CHARMM layout as OpenMM writes it, either byte order)."""
    with open(path, "rb") as handle:
        data = handle.read(4096)
    for endian in ("<", ">"):
        if len(data) >= 100 and struct.unpack(endian + "i", data[:4])[0] == 84 and data[4:8] == b"CORD":
            break
    else:
        raise ValueError(f"{path} is not a DCD file (no CORD header)")
    control = struct.unpack(endian + "20i", data[8:88])
    (timestep_akma,) = struct.unpack(endian + "f", data[44:48])
    (title_bytes,) = struct.unpack(endian + "i", data[92:96])
    atoms_record = 96 + title_bytes + 4
    if len(data) < atoms_record + 12:
        raise ValueError(f"{path}: the DCD header is cut short")
    (n_atoms,) = struct.unpack(endian + "i", data[atoms_record + 4 : atoms_record + 8])
    has_cell = control[10] != 0
    return DCDHeader(
        first_step=control[1], steps_between_frames=control[2], timestep_akma=timestep_akma, n_atoms=n_atoms,
        header_bytes=atoms_record + 12, frame_bytes=(56 if has_cell else 0) + 3 * (8 + 4 * n_atoms),
    )


@contextmanager
def _c_stdout_discarded() -> Iterator[None]:
    """Send what C code prints to standard output (mdtraj's DCD plugin reports the file type there) to
    /dev/null while the block runs, so that a command's standard output stays its own."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _gaps(steps: list[int], interval: int) -> list[tuple[int, int]]:
    """(last step before, first step after) each place where ``steps`` jump by more than ``interval``."""
    return [(a, b) for a, b in zip(steps, steps[1:], strict=False) if b - a > interval]


def _frame_steps_from_log(path: Path, steps_between_frames: int, n_frames: int) -> np.ndarray | None:
    """Frame steps of a run's DCD whose ``log.csv`` beside it has gaps (lost records), else ``None``.

    Frames are written every ``steps_between_frames`` steps, the first at that step; the steps strictly
    inside a gap of the log are left out (trajectory and log lost the same records).
    """
    log = path.with_name("log.csv")
    if not log.is_file() or steps_between_frames < 1:
        return None
    with open(log, encoding="utf-8") as handle:
        handle.readline()
        steps = [int(line.split(",", 1)[0]) for line in handle if line.strip()]
    if len(steps) < 2:
        return None
    gaps = _gaps(steps, min(b - a for a, b in zip(steps, steps[1:], strict=False)))
    if not gaps:
        return None
    frame_steps = []
    step = steps_between_frames
    while len(frame_steps) < n_frames:
        if not any(before < step < after for before, after in gaps):
            frame_steps.append(step)
        step += steps_between_frames
    return np.asarray(frame_steps, dtype=np.int64)


def read_dcd(path: str | Path) -> DCDTrajectory:
    """Read a DCD file with mdtraj; a trailing partial frame (a killed writer) is left out.

    A run's trajectory (``log.csv`` beside it) whose records have a gap gets
    each frame's step from the log (:attr:`DCDTrajectory.steps`), so that times
    after the gap are right.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a DCD file.
    """
    from mdtraj.formats import DCDTrajectoryFile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trajectory {str(path)!r} does not exist")
    header = read_dcd_header(path)
    if path.stat().st_size < header.header_bytes + header.frame_bytes:  # no complete frame yet: mdtraj refuses
        positions, cells = np.empty((0, header.n_atoms, 3)), None
    else:
        with _c_stdout_discarded(), DCDTrajectoryFile(str(path)) as dcd:
            xyz, cell_lengths, cell_angles = dcd.read()
        positions = np.asarray(xyz, dtype=np.float64)
        cells = None if cell_lengths is None else np.concatenate([cell_lengths, cell_angles], axis=1).astype(np.float64)
    frame_interval_ps = header.timestep_akma * PS_PER_AKMA_TIME * max(header.steps_between_frames, 1)
    frame_steps = _frame_steps_from_log(path, header.steps_between_frames, len(positions))
    first_step = header.first_step if frame_steps is None or not len(frame_steps) else int(frame_steps[0])
    return DCDTrajectory(positions, cells, frame_interval_ps, first_step, header.steps_between_frames, frame_steps)


def mdtraj_trajectory(topology, positions_angstrom: np.ndarray, times_ps: np.ndarray | None = None):
    """An ``mdtraj.Trajectory`` from an OpenMM ``Topology`` and positions (frames, atoms, 3) in Å."""
    import mdtraj

    md_topology = mdtraj.Topology.from_openmm(topology)
    xyz = np.asarray(positions_angstrom, dtype=np.float32).reshape(-1, md_topology.n_atoms, 3) / ANGSTROM_PER_NM
    return mdtraj.Trajectory(xyz, md_topology, time=times_ps)


def save_thinned_trajectory(
    topology, positions_angstrom: np.ndarray, times_ps: np.ndarray, path: str | Path, *, max_bytes: int = 2_000_000,
) -> tuple[Path, int]:
    """Every ``stride``-th frame written with mdtraj (format by suffix, e.g. compressed ``.xtc``), the smallest
    stride (1, 2, 4, ...) whose file fits in ``max_bytes``; a PDB of the first frame is written beside it
    (``<stem>_topology.pdb``) to read it back. Returns the path and the stride.

    Raises:
        ValueError: no frames, or even a single frame does not fit.
    """
    positions = np.asarray(positions_angstrom, dtype=np.float64)
    if len(positions) == 0:
        raise ValueError("no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stride = 1
    while True:
        trajectory = mdtraj_trajectory(topology, positions[::stride], np.asarray(times_ps)[::stride])
        trajectory.save(str(path), force_overwrite=True)
        if path.stat().st_size <= max_bytes:
            trajectory[0].save_pdb(str(path.with_name(f"{path.stem}_topology.pdb")))
            return path, stride
        if stride >= len(positions):
            path.unlink()
            raise ValueError(f"even one frame does not fit in {max_bytes} bytes as {path.suffix}")
        stride *= 2
