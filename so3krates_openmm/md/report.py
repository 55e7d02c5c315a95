"""Summaries of finished runs for tables (e.g. ``bench/RESULTS.md``): stability, speed, bonds, C60 distance.

:func:`summarize_run` reads a run directory written by
:func:`~so3krates_openmm.md.runner.run_md` (``run.json``, ``stability.json``,
``trajectory.dcd``) and the structure recorded in it, and returns one row:
simulated time, ns/day, stable fraction, bond-length statistics over the
trajectory per element pair, and for a buckyball catcher the C60-catcher
centroid distance statistics. A run still in progress (or killed, not yet
resumed) has no ``run.json``: its row is read from ``checkpoint.zip`` and
``log.csv`` and marked ``in_progress``, with no stable fraction yet.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from so3krates_openmm.data.structures import read_structure
from so3krates_openmm.data.trajectory import read_dcd
from so3krates_openmm.md.stability import covalent_bonds, minimum_image


def bond_statistics(positions_angstrom: np.ndarray, structure, bonds: np.ndarray | None = None) -> dict[str, dict]:
    """Bond lengths over frames (frames, atoms, 3; Å) per element pair (``C-H``, ``N-H``: C first, H last).

    For each pair: number of bonds, mean and standard deviation of the length
    (Å), and the largest length relative to each bond's starting length.
    """
    if bonds is None:
        bonds, _ = covalent_bonds(structure)
    positions = np.asarray(positions_angstrom, dtype=np.float64)
    delta = minimum_image(positions[:, bonds[:, 1]] - positions[:, bonds[:, 0]], structure.box_angstrom)
    lengths = np.linalg.norm(delta, axis=-1)
    start_delta = structure.positions_angstrom[bonds[:, 1]] - structure.positions_angstrom[bonds[:, 0]]
    start = np.linalg.norm(minimum_image(start_delta, structure.box_angstrom), axis=-1)
    symbols = structure.symbols
    names = np.array(
        ["-".join(sorted((symbols[i], symbols[j]), key=lambda s: (s != "C", s == "H", s))) for i, j in bonds]
    )
    statistics = {}
    for name in sorted(set(names)):
        selected = names == name
        statistics[name] = {
            "bonds": int(selected.sum()),
            "mean_angstrom": float(lengths[:, selected].mean()),
            "std_angstrom": float(lengths[:, selected].std()),
            "max_stretch": float((lengths[:, selected] / start[selected]).max()),
        }
    return statistics


def _run_progress(directory: Path) -> dict:
    """Identity, steps done, speed and platform of a finished run or of one in progress."""
    if (directory / "run.json").is_file():
        info = json.loads((directory / "run.json").read_text())
        return {"identity": info["identity"], "steps": info["final_step"], "ns_per_day": info.get("ns_per_day"),
                "platform": info.get("platform"), "in_progress": False}
    if not (directory / "checkpoint.zip").is_file():
        raise FileNotFoundError(
            f"{directory} is not an MD run directory: it has neither run.json (a finished run) nor "
            "checkpoint.zip (a run in progress); give the --output directory of langevin_nvt.py"
        )
    from so3krates_openmm.md.checkpoint import read_checkpoint
    from so3krates_openmm.md.reporters import read_csv_log

    checkpoint = read_checkpoint(directory / "checkpoint.zip")
    log = read_csv_log(directory / "log.csv") if (directory / "log.csv").is_file() else {}
    steps = log.get("step", np.array([]))
    speed = log.get("ns_per_day", np.array([]))
    speed = speed[np.isfinite(speed)]
    return {"identity": checkpoint.identity, "steps": int(steps[-1]) if len(steps) else checkpoint.step,
            "ns_per_day": float(np.median(speed)) if len(speed) else None, "platform": None, "in_progress": True}


def summarize_run(run_dir: str | Path) -> dict:
    """One row describing a run directory: finished, stopped by the monitor, or still in progress."""
    directory = Path(run_dir)
    progress = _run_progress(directory)
    identity = progress["identity"]
    row = {
        "run": str(directory),
        "temperature_K": identity.get("temperature_K"),
        "timestep_fs": identity.get("timestep_fs"),
        "ensemble": identity.get("ensemble"),
        "platform": progress["platform"],
        "steps": progress["steps"],
        "simulated_ps": progress["steps"] * identity["timestep_fs"] * 1e-3,
        "ns_per_day": progress["ns_per_day"],
        "stable_fraction": None,
        "in_progress": progress["in_progress"],
    }
    stability_path = directory / "stability.json"
    if stability_path.exists() and not progress["in_progress"]:
        stability = json.loads(stability_path.read_text())
        row.update(stable_fraction=stability["stable_fraction"], reason=stability["reason"] or "completed")
    structure_path = identity.get("structure")
    trajectory_path = directory / "trajectory.dcd"
    if structure_path and Path(structure_path).is_file() and trajectory_path.exists():
        structure = read_structure(structure_path)
        trajectory = read_dcd(trajectory_path)
        if trajectory.n_frames:
            row["frames"] = trajectory.n_frames
            row["bonds"] = bond_statistics(trajectory.positions_angstrom, structure)
            try:
                from so3krates_openmm.md.catcher import (
                    centroid_distances,
                    identify_ball,
                )

                atoms = identify_ball(structure)
            except ValueError:
                atoms = None  # not a buckyball catcher
            if atoms is not None:
                distance = centroid_distances(trajectory.positions_angstrom, atoms)
                row["c60_distance_angstrom"] = {
                    "start": float(centroid_distances(structure.positions_angstrom[None], atoms)[0]),
                    "mean": float(distance.mean()), "std": float(distance.std()),
                    "min": float(distance.min()), "max": float(distance.max()),
                }
    return row


def markdown_table(rows: Sequence[dict]) -> str:
    """A Markdown table of :func:`summarize_run` rows."""
    lines = [
        "| run | T (K) | dt (fs) | simulated (ps) | ns/day | stable fraction | largest bond stretch "
        "| C60-catcher distance (Å) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        stretch = max((b["max_stretch"] for b in row.get("bonds", {}).values()), default=float("nan"))
        c60 = row.get("c60_distance_angstrom")
        c60_text = "-" if c60 is None else (
            f"{c60['mean']:.2f} ± {c60['std']:.2f} (start {c60['start']:.2f}, max {c60['max']:.2f})"
        )
        if row.get("in_progress"):
            fraction = "in progress"
        else:
            fraction = "-" if row["stable_fraction"] is None else f"{row['stable_fraction']:.3f}"
        speed = "-" if row["ns_per_day"] is None else f"{row['ns_per_day']:.3g}"
        lines.append(
            f"| {Path(row['run']).name} | {row['temperature_K']:g} | {row['timestep_fs']:g} "
            f"| {row['simulated_ps']:.4g} | "
            f"{speed} | {fraction} | {stretch:.3f}x | {c60_text} |"
        )
    return "\n".join(lines)
