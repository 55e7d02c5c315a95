#!/usr/bin/env python
"""Train an equivariant and an invariant SO3krates on the same split and match their test force MAE (issue 17).

    python bench/stability_study/train_pair.py --molecule ac_ala3_nhme|dha [--model equivariant|invariant|both]
        [--max-epochs 80] [--max-time 10h] [--threads 1] [--config extra.yaml] [--full-budget] [--match-only]
        [--tolerance 0.1] [--root runs/stability_study] [--bench-dir bench/stability_study]

Training (``so3krates-train``'s :class:`Trainer`): both models get the same everything (data, the split file
of the molecule, seed 0, the paper's recipe, the same epoch budget) except ``degrees`` ((1, 2, 3) and ()). The
runs go to ``<root>/<molecule>/train_<model>/`` and keep every new best checkpoint
(``best_checkpoints/epoch_NNNN.pt``, weights only, ~2 MB each, git-ignored). The same command again resumes an
unfinished run (kill -9 included: from its last checkpoint); ``--model`` trains one of the two, so the two can
run side by side in two processes. ``--config FILE`` adds training options for both (e.g. a tiny model for a
smoke test). A run started (or resumed) after the other model's run has finished stops as soon as its
validation force MAE is below the finished run's by half the tolerance (``--target-force-mae``): the kept
best checkpoints then bracket the error to match, and the budget of the more accurate model is not spent
past it (``--full-budget`` turns this off). ``--model both`` trains the invariant model first.

Matching (when both runs have finished, or with ``--match-only``), by
:func:`so3krates_openmm.training.matching.match_force_errors`: the run with the larger validation force MAE
is the reference (its best checkpoint); of the other run's kept best checkpoints, ordered by how close their
validation force MAE is to the reference's, the first whose test force MAE is within ``--tolerance`` (10 %)
of the reference's is taken. Then:

- the two chosen checkpoints are copied to ``<bench-dir>/<molecule>/<model>_checkpoint.pt`` (weights only,
  ~2 MB, to be committed: the MD can then continue on another machine) and exported for MD
  (``<root>/<molecule>/<model>/model.pt``, both with the fused kernels);
- per-frame errors of both on the same test frames (``so3krates-eval --per-frame``):
  ``<bench-dir>/<molecule>/errors.json`` (mean, std, median, 95th percentile, max of the per-frame force MAE and
  absolute energy error) and ``errors_histogram.png`` (the paper's Fig. 5a);
- ``<bench-dir>/<molecule>/models.json``: checkpoints, exported models, epochs, validation and test force MAE of
  each, the rule and whether the test MAEs are within the tolerance.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml
from study_common import BENCH_DIR, DEGREES, KERNELS, MODELS, RUNS_DIR, export_for_md, molecule, recorded

from so3krates_openmm.cli.common import NO_PROCESS_TUNING, NO_PROCESS_TUNING_HELP, tune_process


def training_options(name: str, model: str, args: argparse.Namespace) -> dict:
    """The options of one run: the paper's recipe, the molecule's data and split, the model's degrees."""
    target = molecule(name)
    values = {
        "data": [str(path) for path in target.data],
        "split_file": str(target.split),
        "seed": 0,
        "degrees": DEGREES[model],
        "keep_best_checkpoints": True,
        "max_epochs": args.max_epochs,
        "max_time": args.max_time,
        "threads": args.threads,
        "output": str(args.root / name / f"train_{model}"),
        "progress": not args.no_progress,
        "checkpoint_interval": "10m",
    }
    if args.config is not None:
        extra = yaml.safe_load(Path(args.config).read_text()) or {}
        clash = sorted(set(extra) & {"data", "split_file", "degrees", "output", "seed"})
        if clash:
            raise SystemExit(f"{args.config}: {', '.join(clash)} are set by this script and must be the same for "
                             "both models; remove them from the file")
        values.update(extra)
    return values


#: Epoch budget of each model: 80 epochs of the peptide's 2250 training frames take about 2 h on one core, so a
#: training fits in one working session (a training cut off by the session's end is lost with its machine: its
#: optimiser state is not carried over, bench/progress.py).
MAX_EPOCHS = 80

#: ``--model both`` trains the invariant model first: the equivariant run, usually the more accurate, can then
#: stop once it matches the invariant's error (``--full-budget`` trains both to the end).
TRAINING_ORDER = ("invariant", "equivariant")

#: Entries of models.json that are paths (written relative to the repository when inside it).
PATH_KEYS = ("checkpoint", "matched_checkpoint", "model_pt")


def train_one(name: str, model: str, args: argparse.Namespace) -> dict | None:
    """Train (or resume) one model; returns its test report."""
    from so3krates_openmm.training import config_from_dict, train
    from so3krates_openmm.training.trainer import finished_run

    values = training_options(name, model, args)
    output = Path(values["output"])
    carried = finished_run(output)
    if carried is not None:  # restored by bench/progress.py without its training state
        print(f"== {name} {model}: finished in {output} ({carried.stop_reason})", flush=True)
        return carried.test_report
    values["resume"] = (output / "last_checkpoint.pt").is_file()
    other = args.root / name / f"train_{next(other for other in MODELS if other != model)}"
    if not args.full_budget and finished(other):
        from so3krates_openmm.training.matching import run_checkpoints

        reference = run_checkpoints(other)[-1]["valid_force_mae"]
        values["target_force_mae"] = reference * (1.0 - args.tolerance / 2.0)
        print(f"== {name} {model}: stops when its validation force MAE reaches {values['target_force_mae']:.4g} "
              f"({1.0 - args.tolerance / 2.0:.0%} of the finished {other.name}'s {reference:.4g}) or at its budget",
              flush=True)
    print(f"== {name} {model}: {'resuming' if values['resume'] else 'training'} in {output}", flush=True)
    result = train(config_from_dict(values, source=f"{name} {model}"))
    return result.test_report


def finished(run: Path) -> bool:
    """Whether a training run has written its test report (it stopped by a criterion or its time budget)."""
    return (run / "test_report.json").is_file()


def match_and_report(name: str, args: argparse.Namespace) -> dict:
    """Match the two runs, export the chosen checkpoints, write errors.json, the histogram and models.json."""
    from so3krates_openmm.files import write_atomically
    from so3krates_openmm.model.checkpoint import file_sha256
    from so3krates_openmm.training.evaluation import evaluate_checkpoint
    from so3krates_openmm.training.matching import error_statistics, match_force_errors, plot_error_histograms

    target = molecule(name)
    runs = {model: args.root / name / f"train_{model}" for model in MODELS}
    dataset = target.dataset()
    test = target.split_part("test")
    match = match_force_errors(runs, dataset, test, tolerance=args.tolerance)
    out_dir = args.bench_dir / name
    out_dir.mkdir(parents=True, exist_ok=True)
    per_frame, table = {}, {}
    match["models"] = {model: match["models"][model] for model in MODELS}
    for model, entry in match["models"].items():
        chosen = out_dir / f"{model}_checkpoint.pt"  # weights only (~2 MB), committed with the results
        md_runs = args.root / name / "md" / model
        if chosen.is_file() and md_runs.is_dir() and file_sha256(chosen) != file_sha256(entry["checkpoint"]):
            raise SystemExit(f"{md_runs} holds MD runs of the previously matched {model} checkpoint ({chosen}); "
                             "this match chose another one. Move those runs away first (they would continue with "
                             "another model)")
        shutil.copyfile(entry["checkpoint"], chosen)
        entry["matched_checkpoint"] = str(chosen)
        entry["model_pt"] = str(export_for_md(chosen, target.structure, args.root / name / model / "model.pt",
                                              KERNELS[model]))
        entry["kernels"] = KERNELS[model]
        report = evaluate_checkpoint(chosen, dataset, test, per_frame=True)
        frames = report["per_frame"]
        per_frame[model] = frames["force_mae"]
        table[model] = {"force_mae_per_frame": error_statistics(frames["force_mae"]),
                        "energy_abs_error_per_frame": error_statistics([abs(e) for e in frames["energy_error"]]),
                        "force_max_atom_error_per_frame": error_statistics(frames["force_max_error"])}
    unit = match["force_unit"]
    plot_error_histograms(per_frame, out_dir / "errors_histogram.png", xlabel=f"per-structure force MAE ({unit})",
                          title=f"{name}: {len(test)} test structures")
    errors = {"molecule": name, "test_frames": len(test), "force_unit": unit,
              "energy_unit": unit.split("/Angstrom")[0], "statistics": table,
              "columns": "frames, mean, std (population), median, p95 (95th percentile), max over the test frames"}
    write_atomically(out_dir / "errors.json", json.dumps(errors, indent=2) + "\n")

    models = {
        "molecule": name,
        "data": [recorded(path) for path in target.data],
        "split": recorded(target.split),
        "test_frames": len(test),
        "force_unit": unit,
        "matched": match["matched"],
        "relative_difference": match["relative_difference"],
        "tolerance": match["tolerance"],
        "rule": match["rule"],
        "models": {model: {**{key: recorded(value) if key in PATH_KEYS else value for key, value in entry.items()},
                           "degrees": DEGREES[model], "training_run": recorded(runs[model])}
                   for model, entry in match["models"].items()},
        "candidates_tried": [{**entry, "checkpoint": recorded(entry["checkpoint"])}
                             for entry in match["candidates_tried"]],
    }
    write_atomically(out_dir / "models.json", json.dumps(models, indent=2) + "\n")
    maes = ", ".join(f"{model} {entry['test_force_mae']:.4g} (epoch {entry['epoch']})"
                     for model, entry in match["models"].items())
    verdict = "WITHIN" if match["matched"] else "NOT within"
    print(f"{name}: test force MAE {maes} {unit}: relative difference {match['relative_difference']:.1%}, "
          f"{verdict} the {args.tolerance:.0%} tolerance; {out_dir / 'models.json'}, {out_dir / 'errors.json'}, "
          f"{out_dir / 'errors_histogram.png'}")
    return models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--molecule", required=True, choices=("ac_ala3_nhme", "dha"))
    parser.add_argument(NO_PROCESS_TUNING, action="store_true", help=NO_PROCESS_TUNING_HELP)
    parser.add_argument("--model", choices=(*MODELS, "both"), default="both", help="which run(s) to train")
    parser.add_argument("--max-epochs", type=int, default=MAX_EPOCHS, help=f"epoch budget of each model (default "
                        f"{MAX_EPOCHS})")
    parser.add_argument("--max-time", help="training-time budget of each model over all sessions, e.g. 10h")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads per training process")
    parser.add_argument("--config", help="YAML file of further training options for both models")
    parser.add_argument("--full-budget", action="store_true",
                        help="train to the budget even when the other model has finished (default: stop once the "
                             "validation force MAE is below the finished model's by half the tolerance)")
    parser.add_argument("--match-only", action="store_true", help="only match, export and report (no training)")
    parser.add_argument("--tolerance", type=float, default=0.10, help="relative test force MAE tolerance")
    parser.add_argument("--root", type=Path, default=RUNS_DIR, help="runs folder (git-ignored)")
    parser.add_argument("--bench-dir", type=Path, default=BENCH_DIR, help="where models.json and errors go")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    tune_process(argv)  # as the commands: glibc keeps freed memory, idle OpenMP threads sleep
    from so3krates_openmm.data.dataset import DataError
    from so3krates_openmm.training import ConfigError, TrainingError

    try:
        runs = [args.root / args.molecule / f"train_{model}" for model in MODELS]
        matched = args.bench_dir / args.molecule / "models.json"
        if not args.match_only and all(finished(run) for run in runs) and matched.is_file():
            # Both runs were finished before this call and the pair is matched: matching again would only
            # rewrite the committed records with another processor's last digits.
            print(f"{args.molecule}: both runs finished and matched ({recorded(matched)}); --match-only matches "
                  "again")
            return 0
        if not args.match_only:
            for model in TRAINING_ORDER if args.model == "both" else (args.model,):
                train_one(args.molecule, model, args)
        if not all(finished(run) for run in runs):
            waiting = [str(run) for run in runs if not finished(run)]
            print(f"not matched yet: {', '.join(waiting)} not finished (run it, then this command again)")
            return 0 if not args.match_only else 2
        match_and_report(args.molecule, args)
    except (ConfigError, DataError, TrainingError, FileNotFoundError, ValueError) as problem:
        print(f"train_pair.py: error: {problem}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
