"""Reading trajectories back: DCD files (as written by OpenMM) and mdtraj objects for analysis.

:func:`read_dcd` parses CHARMM-format DCD files directly (little- or
big-endian, 32-bit record markers, with or without unit cells), which also
gives the time between frames from the header.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

#: DCD time unit (AKMA) in ps.
AKMA_TIME_PS = 0.04888821


@dataclass
class DCDTrajectory:
    """Positions (frames, atoms, 3) in Å, unit cells (frames, 6: a, b, c in Å and the
    DCD cosines/angles as stored) or ``None``, the time between frames in ps and
    the step of the first frame."""

    positions_angstrom: np.ndarray
    unit_cells: Optional[np.ndarray]
    frame_interval_ps: float
    first_step: int
    steps_between_frames: int
    frame_steps: Optional[np.ndarray] = None

    @property
    def steps(self) -> np.ndarray:
        """The MD step of each frame (from the run's log where its records have a gap)."""
        if self.frame_steps is not None:
            return self.frame_steps
        return self.first_step + np.arange(self.n_frames) * self.steps_between_frames

    @property
    def n_frames(self) -> int:
        return self.positions_angstrom.shape[0]

    @property
    def times_ps(self) -> np.ndarray:
        """Time of each frame in ps (first frame at ``first_step`` steps)."""
        timestep_ps = self.frame_interval_ps / max(self.steps_between_frames, 1)
        return self.steps * timestep_ps

    def after(self, skip_ps: float) -> "DCDTrajectory":
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

    def every(self, steps: int) -> "DCDTrajectory":
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
class DCDLayout:
    """Where the parts of a DCD file are: byte order, header size, bytes per frame, frames.

    ``frame_bytes(data, index)`` gives one frame's raw bytes (unit cell, x, y, z records).
    """

    endian: str
    header_bytes: int
    frame_bytes_each: int
    n_frames: int
    n_atoms: int
    first_step: int
    steps_between_frames: int
    timestep_akma: float
    has_cell: bool

    def frame_bytes(self, data: bytes, index: int) -> bytes:
        start = self.header_bytes + index * self.frame_bytes_each
        return data[start : start + self.frame_bytes_each]


def dcd_layout(data: bytes, path: str | Path = "DCD data") -> DCDLayout:
    """Parse the header of DCD file contents ``data``; trailing partial frames are not counted."""
    endian = None
    for candidate in ("<", ">"):
        if len(data) >= 8 and struct.unpack(candidate + "i", data[:4])[0] == 84 and data[4:8] == b"CORD":
            endian = candidate
    if endian is None:
        raise ValueError(f"{path} is not a DCD file (no CORD header)")
    icntrl = struct.unpack(endian + "20i", data[8:88])
    if icntrl[11] != 0:
        raise ValueError(f"{path}: 4-dimensional DCD files are not supported")
    if icntrl[8] != 0:
        raise ValueError(f"{path}: DCD files with fixed atoms are not supported")
    offset = 92
    title_bytes = struct.unpack(endian + "i", data[offset : offset + 4])[0]
    offset += 4 + title_bytes + 4
    n_atoms = struct.unpack(endian + "i", data[offset + 4 : offset + 8])[0]
    offset += 12
    has_cell = icntrl[10] != 0
    frame_size = (56 if has_cell else 0) + 3 * (8 + 4 * n_atoms)
    return DCDLayout(
        endian=endian, header_bytes=offset, frame_bytes_each=frame_size, n_frames=(len(data) - offset) // frame_size,
        n_atoms=n_atoms, first_step=icntrl[1], steps_between_frames=icntrl[2],
        timestep_akma=struct.unpack(endian + "f", data[44:48])[0], has_cell=has_cell,
    )


def find_gaps(steps, interval: int) -> list[tuple[int, int]]:
    """(last step before, first step after) each place where ``steps`` jump by more than ``interval``."""
    return [(int(a), int(b)) for a, b in zip(steps, steps[1:]) if b - a > interval]


def frame_steps_around_gaps(interval: int, gaps: list[tuple[int, int]], n_frames: int) -> np.ndarray:
    """Steps of the first ``n_frames`` frames written every ``interval`` steps (the first at
    ``interval``), leaving out the steps strictly inside ``gaps`` (lost records)."""
    frame_steps = []
    step = interval
    while len(frame_steps) < n_frames:
        if not any(before < step < after for before, after in gaps):
            frame_steps.append(step)
        step += interval
    return np.asarray(frame_steps, dtype=np.int64)


def _frame_steps_from_log(path: Path, layout: DCDLayout) -> Optional[np.ndarray]:
    """Frame steps of a run's DCD whose ``log.csv`` beside it has gaps (lost records), else ``None``
    (both files lost the same records)."""
    log = path.with_name("log.csv")
    if not log.is_file() or layout.steps_between_frames < 1:
        return None
    with open(log, encoding="utf-8") as handle:
        handle.readline()
        steps = [int(line.split(",", 1)[0]) for line in handle if line.strip()]
    if len(steps) < 2:
        return None
    gaps = find_gaps(steps, min(b - a for a, b in zip(steps, steps[1:])))
    if not gaps:
        return None
    return frame_steps_around_gaps(layout.steps_between_frames, gaps, layout.n_frames)


def read_dcd(path: str | Path) -> DCDTrajectory:
    """Read a DCD file; trailing partial frames (a killed writer) are ignored.

    A run's trajectory (``log.csv`` beside it) whose records have a gap gets
    each frame's step from the log (:attr:`DCDTrajectory.steps`), so that times
    after the gap are right.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trajectory {str(path)!r} does not exist")
    data = path.read_bytes()
    layout = dcd_layout(data, path)
    n_frames, n_atoms = layout.n_frames, layout.n_atoms
    positions = np.empty((n_frames, n_atoms, 3), dtype=np.float64)
    cells = np.empty((n_frames, 6), dtype=np.float64) if layout.has_cell else None
    dtype = np.dtype(layout.endian + "f4")
    for frame in range(n_frames):
        start = layout.header_bytes + frame * layout.frame_bytes_each
        if layout.has_cell:
            cells[frame] = np.frombuffer(data, dtype=layout.endian + "f8", count=6, offset=start + 4)
            start += 56
        for axis in range(3):
            positions[frame, :, axis] = np.frombuffer(data, dtype=dtype, count=n_atoms, offset=start + 4)
            start += 8 + 4 * n_atoms
    frame_interval_ps = layout.timestep_akma * AKMA_TIME_PS * max(layout.steps_between_frames, 1)
    frame_steps = _frame_steps_from_log(path, layout)
    first_step = layout.first_step if frame_steps is None or not len(frame_steps) else int(frame_steps[0])
    return DCDTrajectory(positions, cells, frame_interval_ps, first_step, layout.steps_between_frames, frame_steps)


def mdtraj_trajectory(topology, positions_angstrom: np.ndarray, times_ps: Optional[np.ndarray] = None):
    """An ``mdtraj.Trajectory`` from an OpenMM ``Topology`` and positions (frames, atoms, 3) in Å."""
    import mdtraj

    md_topology = mdtraj.Topology.from_openmm(topology)
    xyz = np.asarray(positions_angstrom, dtype=np.float32).reshape(-1, md_topology.n_atoms, 3) * 0.1
    return mdtraj.Trajectory(xyz, md_topology, time=times_ps)
