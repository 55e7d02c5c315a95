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
  ``learning_curve.png``, ``split.json`` and the last :data:`KEPT_HISTORY` kept best checkpoints
  (``best_checkpoints/``, the candidates the stability study matches errors with); never ``last_checkpoint.pt``,
  whose optimiser state only serves to train on: a restored run is taken as finished
  (:func:`~so3krates_openmm.training.trainer.finished_run`);
- an **active-learning iteration** once its frames are selected: ``selected.npz``, then ``labelled.npz``,
  ``report.json`` and ``report.png`` as they appear, and of each finished MD run (``run.json`` or
  ``stopped.json`` written) its ``run.json``/``stopped.json``, ``uncertainty.csv`` and ``uncertainty.png``
  (the merged ``train_data.npz`` is not kept: the loop merges it again from the kept files);
- a **closed MD segment** (:mod:`so3krates_openmm.md.segments`): ``run.json``, ``log.csv``, ``stability.json``,
  ``final_state.xml`` (the next segment's start) and ``trajectory.dcd``; not its ``checkpoint.zip``; of a
  finished stability-study run only its ``result.json`` (the coefficient and the monitor's verdict); the same
  files of a finished exploration run (:func:`~so3krates_openmm.md.exploration.run_explorations`, beside its
  ``md_runs.jsonl``);
- a **task journal** (``*.jsonl``, :mod:`so3krates_openmm.tasks`: minimisations, labels, xTB optimisations),
  which only grows by whole lines: stored as gzip-compressed chunks ``<name>.chunks/<first>-<end>.jsonl.gz`` of
  the lines ``first`` to ``end - 1``, each chunk closed when saved; the next save adds the lines after it, and
  ``restore`` joins the chunks in order.

Small records that a resumed run may rewrite (:data:`REWRITTEN`: ``segments.json``, whose total length may grow,
and the loop's ``settings.json`` and ``added_data.json``) are replaced in the store when they change. Any other
stored file that differs from ``runs/`` is a conflict (a closed file changed, or two machines ran the same
run): ``save`` names it, keeps the stored version and exits with 2. ``restore`` never overwrites a file of
``runs/``.
"""

from __future__ import annotations

import argparse
import filecmp
import gzip
import sys
from collections.abc import Iterator
from pathlib import Path

from so3krates_openmm.files import write_atomically

REPOSITORY = Path(__file__).resolve().parents[1]

#: Kept best checkpoints of a finished training run carried along (the latest ones: the candidates closest to
#: the run's final error, which the stability study's matching tries first).
KEPT_HISTORY = 3
TRAINING_FILES = ("test_report.json", "best_checkpoint.pt", "metrics.csv", "training_config.json",
                  "learning_curve.png", "split.json")
ITERATION_FILES = ("selected.npz", "labelled.npz", "report.json", "report.png")
MD_FINISHED = ("run.json", "stopped.json")
MD_FILES = (*MD_FINISHED, "uncertainty.csv", "uncertainty.png")
SEGMENT_FILES = ("run.json", "log.csv", "stability.json", "final_state.xml", "trajectory.dcd")
#: Small records a resumed run may rewrite: replaced in the store when they change.
REWRITTEN = ("segments.json", "settings.json", "added_data.json")
JOURNAL_CHUNKS = ".chunks"
#: A finished run's record that says all a study needs of it (``stability_study/run_study.py``): its segments
#: stay behind.
RUN_RESULT = "result.json"
#: A stopped run's failure analysis (``stability_study/failures.py``), written after its :data:`RUN_RESULT`.
FAILURE_RECORD = "failure.json"


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
    """``segments.json`` and the files of every closed segment of a segmented MD run; of a run that has written
    its :data:`RUN_RESULT`, that and ``segments.json`` only."""
    from so3krates_openmm.md.segments import segmented_status

    yield run / "segments.json"
    if (run / RUN_RESULT).is_file():
        yield run / RUN_RESULT
        if (run / FAILURE_RECORD).is_file():
            yield run / FAILURE_RECORD
        return
    for segment in segmented_status(run).segments:
        if segment.closed:
            yield from (segment.directory / name for name in SEGMENT_FILES if (segment.directory / name).is_file())


def exploration_files(journal: Path) -> Iterator[Path]:
    """The files of the finished runs of an exploration whose task journal is ``journal`` (``md_runs.jsonl``)."""
    for run in sorted(path for path in journal.parent.iterdir() if (path / "run.json").is_file()):
        yield from (run / name for name in SEGMENT_FILES if (run / name).is_file())


def closed_files(runs: Path) -> list[Path]:
    """Every closed file below ``runs`` (module docstring), sorted."""
    found: set[Path] = set()
    for report in runs.rglob("test_report.json"):
        found.update(training_run_files(report.parent))
    for selected in runs.rglob("iteration_*/selected.npz"):
        found.update(iteration_files(selected.parent))
    for manifest in runs.rglob("segments.json"):
        found.update(segment_files(manifest.parent))
    for journal in runs.rglob("md_runs.jsonl"):
        found.update(exploration_files(journal))
    for name in ("settings.json", "added_data.json"):  # the active-learning loop's records
        found.update(path for path in runs.rglob(name) if (path.parent / "train_data_00.npz").is_file())
    return sorted(found)


def whole_lines(path: Path) -> list[bytes]:
    """The complete lines of a journal (a line cut off by a kill, without its newline, is left out)."""
    lines = path.read_bytes().split(b"\n")
    return [line + b"\n" for line in lines[:-1]]


def chunk_ranges(directory: Path) -> list[tuple[int, int, Path]]:
    """The stored chunks of a journal: ``(first, end, path)`` by first line."""
    chunks = []
    for path in directory.glob("*.jsonl.gz") if directory.is_dir() else []:
        first, end = path.name.removesuffix(".jsonl.gz").split("-")
        chunks.append((int(first), int(end), path))
    return sorted(chunks)


def save_journal(journal: Path, chunks: Path, dry_run: bool) -> tuple[int, bool]:
    """Store the lines of ``journal`` after the stored chunks as a new chunk; returns (bytes, conflict)."""
    lines = whole_lines(journal)
    stored = chunk_ranges(chunks)
    end = stored[-1][1] if stored else 0
    if stored and (len(lines) < end or gzip.decompress(stored[0][2].read_bytes()).split(b"\n")[0] + b"\n"
                   != lines[0]):
        return 0, True  # the journal shrank or has another header: another job
    if len(lines) == end:
        return 0, False
    content = gzip.compress(b"".join(lines[end:]), mtime=0)
    if not dry_run:
        write_atomically(chunks / f"{end:08d}-{len(lines):08d}.jsonl.gz", content)
    return len(content), False


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
            write_atomically(target, path.read_bytes())
    for journal in sorted(runs.rglob("*.jsonl")):
        target = store / journal.relative_to(runs)
        chunk_bytes, conflict = save_journal(journal, target.with_name(target.name + JOURNAL_CHUNKS), dry_run)
        if conflict:
            conflicts.append(journal)
        elif chunk_bytes:
            added += 1
            size += chunk_bytes
    verb = "would copy" if dry_run else "copied"
    print(f"{verb} {added} new and {replaced} rewritten file(s), {size / 1e6:.1f} MB, into {store}")
    for path in conflicts:
        print(f"conflict: {path} differs from {store / path.relative_to(runs)}, which is kept (a closed file "
              "changed, or another machine ran this run); move one of them away", file=sys.stderr)
    return len(conflicts)


def restore(runs: Path, store: Path) -> int:
    """Copy every stored file that ``runs`` lacks back into it (a journal from its chunks, joined); returns the
    number of files written."""
    copied = 0
    for stored in sorted(path for path in store.rglob("*") if path.is_file() and not path.name.startswith(".")):
        if stored.parent.name.endswith(JOURNAL_CHUNKS):
            continue
        target = runs / stored.relative_to(store)
        if not target.exists():
            write_atomically(target, stored.read_bytes())
            copied += 1
    for chunks in sorted(path for path in store.rglob(f"*{JOURNAL_CHUNKS}") if path.is_dir()):
        target = runs / chunks.relative_to(store).with_name(chunks.name.removesuffix(JOURNAL_CHUNKS))
        if not target.exists():
            joined = b"".join(gzip.decompress(path.read_bytes()) for _, _, path in chunk_ranges(chunks))
            write_atomically(target, joined)
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
