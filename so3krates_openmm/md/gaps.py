"""Filling a gap in a finished run's records from a recomputation of that stretch.

A run whose log and DCD lost records (for example when another program replaced
the files while the run wrote them, see :class:`~so3krates_openmm.md.reporters.OutputReplacedError`)
still has continuous dynamics when its checkpoints held the full state. The lost
records can be recomputed exactly: resume a copy of the run from a checkpoint
written before the gap (``langevin_nvt.py --output COPY --resume --steps N``,
same platform and machine) past the first record after the gap. Then
:func:`fill_record_gaps` checks that every record the recomputation shares with
the run is the same (positions bitwise, energies as the resume tests require),
in particular the first record after the gap, which proves that the recomputed
stretch is the one the run went through, and writes the missing rows and frames
into the run's ``log.csv`` and ``trajectory.dcd`` (atomically, together with the
sizes in its ``checkpoint.zip``). Nothing is written when a check fails.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from so3krates_openmm.md.checkpoint import identity_differences, update_checkpoint_outputs, write_bytes_atomically
from so3krates_openmm.md.trajectory import dcd_layout, find_gaps, frame_steps_around_gaps

#: Log columns that a recomputation reproduces bitwise, and those it reproduces to the last bits
#: (OpenMM sums the kinetic energy afresh after a checkpoint load; seen: 3e-14 relative).
EXACT_COLUMNS = ("step", "time_ps", "potential_energy_kJ/mol")
ROUNDED_COLUMNS = ("kinetic_energy_kJ/mol", "total_energy_kJ/mol", "temperature_K")
ROUNDED_RTOL = 1e-12


class RecordMismatchError(ValueError):
    """The recomputation differs from the run where both have records: it is not the same trajectory."""


@dataclass
class GapFill:
    """What :func:`fill_record_gaps` did (steps are MD steps).

    Attributes:
        gaps: (last step before, first step after) each gap of the log.
        recomputed_from_step: the checkpoint step the recomputation started from.
        log_rows_added, frames_added: records written into the gaps.
        log_rows_compared, frames_compared: records computed afresh by the
            recomputation and found equal to the run's.
    """

    gaps: list[tuple[int, int]]
    recomputed_from_step: int
    log_rows_added: int
    frames_added: int
    log_rows_compared: int
    frames_compared: int

    def to_dict(self) -> dict:
        return asdict(self)


def _run_info(directory: Path, role: str) -> dict:
    info_path = directory / "run.json"
    if not info_path.is_file():
        raise FileNotFoundError(
            f"the {role} {directory} has no run.json: it is still running or was killed; "
            "let it finish (langevin_nvt.py --resume) first"
        )
    return json.loads(info_path.read_text())


def _log_rows(path: Path) -> tuple[str, dict[int, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"log file {str(path)!r} does not exist")
    header, *lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = {}
    for line in lines:
        step = int(line.split(",", 1)[0])
        if step in rows:
            raise ValueError(f"{path} has step {step} twice: it is not a log of one run")
        rows[step] = line
    return header, rows


def _row_values(header: str, line: str) -> dict[str, float]:
    return {name: float(value) for name, value in zip(header.split(","), line.split(","))}


def _same_row(header: str, line_a: str, line_b: str) -> bool:
    a, b = _row_values(header, line_a), _row_values(header, line_b)
    exact = all(a[name] == b[name] for name in EXACT_COLUMNS)
    rounded = all(np.isclose(a[name], b[name], rtol=ROUNDED_RTOL, atol=0.0) for name in ROUNDED_COLUMNS)
    return exact and rounded


def _compare(shared: list[int], fresh_from: int, same, what: str, gaps: list[tuple[int, int]]) -> int:
    """Check ``same(step)`` for the shared records computed afresh; each gap needs one after it."""
    fresh = [step for step in shared if step > fresh_from]
    for step in fresh:
        if not same(step):
            raise RecordMismatchError(
                f"the recomputed {what} at step {step} differs from the run's: the recomputation is not the "
                "same trajectory (another seed, model, platform or machine?); nothing was written"
            )
    for _, after in gaps:
        if not any(step >= after for step in fresh):
            raise ValueError(
                f"the recomputation has no {what} of its own at or after step {after}, the first record after "
                f"the gap: run it further (--resume --steps {after}) so that its continuation into the run is checked"
            )
    return len(fresh)


def fill_record_gaps(run_dir: str | Path, recomputed_dir: str | Path) -> GapFill:
    """Fill the gaps in ``run_dir``'s log and DCD from ``recomputed_dir`` (see module docstring).

    Both are output directories of :func:`~so3krates_openmm.md.runner.run_md`
    with a ``run.json``. Raises ``ValueError`` (``RecordMismatchError`` for
    differing records) without changing any file when the recomputation is of
    another run, does not cover a gap, or disagrees with the run.
    """
    run_dir, recomputed_dir = Path(run_dir), Path(recomputed_dir)
    run_info, recomputed_info = _run_info(run_dir, "run"), _run_info(recomputed_dir, "recomputation")
    differences = identity_differences(run_info["identity"], recomputed_info["identity"])
    if run_info["seed"] != recomputed_info["seed"]:
        differences.append(f"seed: run {run_info['seed']}, recomputation {recomputed_info['seed']}")
    if differences:
        raise ValueError(f"{recomputed_dir} is not a recomputation of {run_dir}: " + "; ".join(differences))
    identity = run_info["identity"]
    log_interval, trajectory_interval = int(identity["log_interval"]), int(identity["trajectory_interval"])
    fresh_from = int(recomputed_info.get("resumed_from_step") or 0)

    header, run_rows = _log_rows(run_dir / "log.csv")
    recomputed_header, recomputed_rows = _log_rows(recomputed_dir / "log.csv")
    if recomputed_header != header:
        raise ValueError(f"the logs of {run_dir} and {recomputed_dir} have different columns")
    gaps = find_gaps(sorted(run_rows), log_interval)
    if not gaps:
        raise ValueError(f"{run_dir / 'log.csv'} has no gap (a row every {log_interval} steps throughout)")
    missing_rows = [step for before, after in gaps for step in range(before + log_interval, after, log_interval)]
    uncovered = [step for step in missing_rows if step not in recomputed_rows]
    if uncovered:
        raise ValueError(
            f"the recomputation lacks log rows of the gap (steps {uncovered[0]}-{uncovered[-1]}): "
            f"resume it from a checkpoint before step {uncovered[0]} and run it past step {uncovered[-1]}"
        )
    shared_rows = sorted(set(run_rows) & set(recomputed_rows))
    rows_compared = _compare(shared_rows, fresh_from,
                             lambda step: _same_row(header, run_rows[step], recomputed_rows[step]), "log row", gaps)

    run_dcd, recomputed_dcd = (run_dir / "trajectory.dcd").read_bytes(), (recomputed_dir / "trajectory.dcd").read_bytes()
    run_layout, recomputed_layout = dcd_layout(run_dcd, run_dir / "trajectory.dcd"), dcd_layout(recomputed_dcd, recomputed_dir / "trajectory.dcd")
    if (recomputed_layout.n_atoms, recomputed_layout.frame_bytes_each) != (run_layout.n_atoms, run_layout.frame_bytes_each):
        raise ValueError(f"the trajectories of {run_dir} and {recomputed_dir} have different atoms or frame layouts")
    all_frame_steps = range(trajectory_interval, int(run_info["final_step"]) + 1, trajectory_interval)
    run_frame_steps = frame_steps_around_gaps(trajectory_interval, gaps, run_layout.n_frames).tolist()
    if run_frame_steps[-1:] != list(all_frame_steps[-1:]):
        raise ValueError(
            f"{run_dir / 'trajectory.dcd'} has {run_layout.n_frames} frames, which with the log's gaps do not end at "
            f"the run's last frame (step {all_frame_steps[-1]}): trajectory and log lost different records"
        )
    missing_frames = set(all_frame_steps) - set(run_frame_steps)
    run_frames = {step: run_layout.frame_bytes(run_dcd, index) for index, step in enumerate(run_frame_steps)}
    recomputed_frames = {trajectory_interval * (index + 1): recomputed_layout.frame_bytes(recomputed_dcd, index)
                         for index in range(recomputed_layout.n_frames)}
    uncovered_frames = sorted(missing_frames - set(recomputed_frames))
    if uncovered_frames:
        raise ValueError(f"the recomputation lacks trajectory frames of the gap (steps {uncovered_frames[0]}-{uncovered_frames[-1]})")
    shared_frames = sorted(set(run_frames) & set(recomputed_frames))
    frames_compared = _compare(shared_frames, fresh_from, lambda step: run_frames[step] == recomputed_frames[step],
                               "trajectory frame", gaps)

    rows = {**run_rows, **{step: recomputed_rows[step] for step in missing_rows}}
    log_text = "\n".join([header] + [rows[step] for step in sorted(rows)]) + "\n"
    frames = {**run_frames, **{step: recomputed_frames[step] for step in missing_frames}}
    n_frames = len(frames)
    dcd_header = bytearray(run_dcd[: run_layout.header_bytes])
    dcd_header[8:12] = struct.pack(run_layout.endian + "i", n_frames)
    dcd_header[20:24] = struct.pack(run_layout.endian + "i", trajectory_interval * n_frames)
    dcd = bytes(dcd_header) + b"".join(frames[step] for step in sorted(frames))

    result = GapFill(gaps=gaps, recomputed_from_step=fresh_from, log_rows_added=len(missing_rows),
                     frames_added=len(missing_frames), log_rows_compared=rows_compared, frames_compared=frames_compared)
    write_bytes_atomically(run_dir / "log.csv", log_text.encode("utf-8"))
    write_bytes_atomically(run_dir / "trajectory.dcd", dcd)
    if (run_dir / "checkpoint.zip").is_file():
        update_checkpoint_outputs(run_dir / "checkpoint.zip", {
            "log": {"bytes": len(log_text.encode("utf-8")), "rows": len(rows)},
            "trajectory": {"bytes": len(dcd), "frames": n_frames},
        })
    run_info.setdefault("record_gaps_filled", []).append({**result.to_dict(), "from": str(recomputed_dir)})
    (run_dir / "run.json").write_text(json.dumps(run_info, indent=2, default=str) + "\n")
    return result
