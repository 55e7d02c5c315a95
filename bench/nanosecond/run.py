#!/usr/bin/env python
"""Nanosecond Langevin MD of a shipped showcase system, GFN2-xTB checks along it, and its summary (issue 17).

    python bench/nanosecond/run.py --system ac_ala3_nhme|buckyball_catcher [--ns 1] [--temperature 300]
        [--timestep-fs 0.5] [--hydrogen-mass AMU] [--threads 1] [--kernels fused] [--checkpoint FILE]
        [--segment-ps 50] [--label-frames 50] [--stage all|md|label|report] [--root runs/nanosecond]
        [--bench-dir bench/nanosecond]

Stages (each resumable; ``all`` runs them in order; the same command after a kill continues where it stopped):

1. ``md``: Langevin NVT at ``--temperature`` (default 300 K; friction 1/ps, seed 1 unless ``--seed``) of the
   system's shipped checkpoint (or ``--checkpoint``), exported with ``--kernels`` (default ``fused``, the fast path) to
   ``<root>/<system>/model.pt``; the Langevin protocol with the stability monitor and closed segments of
   ``--segment-ps`` (``<root>/<system>/md/segment_NNNN/``). ``--timestep-fs`` (default 0.5) and
   ``--hydrogen-mass`` (hydrogen mass repartitioning) choose the integration; the run stops early if the
   monitor trips. ``--max-segments`` closes at most that many segments in this call (a session's share).
2. ``label``: ``--label-frames`` frames evenly spread over the simulated run labelled with GFN2-xTB
   (the labeller of ``so3krates-data label``, resumable: ``<root>/<system>/xtb_labels.npz``).
3. ``report``: the checkpoint's energy and force errors on those frames, per frame over time
   (``<bench-dir>/<system>/xtb_errors.csv`` and ``.png``); the C60-catcher centroid distance over the whole run
   (catcher) or the Ramachandran plot of the three alanines (peptide); a thinned trajectory (``.xtc`` at most
   2 MB, mdtraj, with ``_topology.pdb``) and ``summary.json`` (``simulated_ns``, ``stable_fraction``,
   ``timestep_fs``, ``hydrogen_mass_amu``, ``ns_per_day``, ``xtb_energy_mae``, ``xtb_force_mae``, ...). The
   report also works on an unfinished run (``"completed": false``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from so3krates_openmm.cli.common import NO_PROCESS_TUNING, NO_PROCESS_TUNING_HELP, tune_process

REPOSITORY = Path(__file__).resolve().parents[2]
PRETRAINED = REPOSITORY / "so3krates_openmm" / "pretrained"
SYSTEMS = ("ac_ala3_nhme", "buckyball_catcher")


def paths(args: argparse.Namespace) -> dict[str, Path]:
    """The files of one system's run."""
    run = args.root / args.system
    return {"run": run, "md": run / "md", "model": run / "model.pt", "labels": run / "xtb_labels.npz",
            "bench": args.report_dir or args.bench_dir / args.system,
            "structure": PRETRAINED / args.system / "structure.pdb",
            "checkpoint": Path(args.checkpoint) if args.checkpoint else PRETRAINED / args.system / "best_checkpoint.pt"}


def export_model(args: argparse.Namespace, files: dict[str, Path]) -> Path:
    """The checkpoint exported with ``--kernels`` (kept when it exists for the same checkpoint and kind)."""
    from so3krates_openmm.data.structures import read_structure
    from so3krates_openmm.export import export_checkpoint, read_export_metadata
    from so3krates_openmm.model.checkpoint import file_sha256

    if files["model"].is_file():
        metadata = read_export_metadata(files["model"])
        if (metadata.get("checkpoint_sha256") == file_sha256(files["checkpoint"])
                and (metadata.get("kernels") or "reference") == args.kernels):
            return files["model"]
        if (files["md"] / "segments.json").is_file():
            raise SystemExit(f"{files['model']} was exported from another checkpoint or kernel kind than the run in "
                             f"{files['md']} uses; choose another --root or remove the run")
    files["run"].mkdir(parents=True, exist_ok=True)
    return export_checkpoint(files["checkpoint"], files["model"], structure=read_structure(files["structure"]),
                             kernels=args.kernels)


def run_md(args: argparse.Namespace, files: dict[str, Path]) -> bool:
    """The Langevin run in segments (resumed when started); whether it stayed stable so far."""
    from so3krates_openmm.md.protocols import LangevinNVTOptions
    from so3krates_openmm.md.recipes import run_langevin_nvt

    model = export_model(args, files)
    steps_per_frame = max(1, round(args.frame_interval_fs / args.timestep_fs))
    options = LangevinNVTOptions(
        structure=files["structure"], model=model, temperature=args.temperature, friction=1.0,
        timestep_fs=args.timestep_fs, ns=args.ns, hydrogen_mass=args.hydrogen_mass, seed=args.seed,
        platform=args.platform, threads=args.threads,
        output=files["md"], segment_ps=args.segment_ps, resume=(files["md"] / "segments.json").is_file(),
        log_interval=steps_per_frame, trajectory_interval=steps_per_frame, stability_interval=args.stability_interval,
        checkpoint_interval=max(steps_per_frame, round(args.checkpoint_ps * 1000.0 / args.timestep_fs)),
        progress=not args.no_progress, max_segments=args.max_segments,
    )
    return run_langevin_nvt(options).stable


def label(args: argparse.Namespace, files: dict[str, Path]) -> None:
    """GFN2-xTB labels of ``--label-frames`` frames evenly spread over the simulated run."""
    from so3krates_openmm.data.labelling import LabelSettings, TrajectoryFrames, label_frames
    from so3krates_openmm.data.selection import evenly_spaced
    from so3krates_openmm.data.structures import read_structure
    from so3krates_openmm.md.segments import read_segmented_trajectory, segmented_status

    status = segmented_status(files["md"])
    if not status.finished and not args.partial:
        raise SystemExit(f"{files['md']}: the run is not finished ({status.simulated_ps:.1f} ps so far); finish it "
                         "(--stage md) or label what there is with --partial")
    positions, times = read_segmented_trajectory(files["md"])
    stable = times <= status.simulated_ps + 1e-9  # frames the monitor verified
    positions, times = positions[stable], times[stable]
    if len(times) < args.label_frames:
        raise SystemExit(f"{files['md']}: {len(times)} frames, fewer than --label-frames {args.label_frames}")
    chosen = evenly_spaced(len(times), args.label_frames)
    structure = read_structure(files["structure"])
    frames = TrajectoryFrames(structure.atomic_numbers, positions[chosen], times[chosen], str(files["md"]))
    label_frames(frames, files["labels"], LabelSettings(float32=True, checkpoint_every=5),
                 progress=not args.no_progress,
                 inputs={"trajectory": str(files["md"]), "structure": str(files["structure"]),
                         "frames_of_run": [int(i) for i in chosen]})


def report(args: argparse.Namespace, files: dict[str, Path]) -> dict:
    """Errors along the run, the system's analysis, the thinned trajectory and summary.json."""
    from so3krates_openmm.data.formats import load_npz
    from so3krates_openmm.data.structures import read_structure
    from so3krates_openmm.data.trajectory import mdtraj_trajectory, save_thinned_trajectory
    from so3krates_openmm.export import read_export_metadata
    from so3krates_openmm.files import write_atomically
    from so3krates_openmm.md.segments import read_segmented_trajectory, segmented_status
    from so3krates_openmm.model.checkpoint import file_sha256
    from so3krates_openmm.training.evaluation import evaluate_checkpoint, write_per_frame

    bench = files["bench"]
    bench.mkdir(parents=True, exist_ok=True)
    status = segmented_status(files["md"])
    manifest = json.loads((files["md"] / "segments.json").read_text())
    structure = read_structure(files["structure"])
    positions, times = read_segmented_trajectory(files["md"])
    summary = {
        "system": args.system,
        "simulated_ns": status.simulated_ps * 1e-3,
        "requested_ns": status.total_steps * status.timestep_fs * 1e-6,
        "completed": status.completed,
        "stable_fraction": status.stable_fraction,
        "monitor_verdict": "stable" if status.unstable is None else f"unstable: {status.unstable.reason}",
        "timestep_fs": status.timestep_fs,
        "hydrogen_mass_amu": manifest["identity"].get("hydrogen_mass_amu"),
        "temperature_K": manifest["identity"].get("temperature_K"),
        "friction_per_ps": manifest["identity"].get("friction_per_ps"),
        "ns_per_day": status.ns_per_day,
        "threads": args.threads,
        "seed": status.seed,
        "segments": len(status.segments),
        "checkpoint": str(files["checkpoint"].resolve().relative_to(REPOSITORY))
        if files["checkpoint"].resolve().is_relative_to(REPOSITORY) else str(files["checkpoint"]),
        "checkpoint_sha256": file_sha256(files["checkpoint"]),
        "kernels": read_export_metadata(files["model"]).get("kernels") or "reference",
        "frames": len(times),
    }
    if files["labels"].is_file():
        labels = load_npz(files["labels"])
        evaluation = evaluate_checkpoint(files["checkpoint"], labels, per_frame=True)
        write_per_frame(evaluation, bench / "xtb_errors.csv")
        summary.update(xtb_frames=evaluation["structures"], xtb_energy_mae=evaluation["errors"]["energy_mae"],
                       xtb_force_mae=evaluation["errors"]["force_mae"], energy_unit=evaluation["energy_unit"],
                       force_unit=evaluation["force_unit"], xtb_errors_meV=evaluation["errors_meV"])
    else:
        summary.update(xtb_frames=0, xtb_energy_mae=None, xtb_force_mae=None)
    if len(times):
        if args.system == "buckyball_catcher":
            from so3krates_openmm.md.catcher import (
                centroid_distances,
                identify_ball,
                plot_distance,
                write_distance_csv,
            )

            atoms = identify_ball(structure)
            distance = centroid_distances(positions, atoms)
            start = float(centroid_distances(structure.positions_angstrom[None], atoms)[0])
            write_distance_csv(bench / "catcher_distance.csv", times, distance)
            plot_distance(times, distance, bench / "catcher_distance.png", reference_angstrom=start)
            summary["catcher_distance_angstrom"] = {
                "start": start, "mean": float(distance.mean()), "std": float(distance.std()),
                "min": float(distance.min()), "max": float(distance.max())}
        else:
            from so3krates_openmm.md.ramachandran import backbone_dihedrals, plot_ramachandran

            dihedrals = backbone_dihedrals(mdtraj_trajectory(structure.openmm_topology(), positions, times))
            plot_ramachandran(dihedrals, bench / "ramachandran.png",
                              title=f"{len(times)} frames over {times[-1] * 1e-3:.3g} ns, {args.temperature:g} K")
            summary["ramachandran_residues"] = dihedrals.residues
        path, stride = save_thinned_trajectory(structure.openmm_topology(), positions, times,
                                               bench / "trajectory_thinned.xtc", max_bytes=2_000_000)
        summary["thinned_trajectory"] = {"file": path.name, "topology": f"{path.stem}_topology.pdb",
                                         "frames": len(times[::stride]),
                                         "frame_interval_ps": float(np.median(np.diff(times))) * stride
                                         if len(times) > 1 else None, "bytes": path.stat().st_size}
    write_atomically(bench / "summary.json", json.dumps(summary, indent=2) + "\n")
    energy = "-" if summary["xtb_energy_mae"] is None else f"{summary['xtb_energy_mae']:.3g}"
    force = "-" if summary["xtb_force_mae"] is None else f"{summary['xtb_force_mae']:.3g}"
    print(f"{args.system}: {summary['simulated_ns']:.4g} of {summary['requested_ns']:.4g} ns, stable fraction "
          f"{summary['stable_fraction']:.4f}, {summary['ns_per_day'] or 0:.3g} ns/day; GFN2-xTB on "
          f"{summary['xtb_frames']} frames: energy MAE {energy}, force MAE {force}; {bench / 'summary.json'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", required=True, choices=SYSTEMS)
    parser.add_argument(NO_PROCESS_TUNING, action="store_true", help=NO_PROCESS_TUNING_HELP)
    parser.add_argument("--stage", choices=("all", "md", "label", "report"), default="all")
    parser.add_argument("--ns", type=float, default=1.0, help="run length, ns")
    parser.add_argument("--temperature", type=float, default=300.0, help="K")
    parser.add_argument("--timestep-fs", type=float, default=0.5)
    parser.add_argument("--hydrogen-mass", type=float, help="hydrogen mass repartitioning: hydrogen mass in amu")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of OpenMM and PyTorch")
    parser.add_argument("--platform", default="CPU")
    parser.add_argument("--kernels", choices=("reference", "analytic", "fused"), default="fused")
    parser.add_argument("--checkpoint", help="checkpoint to run (default: the system's shipped best_checkpoint.pt)")
    parser.add_argument("--segment-ps", type=float, default=50.0, help="closed segments of this length, ps")
    parser.add_argument("--frame-interval-fs", type=float, default=500.0,
                        help="time between trajectory frames and log lines, fs")
    parser.add_argument("--stability-interval", type=int, default=100, help="steps between stability checks")
    parser.add_argument("--checkpoint-ps", type=float, default=5.0, help="time between checkpoints, ps")
    parser.add_argument("--max-segments", type=int, help="close at most this many new segments in this call")
    parser.add_argument("--label-frames", type=int, default=50, help="frames to label with GFN2-xTB")
    parser.add_argument("--partial", action="store_true", help="label an unfinished run's frames")
    parser.add_argument("--root", type=Path, default=REPOSITORY / "runs" / "nanosecond")
    parser.add_argument("--bench-dir", type=Path, default=REPOSITORY / "bench" / "nanosecond",
                        help="the report goes to <bench-dir>/<system>/")
    parser.add_argument("--report-dir", type=Path, help="the report goes here instead of <bench-dir>/<system>/")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    tune_process(argv, openblas=True, log=print)  # as so3krates-data: freed memory kept, OpenBLAS for xTB
    if args.label_frames < 2:
        parser.error("--label-frames must be at least 2")
    files = paths(args)
    if not files["checkpoint"].is_file():
        parser.error(f"checkpoint {files['checkpoint']} does not exist")
    try:
        if args.stage in ("all", "md"):
            run_md(args, files)
        if args.stage in ("all", "label"):
            label(args, files)
        if args.stage in ("all", "report"):
            report(args, files)
    except (FileNotFoundError, ValueError) as problem:
        print(f"run.py: error: {problem}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
