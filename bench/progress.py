#!/usr/bin/env python
"""Carry the long runs across machines through git: the closed files of ``runs/`` <-> ``bench/progress/``.

    python bench/progress.py save     [--runs runs] [--store bench/progress] [--dry-run]
    python bench/progress.py restore  [--runs runs] [--store bench/progress]
    python bench/progress.py status   [--runs runs] [--store bench/progress]

``runs/`` is git-ignored and stays on the machine that wrote it; the next session may start on a new machine,
and a job still running at the end of a session is killed. ``save`` copies into ``bench/progress/<path below
runs/>`` the files of the long runs that are *closed*, those that never change again, so that committing the
store adds only new bytes; ``restore`` copies them back into a fresh ``runs/``, where the same commands then
resume (a stage whose result exists is skipped, a segmented run continues after its last closed segment).
Closed are:

- a **finished training run** (its ``test_report.json`` is written: a committee member, a stability-study model):
  ``test_report.json``, ``best_checkpoint.pt`` (weights only, ~2 MB), ``metrics.csv``, ``training_config.json``,
  ``learning_curve.png`` and the last :data:`KEPT_HISTORY` kept best checkpoints (``best_checkpoints/``, the
  candidates the stability study matches errors with); never ``last_checkpoint.pt``, whose optimiser state only
  serves to train on: a restored run is taken as finished
  (:func:`~so3krates_openmm.training.trainer.finished_run`);
- an **active-learning iteration** once its frames are selected: ``selected.npz``, then ``labelled.npz``,
  ``report.json`` and ``report.png`` as they appear, and of each finished MD run (``run.json`` or
  ``stopped.json`` written) its ``run.json``/``stopped.json``, ``uncertainty.csv`` and ``uncertainty.png``
  (the merged ``train_data.npz`` is not kept: the loop merges it again from the kept files);
- a **closed MD segment** (:mod:`so3krates_openmm.md.segments`): ``run.json``, ``log.csv``, ``stability.json``,
  ``final_state.xml`` (the next segment's start) and ``trajectory.dcd``; not its ``checkpoint.zip``.

Small records that a resumed run may rewrite (:data:`REWRITTEN`: ``segments.json``, whose total length may grow,
and the loop's ``settings.json`` and ``added_data.json``) are replaced in the store when they change. Any other
stored file that differs from ``runs/`` is a conflict (a closed file changed, or two machines ran the same
run): ``save`` names it, keeps the stored version and exits with 2. ``restore`` never overwrites a file of
``runs/``.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]

#: Kept best checkpoints of a finished training run carried along (the latest ones: the candidates closest to
#: the run's final error, which the stability study's matching tries first).
KEPT_HISTORY = 5
TRAINING_FILES = ("test_report.json", "best_checkpoint.pt", "metrics.csv", "training_config.json",
                  "learning_curve.png")
ITERATION_FILES = ("selected.npz", "labelled.npz", "report.json", "report.png")
MD_FINISHED = ("run.json", "stopped.json")
MD_FILES = (*MD_FINISHED, "uncertainty.csv", "uncertainty.png")
SEGMENT_FILES = ("run.json", "log.csv", "stability.json", "final_state.xml", "trajectory.dcd")
#: Small records a resumed run may rewrite: replaced in the store when they change.
REWRITTEN = ("segments.json", "settings.json", "added_data.json")


def training_run_files(run: Path) -> Iterator[Path]:
    """The closed files of a finished training run (see the module docstring)."""
    if not (run / "best_checkpoint.pt").is_file():
        return
    yield from (run / name for name in TRAINING_FILES if (run / name).is_file())
    yield from sorted((run / "best_checkpoints").glob("epoch_*.pt"))[-KEPT_HISTORY:]


def iteration_files(iteration: Path) -> Iterator[Path]:
    """The closed files of an active-learning iteration whose frames are selected."""
    yield from (iteration / name for name in ITERATION_FILES if (iteration / name).is_file())
    for md in sorted(iteration.glob("md_*K")):
        if any((md / name).is_file() for name in MD_FINISHED):
            yield from (md / name for name in MD_FILES if (md / name).is_file())


def segment_files(run: Path) -> Iterator[Path]:
    """``segments.json`` and the files of every closed segment of a segmented MD run."""
    from so3krates_openmm.md.segments import segmented_status

    yield run / "segments.json"
    for segment in segmented_status(run).segments:
        if segment.closed:
            yield from (segment.directory / name for name in SEGMENT_FILES if (segment.directory / name).is_file())


def closed_files(runs: Path) -> list[Path]:
    """Every closed file below ``runs`` (module docstring), sorted."""
    found: set[Path] = set()
    for report in runs.rglob("test_report.json"):
        found.update(training_run_files(report.parent))
    for selected in runs.rglob("iteration_*/selected.npz"):
        found.update(iteration_files(selected.parent))
    for manifest in runs.rglob("segments.json"):
        found.update(segment_files(manifest.parent))
    for name in ("settings.json", "added_data.json"):  # the active-learning loop's records
        found.update(path for path in runs.rglob(name) if (path.parent / "train_data_00.npz").is_file())
    return sorted(found)


def save(runs: Path, store: Path, dry_run: bool = False) -> int:
    """Copy the closed files of ``runs`` that the store lacks (or, for :data:`REWRITTEN`, holds another version
    of) into ``store``; returns the number of conflicts."""
    added = replaced = size = 0
    conflicts = []
    for path in closed_files(runs):
        target = store / path.relative_to(runs)
        if target.is_file():
            if filecmp.cmp(path, target, shallow=False):
                continue
            if path.name not in REWRITTEN:
                conflicts.append(path)
                continue
            replaced += 1
        else:
            added += 1
        size += path.stat().st_size
        if not dry_run:
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{target.name}.partial")
            shutil.copyfile(path, temporary)
            temporary.replace(target)
    verb = "would copy" if dry_run else "copied"
    print(f"{verb} {added} new and {replaced} rewritten file(s), {size / 1e6:.1f} MB, into {store}")
    for path in conflicts:
        print(f"conflict: {path} differs from {store / path.relative_to(runs)}, which is kept (a closed file "
              "changed, or another machine ran this run); move one of them away", file=sys.stderr)
    return len(conflicts)


def restore(runs: Path, store: Path) -> int:
    """Copy every stored file that ``runs`` lacks back into it; returns the number copied."""
    copied = 0
    for stored in sorted(path for path in store.rglob("*") if path.is_file()):
        target = runs / stored.relative_to(store)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.partial")
        shutil.copyfile(stored, temporary)
        temporary.replace(target)
        copied += 1
    print(f"restored {copied} file(s) from {store} into {runs}")
    return copied


def status(runs: Path, store: Path) -> None:
    """Print, per top-level run folder, the closed files in ``runs`` and how many of them the store lacks."""
    by_run: dict[str, list[int]] = {}
    for path in closed_files(runs) if runs.is_dir() else []:
        top = path.relative_to(runs).parts[0]
        counts = by_run.setdefault(top, [0, 0])
        counts[0] += 1
        counts[1] += not (store / path.relative_to(runs)).is_file()
    stored = {path.relative_to(store).parts[0] for path in store.rglob("*") if path.is_file()} if store.is_dir() \
        else set()
    for top in sorted(set(by_run) | stored):
        closed, unsaved = by_run.get(top, [0, 0])
        print(f"{top}: {closed} closed file(s) in {runs / top}, {unsaved} not yet saved")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("save", "restore", "status"))
    parser.add_argument("--runs", type=Path, default=REPOSITORY / "runs", help="the runs folder (git-ignored)")
    parser.add_argument("--store", type=Path, default=REPOSITORY / "bench" / "progress",
                        help="the committed copy of the closed files")
    parser.add_argument("--dry-run", action="store_true", help="save: only say what would be copied")
    args = parser.parse_args(argv)
    if args.action == "save":
        if not args.runs.is_dir():
            print(f"progress.py: error: {args.runs} does not exist: nothing to save", file=sys.stderr)
            return 2
        return 2 if save(args.runs, args.store, args.dry_run) else 0
    if args.action == "restore":
        if not args.store.is_dir():
            print(f"progress.py: nothing stored in {args.store}")
            return 0
        restore(args.runs, args.store)
        return 0
    status(args.runs, args.store)
    return 0


if __name__ == "__main__":
    sys.exit(main())
