"""Long runs as closed segments: ``segment_0000/``, ``segment_0001/``, ... each a complete run directory.

A nanosecond run on a CPU takes days and several sessions, perhaps on several machines. Written as one
directory its trajectory grows for days and can only be copied whole. :func:`run_segmented` writes the
run as consecutive segments of ``segment_steps`` steps instead, each one a complete output of
:func:`~so3krates_openmm.md.runner.run_md` (``trajectory.dcd``, ``log.csv``, ``run.json``,
``final_state.xml``, ``stability.json``, ``checkpoint.zip``) in its own folder:

- segment ``k > 0`` starts from the ``final_state.xml`` (positions and velocities) of segment ``k - 1``;
  its Langevin random stream has the seed ``seed + k`` (a new stream per segment, recorded);
- a segment is *closed* when its ``run.json`` says it completed its steps (or became unstable): a closed
  segment never changes again, so it can be copied or committed as progress, and its ``final_state.xml``
  (a few kB) is all another machine needs to continue;
- a killed run resumes inside its open segment from that segment's checkpoint (``resume=True``);
- the stability monitor of every segment checks the bonds of the run's starting structure, so a broken
  bond is judged against the same reference throughout; the run stops at the first unstable segment.

``segments.json`` in the run folder records the run's seed, segment length, time step and identity
(structure and model by content, :func:`file_identity`, and the settings); a resumed run must agree (its
total length may grow), wherever its files now are. Times over the whole
run are the segment's time plus the steps of the segments before it (:func:`read_segmented_trajectory`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from so3krates_openmm.data.trajectory import read_dcd
from so3krates_openmm.export import model_identity
from so3krates_openmm.files import write_atomically
from so3krates_openmm.md.runner import FINAL_STATE, LOG, RUN_INFO, TRAJECTORY, OutputExistsError, RunResult
from so3krates_openmm.md.simulation import MAX_SEED, resolve_seed
from so3krates_openmm.md.stability import FU_BOND_DEVIATION_ANGSTROM, stability_coefficient
from so3krates_openmm.model.checkpoint import file_sha256

SEGMENTS_FILE = "segments.json"
SEGMENT_PREFIX = "segment_"

#: ``run_segment(directory, steps, initial_state, seed) -> RunResult``: one segment, resumed from its checkpoint
#: when ``directory`` holds one, else started from ``initial_state`` (``None``: the structure).
SegmentRunner = Callable[[Path, int, "Path | None", int], RunResult]


def file_identity(structure: str | Path, model: str | Path) -> dict[str, Any]:
    """What identifies a run's structure and model independently of where the files are (so that closed segments
    copied to another machine or checkout can be continued there): the structure file's SHA-256 and the model's
    :func:`~so3krates_openmm.export.model_identity`."""
    return {"structure_sha256": file_sha256(structure), "model": model_identity(model)}


def segment_directory(output: str | Path, index: int) -> Path:
    """The folder of segment ``index`` of the run in ``output``."""
    return Path(output) / f"{SEGMENT_PREFIX}{index:04d}"


def segment_seed(seed: int, index: int) -> int:
    """The seed of segment ``index`` of a run with seed ``seed`` (``seed + index``, wrapped into 1..MAX_SEED)."""
    return 1 + (seed - 1 + index) % MAX_SEED


@dataclass
class SegmentInfo:
    """One segment as its ``run.json`` records it (``None`` fields: the segment has not written it yet)."""

    index: int
    directory: Path
    steps_requested: int | None
    final_step: int | None
    stable: bool | None
    last_good_step: int | None
    reason: str
    ns_per_day: float | None

    @property
    def closed(self) -> bool:
        """Completed its steps or became unstable: it will not change again."""
        if self.steps_requested is None:
            return False
        return self.stable is False or (self.final_step or 0) >= self.steps_requested


@dataclass
class SegmentedStatus:
    """How far a segmented run got (:func:`segmented_status`): steps in ps with ``timestep_fs``."""

    output_dir: Path
    total_steps: int
    segment_steps: int
    timestep_fs: float
    seed: int
    segments: list[SegmentInfo]

    @property
    def unstable(self) -> SegmentInfo | None:
        """The segment where the monitor stopped the run, if any."""
        return next((segment for segment in self.segments if segment.stable is False), None)

    @property
    def simulated_steps(self) -> int:
        """Steps verified stable (closed segments, and the open or failed one up to its last good check)."""
        steps = 0
        for segment in self.segments:
            if segment.stable is False:
                return steps + (segment.last_good_step or 0)
            steps += segment.final_step or 0
        return steps

    @property
    def completed(self) -> bool:
        """All steps run and stable."""
        return self.unstable is None and self.simulated_steps >= self.total_steps

    @property
    def finished(self) -> bool:
        """Nothing left to run: completed, or stopped by the stability monitor."""
        return self.completed or self.unstable is not None

    @property
    def stable_fraction(self) -> float:
        """Fraction of the requested steps verified stable (1.0 when completed)."""
        return min(self.simulated_steps / self.total_steps, 1.0) if self.total_steps else 0.0

    @property
    def simulated_ps(self) -> float:
        """Simulated time verified stable, ps."""
        return self.simulated_steps * self.timestep_fs * 1e-3

    @property
    def ns_per_day(self) -> float | None:
        """Speed over the closed segments (mean, weighted by steps), ``None`` before any."""
        done = [(s.final_step or 0, s.ns_per_day) for s in self.segments if s.closed and s.ns_per_day]
        steps = sum(count for count, _ in done)
        return sum(count * speed for count, speed in done) / steps if steps else None

    @property
    def progress_steps(self) -> int:
        """Steps run so far: :attr:`simulated_steps` plus the open segment's last logged step (progress, ETA)."""
        steps = self.simulated_steps
        open_segment = next((segment for segment in self.segments if not segment.closed), None)
        if open_segment is None or self.unstable is not None:
            return steps
        log = open_segment.directory / LOG
        if log.is_file():
            lines = log.read_text(encoding="utf-8").strip().splitlines()
            if len(lines) > 1:
                try:
                    steps += int(float(lines[-1].split(",")[0]))
                except ValueError:
                    pass  # a line cut off by a kill
        return steps

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python summary (for JSON)."""
        unstable = self.unstable
        return {
            "total_steps": self.total_steps, "segment_steps": self.segment_steps, "timestep_fs": self.timestep_fs,
            "seed": self.seed, "segments": len(self.segments),
            "closed_segments": sum(segment.closed for segment in self.segments),
            "simulated_steps": self.simulated_steps, "simulated_ps": self.simulated_ps,
            "stable_fraction": self.stable_fraction, "completed": self.completed, "finished": self.finished,
            "unstable_reason": None if unstable is None else unstable.reason, "ns_per_day": self.ns_per_day,
        }


def _read_manifest(output: Path) -> dict[str, Any] | None:
    path = output / SEGMENTS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _segment_info(index: int, directory: Path) -> SegmentInfo:
    path = directory / RUN_INFO
    if not path.is_file():
        return SegmentInfo(index, directory, None, None, None, None, "", None)
    info = json.loads(path.read_text())
    stability = info.get("stability") or {}
    stable = stability.get("stable", True) if stability else True
    if stable and info["final_step"] < info["steps_requested"]:
        stable = None  # stopped by a kill or a session's end, not by the monitor
    return SegmentInfo(index, directory, int(info["steps_requested"]), int(info["final_step"]), stable,
                       stability.get("last_good_step", info["final_step"]), stability.get("reason", ""),
                       float(info.get("ns_per_day") or 0.0))


def segmented_status(output: str | Path) -> SegmentedStatus:
    """The state of the segmented run in ``output`` (read from ``segments.json`` and each segment's ``run.json``).

    Raises:
        FileNotFoundError: ``output`` holds no segmented run.
    """
    output = Path(output)
    manifest = _read_manifest(output)
    if manifest is None:
        raise FileNotFoundError(f"{output} holds no segmented run ({SEGMENTS_FILE} is missing)")
    segments = [_segment_info(int(path.name[len(SEGMENT_PREFIX):]), path)
                for path in sorted(output.glob(f"{SEGMENT_PREFIX}[0-9][0-9][0-9][0-9]")) if path.is_dir()]
    return SegmentedStatus(output, int(manifest["total_steps"]), int(manifest["segment_steps"]),
                           float(manifest["timestep_fs"]), int(manifest["seed"]), segments)


def run_segmented(
    run_segment: SegmentRunner,
    output: str | Path,
    *,
    total_steps: int,
    segment_steps: int,
    timestep_fs: float,
    seed: int | None,
    identity: dict[str, Any],
    resume: bool = False,
    overwrite: bool = False,
    max_new_segments: int | None = None,
    log: Callable[[str], None] = print,
) -> SegmentedStatus:
    """Run (or continue) ``total_steps`` steps as segments of ``segment_steps`` in ``output`` (module docstring).

    Args:
        run_segment: runs one segment (see :data:`SegmentRunner`).
        output: the run's folder.
        total_steps, segment_steps: run length and segment length in steps.
        timestep_fs: the time step (recorded; times in ps).
        seed: the run's seed (``None``: random, recorded); segment ``k`` uses :func:`segment_seed`.
        identity: what must not change on resume (structure, model, settings), recorded in ``segments.json``.
        resume: continue the run in ``output``; ``overwrite``: delete it and start again.
        max_new_segments: close at most this many segments in this call (e.g. one session's share), then return.

    Returns:
        The run's :class:`SegmentedStatus` after this call.

    Raises:
        OutputExistsError: ``output`` holds a run and neither ``resume`` nor ``overwrite`` was given.
        ValueError: bad lengths, or a resumed run whose identity or segment length differs.
    """
    if resume and overwrite:
        raise ValueError("resume and overwrite contradict each other: give one of them")
    if segment_steps < 1 or total_steps < 1:
        raise ValueError(f"total and segment steps must be at least 1, got {total_steps} and {segment_steps}")
    output = Path(output)
    manifest = _read_manifest(output)
    if manifest is not None and not resume:
        if not overwrite:
            raise OutputExistsError(f"{output} already holds a segmented run; resume it (--resume) or start again "
                                    "(--overwrite)")
        for path in output.glob(f"{SEGMENT_PREFIX}*"):
            shutil.rmtree(path)
        (output / SEGMENTS_FILE).unlink()
        manifest = None
    expected = json.loads(json.dumps({"segment_steps": segment_steps, "timestep_fs": timestep_fs,
                                      "identity": identity}, default=str))
    if manifest is not None:
        differences = [f"{key}: {manifest.get(key)!r} -> {value!r}" for key, value in expected.items()
                       if manifest.get(key) != value]
        if differences:
            raise ValueError(f"cannot resume {output}: the run's parameters changed ({'; '.join(differences)}); "
                             "use another output or --overwrite")
        if seed is not None and int(seed) != int(manifest["seed"]):
            raise ValueError(f"cannot resume {output}: it was started with seed {manifest['seed']}, not {seed}")
        seed = int(manifest["seed"])
        if int(manifest["total_steps"]) != total_steps:
            log(f"{output}: run length changed from {manifest['total_steps']} to {total_steps} steps")
    seed = resolve_seed(seed)
    manifest = {**expected, "seed": seed, "total_steps": total_steps}
    write_atomically(output / SEGMENTS_FILE, json.dumps(manifest, indent=2) + "\n")

    new_segments = 0
    while True:
        status = segmented_status(output)
        if status.finished:
            return status
        done_steps = sum(segment.steps_requested or 0 for segment in status.segments if segment.closed)
        index = sum(segment.closed for segment in status.segments)
        if max_new_segments is not None and new_segments >= max_new_segments:
            return status
        directory = segment_directory(output, index)
        previous = segment_directory(output, index - 1) / FINAL_STATE if index > 0 else None
        if previous is not None and not previous.is_file():
            raise FileNotFoundError(f"{previous} is missing: segment {index - 1} is closed but has no final state")
        steps = min(segment_steps, total_steps - done_steps)
        run_segment(directory, steps, previous, segment_seed(seed, index))
        if not _segment_info(index, directory).closed:
            raise RuntimeError(f"segment {directory} ended without completing its {steps} steps or failing the "
                               "stability check; see its run.json")
        new_segments += 1


def read_segmented_trajectory(output: str | Path, *, closed_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Positions (frames, atoms, 3) in Å and times in ps over the whole run (segments' frames in order, each
    segment's times shifted by the steps of the segments before it); ``closed_only`` leaves out the open one."""
    status = segmented_status(output)
    positions, times = [], []
    offset_steps = 0
    for segment in status.segments:
        if closed_only and not segment.closed:
            break
        path = segment.directory / TRAJECTORY
        if path.is_file():
            trajectory = read_dcd(path)
            if trajectory.n_frames:
                positions.append(trajectory.positions_angstrom)
                times.append(trajectory.times_ps + offset_steps * status.timestep_fs * 1e-3)
        offset_steps += segment.steps_requested or 0
    if not positions:
        return np.empty((0, 0, 3)), np.empty(0)
    return np.concatenate(positions), np.concatenate(times)


def segmented_stability(
    output: str | Path, bonds: np.ndarray, equilibrium_angstrom: np.ndarray, *,
    max_deviation_angstrom: float = FU_BOND_DEVIATION_ANGSTROM,
) -> dict[str, Any]:
    """The stability coefficient of Fu et al. of a segmented run next to the monitor's verdict.

    ``coefficient`` (:func:`~so3krates_openmm.md.stability.stability_coefficient` over all frames written so
    far, relative to the whole requested run, ``bonds`` with their ``equilibrium_angstrom`` lengths), the
    monitor's ``stable_fraction`` and ``unstable_reason``, ``simulated_ps`` and ``finished`` (completed or
    stopped by the monitor: the values are final). A run without frames yet has ``coefficient`` 0.
    """
    status = segmented_status(output)
    positions, times = read_segmented_trajectory(output)
    total_ps = status.total_steps * status.timestep_fs * 1e-3
    coefficient = 0.0
    if len(times):
        coefficient = stability_coefficient(positions, times, total_ps, bonds, equilibrium_angstrom,
                                            max_deviation_angstrom=max_deviation_angstrom)
    return {"coefficient": coefficient, "finished": status.finished, "completed": status.completed,
            "stable_fraction": status.stable_fraction, "unstable_reason": status.unstable.reason
            if status.unstable else None, "simulated_ps": status.simulated_ps, "frames": len(times),
            "total_ps": total_ps, "seed": status.seed, "ns_per_day": status.ns_per_day}


__all__ = ["SEGMENTS_FILE", "SegmentInfo", "SegmentRunner", "SegmentedStatus", "file_identity",
           "read_segmented_trajectory", "run_segmented", "segment_directory", "segment_seed", "segmented_stability",
           "segmented_status"]
