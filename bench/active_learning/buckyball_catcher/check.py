#!/usr/bin/env python
"""The catcher's second round of active learning, checked: a new 500 K run of the final model against GFN2-xTB,
and ``summary.json`` (issue 16, item 5).

    python bench/active_learning/buckyball_catcher/check.py [--loop runs/al_catcher] [--ps 50] [--threads 1]
        [--stage all|md|label|report] [--label-frames 50] [--output DIR] [--baseline CHECKPOINT]

"Shipped" below is the model the loop started from (``--baseline``; default: the round-1 model, shipped until the
loop's final model replaced it on 2026-12-04).

Run it after the loop (``so3krates-active-learning --config bench/active_learning/buckyball_catcher/config.yaml``)
has finished. Stages ``md`` and ``label`` are those of ``bench/nanosecond/run.py`` (resumable, closed segments;
its report follows them): a Langevin run at 500 K of member 0 of the final committee (``--ps``, 0.5 fs, the
fused kernels) and GFN2-xTB labels of ``--label-frames`` frames spread over it, in ``runs/al_catcher_check/``.
Stage ``report`` writes, beside this file (or to ``--output``):

- ``summary.json``: ``iterations``, ``frames_labelled``, ``md_energy_mae_before`` (the shipped model on the
  GFN2-xTB-labelled frames of its own 500 K run, ``bench/showcase/catcher_round1/md_500K_frames.npz``),
  ``md_energy_mae_after`` and ``md_force_mae_after`` (the final model on the labelled frames of its own new
  500 K run, frames no model was trained on), ``test_force_mae_after`` and ``test_energy_mae_after`` (the
  final model on its test split of the merged data, with the shipped model on the same frames),
  ``uncertainty_error_spearman`` (all iterations' labelled frames pooled, and per iteration), the errors on
  the half-open frames (centroid distance beyond the largest in the shipped model's training data) before
  and after, the C60-catcher distance of both 500 K runs against the range the GFN2-xTB-labelled training
  frames cover, and whether the final model should ship (better along MD, test energy and force errors no
  worse);
- ``binding_curve/``: the ball pulled rigidly out of the relaxed complex, the final and the shipped model against
  GFN2-xTB (``bench/showcase/catcher_binding_curve.py``; binding energies in ``summary.json``);
- ``check.png``: the C60-catcher distance of the two 500 K runs over time with the labelled range, and the
  energy errors of both models along them; ``calibration.png``: disagreement against true force error;
- ``check_500K/``: the new run's report (``bench/nanosecond/run.py``: summary, errors along the run, the
  distance, a thinned trajectory).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from so3krates_openmm.cli.common import NO_PROCESS_TUNING, NO_PROCESS_TUNING_HELP, tune_process
from so3krates_openmm.model.checkpoint import file_sha256

REPOSITORY = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
SHIPPED = REPOSITORY / "so3krates_openmm" / "pretrained" / "buckyball_catcher"
#: the round-1 model, which the loop started from (the shipped one until 2026-12-04; config.yaml)
ROUND1_CHECKPOINT = REPOSITORY / "datasets" / "buckyball_catcher" / "round1_checkpoint.pt"
#: the shipped model's own 500 K run, labelled with GFN2-xTB after round 1 (96 frames)
ROUND1_500K_FRAMES = REPOSITORY / "bench" / "showcase" / "catcher_round1" / "md_500K_frames.npz"
ROUND1_500K_DISTANCE = REPOSITORY / "bench" / "showcase" / "catcher_round1" / "distance_500K" / "catcher_distance.csv"
#: the data the shipped model was trained on: its largest C60-catcher distance defines "half-open"
SHIPPED_TRAINING_DATA = [REPOSITORY / "datasets" / "buckyball_catcher" / name
                         for name in ("dataset.npz", "md_frames_round1.npz")]
TEMPERATURE_K = 500.0
RIGID_PULL_FRAMES = REPOSITORY / "bench" / "showcase" / "catcher_round1" / "rigid_pull" / "frames.npz"


def loop_summary(loop: Path) -> dict:
    """The finished loop's ``summary.json``."""
    path = loop / "summary.json"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: finish the loop first (so3krates-active-learning --config "
                         f"{HERE.relative_to(REPOSITORY) / 'config.yaml'})")
    return json.loads(path.read_text())


def in_repository(path: str | Path) -> Path:
    """A path recorded relative to the repository (where the loop ran) as an absolute path."""
    path = Path(path)
    return path if path.is_absolute() else REPOSITORY / path


def run_stages(args: argparse.Namespace, final: Path, stages: list[str]) -> None:
    """The new 500 K run's stages through ``bench/nanosecond/run.py`` (its command line is the interface); its
    report (errors along the run, distance, thinned trajectory) goes to ``check_500K/``."""
    for stage in stages:
        command = [sys.executable, str(REPOSITORY / "bench" / "nanosecond" / "run.py"),
                   "--system", "buckyball_catcher", "--stage", stage, "--temperature", f"{TEMPERATURE_K:g}",
                   "--ns", f"{args.ps * 1e-3:g}", "--segment-ps", f"{min(args.ps, 10.0):g}", "--checkpoint", str(final),
                   "--threads", str(args.threads), "--label-frames", str(args.label_frames),
                   "--frame-interval-fs", "100", "--root", str(args.root),
                   "--report-dir", str(args.output / "check_500K")]
        if args.no_progress:
            command.append("--no-progress")
        if args.no_process_tuning:
            command.append(NO_PROCESS_TUNING)
        subprocess.run(command, check=True)


def binding_curve(args: argparse.Namespace, final: Path) -> dict:
    """The rigid-pull binding curve of the final and the shipped model against GFN2-xTB
    (``bench/showcase/catcher_binding_curve.py`` on its committed frames) -> ``binding_curve/``."""
    output = args.output / "binding_curve"
    subprocess.run([sys.executable, str(REPOSITORY / "bench" / "showcase" / "catcher_binding_curve.py"),
                    "--frames", str(RIGID_PULL_FRAMES), "--output", str(output), "--threads", str(args.threads),
                    *([NO_PROCESS_TUNING] if args.no_process_tuning else []),
                    "--model", f"shipped={args.baseline}", f"final={final}"], check=True)
    curve = json.loads((output / "binding_curve.json").read_text())
    return {"gfn2_xtb_binding_energy": curve["gfn2_xtb_binding_energy"],
            **{f"{name}_binding_energy": model["binding_energy"] for name, model in curve["models"].items()},
            **{f"{name}_largest_error": model["largest_error"] for name, model in curve["models"].items()},
            "note": "the ball pulled rigidly out along the opening, energies relative to the relaxed complex; the "
                    "frames are in the round-2 loop's training data (appended on resume)"}


def distances(positions_angstrom: np.ndarray) -> np.ndarray:
    """C60-catcher centroid distances (Å) of frames of the shipped structure's atom order."""
    from so3krates_openmm.data.structures import read_structure
    from so3krates_openmm.md.catcher import centroid_distances, identify_ball

    return centroid_distances(positions_angstrom, identify_ball(read_structure(SHIPPED / "structure.pdb")))


def frame_errors(checkpoint: Path, data_path: Path) -> dict:
    """Per-frame errors of ``checkpoint`` on a labelled file (data's units)."""
    from so3krates_openmm.data.formats import load_dataset
    from so3krates_openmm.training.evaluation import evaluate_checkpoint

    return evaluate_checkpoint(checkpoint, load_dataset(data_path), per_frame=True)


def mae(report: dict, key: str, mask: np.ndarray | None = None) -> float | None:
    """Mean absolute per-frame ``key`` over ``mask`` (all frames by default)."""
    values = np.abs(np.asarray(report["per_frame"][key]))
    values = values if mask is None else values[mask]
    return float(values.mean()) if len(values) else None


def test_errors(final: Path, baseline: Path, data: Path) -> dict:
    """The final model and the shipped one on the final model's test split of the merged data, and on the part of
    it drawn from the shipped model's own data (the merged data begins with those files): the distribution the
    shipped model was made for, without the loop's new frames."""
    from so3krates_openmm.data.formats import load_dataset
    from so3krates_openmm.training.evaluation import evaluate_checkpoint
    from so3krates_openmm.training.splits import read_split
    from so3krates_openmm.training.trainer import SPLIT_FILE

    dataset = load_dataset(data)
    test = np.asarray(read_split(final.parent / SPLIT_FILE, "test"))
    original = test[test < sum(len(load_dataset(path)) for path in SHIPPED_TRAINING_DATA)]
    result = {"frames": int(len(test)), "original_frames": int(len(original)),
              "data": str(data.relative_to(REPOSITORY)) if data.is_relative_to(REPOSITORY) else str(data)}
    for name, frames in (("", test), ("original_", original)):
        result[f"{name}after"] = evaluate_checkpoint(final, dataset, frames)["errors"]
        result[f"{name}shipped"] = evaluate_checkpoint(baseline, dataset, frames)["errors"]
    result["original_note"] = ("original_*: the test frames from the shipped model's training data files "
                               f"({', '.join(path.name for path in SHIPPED_TRAINING_DATA)}); the shipped model may "
                               "have trained on some of them (its split differs), which favours it")
    return result


def calibration(loop: Path, iterations: int) -> dict:
    """Spearman correlation of committee force disagreement with the true maximum force error, pooled over the
    iterations' labelled frames and per iteration."""
    from scipy.stats import spearmanr

    disagreement, error, per_iteration = [], [], []
    for i in range(iterations):
        report = json.loads((loop / f"iteration_{i:02d}" / "report.json").read_text())
        disagreement.append(np.asarray(report["calibration"]["force_std_max"]))
        error.append(np.asarray(report["calibration"]["force_max_error"]))
        per_iteration.append(report["uncertainty_error_spearman"])
    disagreement, error = np.concatenate(disagreement), np.concatenate(error)
    return {"pooled": float(spearmanr(disagreement, error).statistic), "per_iteration": per_iteration,
            "frames": int(len(error)), "force_std_max": disagreement, "force_max_error": error}


def plot(output: Path, old_time: np.ndarray, old_distance: np.ndarray, new_time: np.ndarray, new_distance: np.ndarray,
         labelled_range: tuple[float, float], before: dict, after: dict, spearman: dict, unit: str) -> None:
    """``check.png`` and ``calibration.png``."""
    from so3krates_openmm.md.plotting import pyplot, save_figure

    plt = pyplot()
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    top.axhspan(*labelled_range, color="0.85", label="GFN2-xTB-labelled training frames")
    top.plot(old_time, old_distance, lw=0.7, label="shipped model (round 1)")
    top.plot(new_time, new_distance, lw=0.7, label="after active learning")
    top.set_ylabel("C$_{60}$-catcher distance (Å)")
    top.set_title(f"Buckyball catcher at {TEMPERATURE_K:g} K")
    top.legend(fontsize=8)
    for report, name in ((before, "shipped model (round 1)"), (after, "after active learning")):
        bottom.plot(report["per_frame"]["time_ps"], np.abs(report["per_frame"]["energy_error"]), "o", ms=3,
                    label=name)
    bottom.set_xlabel("time (ps)")
    bottom.set_ylabel(f"|energy error| ({unit})")
    bottom.legend(fontsize=8)
    save_figure(figure, output / "check.png")

    figure, axis = plt.subplots(figsize=(5, 4))
    axis.scatter(spearman["force_std_max"], spearman["force_max_error"], s=10)
    axis.set_xlabel(f"committee max force std ({unit}/Å)")
    axis.set_ylabel(f"true max force error ({unit}/Å)")
    axis.set_title(f"{spearman['frames']} labelled frames, Spearman {spearman['pooled']:.2f}", fontsize=9)
    save_figure(figure, output / "calibration.png")


def report(args: argparse.Namespace, summary: dict, final: Path) -> dict:
    """``summary.json`` and the figures (see the module docstring)."""
    from so3krates_openmm.data.formats import load_dataset
    from so3krates_openmm.files import write_atomically

    new_frames = args.root / "buckyball_catcher" / "xtb_labels.npz"
    if not new_frames.is_file():
        raise SystemExit(f"{new_frames} does not exist: run the stages md and label first")
    shipped = args.baseline
    support = np.concatenate([distances(load_dataset(path).stacked()[1]) for path in SHIPPED_TRAINING_DATA])
    half_open_threshold = float(support.max())
    old = load_dataset(ROUND1_500K_FRAMES)
    old_half_open = distances(old.stacked()[1]) > half_open_threshold
    before_old, after_old = frame_errors(shipped, ROUND1_500K_FRAMES), frame_errors(final, ROUND1_500K_FRAMES)
    before_new, after_new = frame_errors(shipped, new_frames), frame_errors(final, new_frames)
    for errors, data in ((before_old, old), (after_old, old)):
        errors["per_frame"]["time_ps"] = np.asarray(data.metadata["frame_times_ps"], dtype=float)
    new_times = np.asarray(load_dataset(new_frames).metadata["frame_times_ps"], dtype=float)
    before_new["per_frame"]["time_ps"] = after_new["per_frame"]["time_ps"] = new_times
    merged = in_repository(summary["committee"][0]).parents[2] / f"iteration_{summary['iterations'] - 1:02d}"
    test = test_errors(final, shipped, merged / "train_data.npz")
    labelled = np.concatenate([distances(load_dataset(path).stacked()[1])
                               for path in [*SHIPPED_TRAINING_DATA, ROUND1_500K_FRAMES, merged / "train_data.npz"]])
    old_curve = np.loadtxt(ROUND1_500K_DISTANCE, delimiter=",", skiprows=1)
    new_curve = np.loadtxt(args.output / "check_500K" / "catcher_distance.csv", delimiter=",", skiprows=1)
    spearman = calibration(args.loop, summary["iterations"])
    run = json.loads((args.output / "check_500K" / "summary.json").read_text())
    unit = after_new["energy_unit"]
    result = {
        "iterations": summary["iterations"],
        "converged": summary["converged"],
        "frames_labelled": summary["frames_labelled"],
        "energy_unit": unit,
        "force_unit": f"{unit}/Angstrom",
        "md_energy_mae_before": mae(before_old, "energy_error"),
        "md_force_mae_before": mae(before_old, "force_mae"),
        "md_energy_mae_after": mae(after_new, "energy_error"),
        "md_force_mae_after": mae(after_new, "force_mae"),
        "md_frames": {"before": f"{ROUND1_500K_FRAMES.relative_to(REPOSITORY)} ({len(old)} frames of the shipped "
                                "model's 500 K run)",
                      "after": f"{len(new_times)} frames of the final model's new {TEMPERATURE_K:g} K run "
                               f"({run['simulated_ns'] * 1e3:.4g} ps), in no training set"},
        "cross": {"shipped_on_new_run": {"energy_mae": mae(before_new, "energy_error"),
                                         "force_mae": mae(before_new, "force_mae")},
                  "final_on_round1_run": {"energy_mae": mae(after_old, "energy_error"),
                                          "force_mae": mae(after_old, "force_mae"),
                                          "note": "these frames are in the loop's training data"}},
        "half_open": {"threshold_angstrom": half_open_threshold, "frames": int(old_half_open.sum()),
                      "definition": "frames of the round-1 500 K run whose C60-catcher centroid distance exceeds "
                                    "the largest in the shipped model's training data",
                      "energy_mae_before": mae(before_old, "energy_error", old_half_open),
                      "energy_mae_after": mae(after_old, "energy_error", old_half_open),
                      "note": "these frames are in the loop's training data (its config's data); the new run's "
                              "frames, in no training set, are in md_energy_mae_after"},
        "test_force_mae_after": test["after"]["force_mae"],
        "test_energy_mae_after": test["after"]["energy_mae"],
        "test_set": test,
        "binding_curve": binding_curve(args, final),
        "uncertainty_error_spearman": spearman["pooled"],
        "uncertainty_error_spearman_per_iteration": spearman["per_iteration"],
        "uncertainty_frames": spearman["frames"],
        "catcher_distance_angstrom": {
            "labelled_range": [float(labelled.min()), float(labelled.max())],
            "round1_500K_run": {"mean": float(old_curve[:, 1].mean()), "max": float(old_curve[:, 1].max())},
            "new_500K_run": {"mean": float(new_curve[:, 1].mean()), "max": float(new_curve[:, 1].max())},
            "new_run_within_labelled_range": bool(new_curve[:, 1].max() <= labelled.max()),
        },
        "new_run": {key: run.get(key) for key in ("simulated_ns", "stable_fraction", "monitor_verdict",
                                                  "timestep_fs", "ns_per_day", "kernels", "checkpoint_sha256")},
        "final_checkpoint": str(final.relative_to(REPOSITORY)) if final.is_relative_to(REPOSITORY) else str(final),
    }
    better_along_md = (result["md_energy_mae_after"] < result["md_energy_mae_before"]
                       and result["md_force_mae_after"] <= result["md_force_mae_before"])
    no_worse_on_test = all(test[f"{part}after"][key] <= test[f"{part}shipped"][key]
                           for part in ("", "original_") for key in ("energy_mae", "force_mae"))
    result["ship"] = {"better_along_md": better_along_md, "no_worse_on_test": no_worse_on_test,
                      "recommended": bool(better_along_md and no_worse_on_test),
                      "rule": "energy MAE along its own 500 K run lower and force MAE no higher than the shipped "
                              "model's along its own; test energy and force MAE no higher than the shipped "
                              "model's on the same test frames, all of them and those from the shipped model's "
                              "own data"}
    plot(args.output, old_curve[:, 0], old_curve[:, 1], new_curve[:, 0], new_curve[:, 1],
         (float(labelled.min()), float(labelled.max())), before_old, after_new, spearman, unit)
    write_atomically(args.output / "summary.json", json.dumps(result, indent=2) + "\n")
    half_open = result["half_open"]
    print(f"energy MAE along 500 K MD: {result['md_energy_mae_before']:.3g} (shipped) -> "
          f"{result['md_energy_mae_after']:.3g} {unit}; half-open frames {half_open['energy_mae_before']:.3g} "
          f"-> {half_open['energy_mae_after']:.3g}; test force MAE {test['shipped']['force_mae']:.3g} -> "
          f"{test['after']['force_mae']:.3g}, energy {test['shipped']['energy_mae']:.3g} -> "
          f"{test['after']['energy_mae']:.3g}; Spearman {spearman['pooled']:.2f}; "
          f"ship: {result['ship']['recommended']}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loop", type=Path, default=REPOSITORY / "runs" / "al_catcher", help="the loop's folder")
    parser.add_argument(NO_PROCESS_TUNING, action="store_true", help=NO_PROCESS_TUNING_HELP)
    parser.add_argument("--root", type=Path, default=REPOSITORY / "runs" / "al_catcher_check",
                        help="where the new run goes")
    parser.add_argument("--output", type=Path, default=HERE,
                        help="where summary.json, the figures and check_500K/ go")
    parser.add_argument("--stage", choices=("all", "md", "label", "report"), default="all")
    parser.add_argument("--ps", type=float, default=50.0,
                        help="length of the new 500 K run, ps (the issue asks for >= 50)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--label-frames", type=int, default=50)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--baseline", type=Path, default=ROUND1_CHECKPOINT,
                        help="the model the loop started from, compared as 'shipped' (default: the round-1 model, "
                             "shipped until the loop's model replaced it)")
    args = parser.parse_args(argv)
    tune_process(argv)  # as the commands: glibc keeps freed memory, idle OpenMP threads sleep
    summary = loop_summary(args.loop)
    final = in_repository(summary["committee"][0])
    if file_sha256(final) == file_sha256(args.baseline):
        raise SystemExit(f"{final} is the --baseline model ({args.baseline}): compare it with the model it started "
                         "from (--baseline)")
    if args.stage in ("all", "md", "label"):
        run_stages(args, final, ["md", "label", "report"] if args.stage == "all" else [args.stage, "report"])
    if args.stage in ("all", "report"):
        report(args, summary, final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
