#!/usr/bin/env python
"""The open long runs as lanes of resumable commands, one core each, continued by every session.

    python bench/campaign.py start [--until HH:MM]   # restore bench/progress/, then every lane in the background
    python bench/campaign.py lane NAME [--until HH:MM]   # one lane in the foreground (what ``start`` runs)
    python bench/campaign.py status           # each lane's log tail and bench/progress.py status
    python bench/campaign.py list             # the lanes and their commands, the finished ones too

A lane runs its commands (steps) in order. Every command resumes (the same command again skips what finished
and continues what was cut off), so a lane started in a new session goes through the finished commands in
seconds and picks up where the last session stopped. A command that fails stops its lane (its log says why;
fix, then start again). While a lane runs, ``bench/progress.py save`` stores the closed files every
``--save-minutes`` (default 15), and once more when the lane ends; committing ``bench/progress/`` stays with
the person (or session) at the keyboard. With ``--until`` (when the session ends), a training step that would
be cut off is not started (its optimiser state could not be carried over) and the *filler*, the minima at
scale, saved task by task, uses the core instead. Logs: ``runs/campaign/<lane>.log``.

Each lane runs ``nice``-d with one thread per process (``OMP_WAIT_POLICY=PASSIVE``), so that two lanes share
the two cores of a small machine and an interactive shell stays usable. Edit :data:`LANES` as the work moves
on (a finished lane moves to :data:`FINISHED_LANES`, which ``list`` shows and nothing runs; a shipped model
changes what follows it).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from so3krates_openmm.files import LockedError, exclusive_lock

REPOSITORY = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BIN = Path(sys.executable).parent
LOG_DIR = REPOSITORY / "runs" / "campaign"

@dataclass(frozen=True)
class Step:
    """One command of a lane (an argument list, run from the repository).

    ``hours``: about how long it runs on one core, for a step that cannot be carried to another machine
    part-way (a training: its optimiser state is not saved), so that a lane with ``--until`` does not start it
    when it would be cut off; ``None`` for a step that saves its progress in small pieces. ``done``: a file
    (relative to the repository) that exists once the step has finished: the lane then skips it."""

    command: list[str]
    hours: float | None = None
    done: str | None = None

    def finished(self) -> bool:
        return self.done is not None and (REPOSITORY / self.done).exists()


#: issue 18: six exploration runs with every snapshot minimised (5700; their first 2000 gave 89 minima, far from
#: 1000), then ten more at 700 K minimising every fifth snapshot (60 % of the minima for a fifth of the cost)
MINIMA_RUNS = ["500:1", "500:2", "500:3", "700:1", "700:2", "700:3", *(f"700:{seed}:5" for seed in range(4, 14))]
#: issue 18: the MD's count saturated near 190 minima from 7600 snapshots; starts with random backbone dihedrals
#: check whether the surface has more (journals of 250 starts: raising this minimises only the new ones)
TORSION_STARTS = 1500


def minima_steps(workers: int) -> list[Step]:
    """Issue 18: minima at scale (the README's command on ``workers`` Dask workers); MD runs and minimisations
    are journaled task by task, so the worker count may change between calls."""
    return [
        Step([str(BIN / "so3krates-export"), "so3krates_openmm/pretrained/ac_ala3_nhme/best_checkpoint.pt",
              "--structure", "so3krates_openmm/pretrained/ac_ala3_nhme/structure.pdb", "--kernels", "fused", "-o",
              "runs/minima_large/model_fused.pt"]),
        Step([PYTHON, "bench/minima_large/run.py", "--model", "runs/minima_large/model_fused.pt", "--runs",
              *MINIMA_RUNS, "--ps", "100", "--timestep-fs", "1",
              "--hydrogen-mass", "3", "--snapshot-interval", "100", "--torsion-starts", str(TORSION_STARTS),
              "--workers", str(workers), "--no-progress", "--output", minima_round_files(1)["output"]]),
    ]


#: issue 18, active learning on the minima (rounds 2, 3, ... of the peptide model; round 1 is the shipped one): the
#: previous search's minima (MD and random dihedrals) labelled with GFN2-xTB, the previous model fine-tuned on all
#: data so far (20 min on two processes; all frames but 144 for validation and 200 for testing), then the search
#: again with the new model (new MD seeds and random dihedrals): ``bench/minima_large/round<N>/``. Round 2 labelled
#: the 494 minima of round 1's search from before minima with a new bond were rejected (73 of them have two oxygens
#: 1.25 Å apart); later rounds label the kept ones. From round 3 on, the search's random-dihedral starts are also
#: optimised with GFN2-xTB (the reference search); from round 4 on, the previous reference search's own minima are
#: labelled too, so that the model learns the minima it smoothed away; from round 5 on, so are the previous search's
#: rejected structures (a new or a broken bond: round 4 had 37 of 1000 random-dihedral starts end with two carbonyl
#: oxygens bonded), so that the model learns the repulsion it lacks. Round 5's search was taken on to 3000
#: random-dihedral starts (:data:`MINIMA_ROUND_EXTRA_SEARCHES`), so round 6 labels its 395 minima; it rejected
#: nothing, so round 6 has no rejected structures to label (:func:`search_rejected_nothing`).
MINIMA_ROUNDS = (2, 3, 4, 5, 6, 7)
#: the first round that labels the previous reference search's minima, and the previous search's rejected structures
XTB_MINIMA_FROM_ROUND, REJECTED_FROM_ROUND = 4, 5
#: Random-dihedral starts of each round's search, and how many of the minima only they find are re-optimised with
#: GFN2-xTB: from round 3 on, the same starts go to the reference search
MINIMA_ROUND_TORSION = {2: (500, 20), 3: (1000, 50), 4: (1000, 50), 5: (1000, 50), 6: (1000, 50)}
#: Searches a round's model went on to after its round, the same seed (only new starts are minimised): all-trans
#: random-dihedral starts, starts with cis peptide bonds on top (each bond cis with chance 0.5), minima only these
#: starts found re-optimised with GFN2-xTB, and the suffix of the output folder ``bench/minima_large/round<N>``.
#: Round 5's: does the model's count saturate (3000 starts), and how many minima do the amide isomers add?
MINIMA_ROUND_EXTRA_SEARCHES = {5: [(3000, 0, 50, "_3000_starts"), (3000, 2000, 100, "_cis")]}
#: Rounds whose own search was left out: round 6's, so that the amide isomers came first. The next round labels the
#: structures of :data:`MINIMA_ROUND_LABEL_SOURCE` instead (and no reference minima or rejected structures).
MINIMA_ROUNDS_WITHOUT_SEARCH = {6}
#: Round 7 labels the 536 minima with cis peptide bonds of round 5's search with cis starts (its model had never
#: seen a cis bond: about 30 kJ/mol too much per bond against GFN2-xTB, 56 % the same minimum)
MINIMA_ROUND_LABEL_SOURCE = {7: "runs/minima_large_round5/minima_with_cis_peptide_bonds/minima.pdb"}
#: Rounds whose search is MD started in each amide isomer (t or c for each of the four peptide bonds, the caps'
#: included) at each of :data:`ISOMER_RUN_TEMPERATURES`, every fifth snapshot minimised, instead of two all-trans
#: runs and random-dihedral starts: the issue's count from MD snapshots, with the isomers that MD from one structure
#: never reaches
MINIMA_ROUNDS_BY_ISOMER = {7}
#: Kelvin, in groups: every isomer's runs at a group's temperatures, then the next group's, so that a temperature
#: added later comes last and its runs' ``new_minima`` say what it adds. 900 K was added when 2742 of the 6080
#: snapshots at 500 and 700 K (15 of 32 runs) gave 417 minima, falling off with the number of cis bonds (81 for
#: tttt, 37 for tcct): about 850 for the 16 isomers. A probe run of round 7's model at 900 K (all-trans, seed 72,
#: stable; ``round7/probe_900K/``) gave 69 minima from its 190 snapshots, 32 of them new beside the 82 at 500 and
#: 700 K (the README's round 7 "The search" gives the later counts)
ISOMER_RUN_TEMPERATURES = ((500, 700), (900,))
AMIDE_ISOMERS = tuple("".join(letters) for letters in itertools.product("tc", repeat=4))
SHIPPED_PEPTIDE = "so3krates_openmm/pretrained/ac_ala3_nhme"
PEPTIDE_DATA = ["datasets/ac_ala3_nhme/dataset.npz", "datasets/ac_ala3_nhme/md_frames_round1.npz"]


def minima_round_files(number: int) -> dict[str, str]:
    """Round ``number``'s labelled minima (the model's, and from round 4 the reference search's), training folder,
    exported model and search folders (round 1: the shipped model and the search above). The last round's search
    is issue 18's result, ``bench/minima_large/summary.json``; its training's evidence stays in ``round<N>/``."""
    if number == 1:
        return {"checkpoint": f"{SHIPPED_PEPTIDE}/best_checkpoint.pt", "work": "runs/minima_large",
                "output": "bench/minima_large/round1"}
    return {"labels": f"datasets/ac_ala3_nhme/minima_round{number}.npz",
            "xtb_labels": f"datasets/ac_ala3_nhme/xtb_minima_round{number}.npz",
            "rejected_labels": f"datasets/ac_ala3_nhme/rejected_round{number}.npz",
            "training": f"runs/al_minima/round{number}/train",
            "checkpoint": f"runs/al_minima/round{number}/train/best_checkpoint.pt",
            "model": f"runs/minima_large_round{number}/model_fused.pt",
            "work": f"runs/minima_large_round{number}",
            "output": "bench/minima_large" if number == MINIMA_ROUNDS[-1] else f"bench/minima_large/round{number}"}


def search_rejected_nothing(number: int) -> bool:
    """Whether round ``number``'s search (its last all-trans one, which leaves the structures the next round labels)
    has finished without rejecting a structure: its committed ``summary.json`` says so (MD snapshots and
    random-dihedral starts); ``False`` while that is not known."""
    suffixes = [suffix for _, cis_starts, _, suffix in MINIMA_ROUND_EXTRA_SEARCHES.get(number, []) if not cis_starts]
    path = REPOSITORY / (minima_round_files(number)["output"] + (suffixes[-1] if suffixes else "")) / "summary.json"
    if not path.is_file():
        return False
    summary = json.loads(path.read_text())
    return summary["n_rejected_snapshots"] == 0 and (summary["torsion_search"] or {}).get("n_rejected", 0) == 0


def labels_rejected(number: int) -> bool:
    """Whether round ``number`` labels the previous search's rejected structures: from round 5 on, unless that
    search is known to have rejected nothing or was left out."""
    return (number >= REJECTED_FROM_ROUND and number - 1 not in MINIMA_ROUNDS_WITHOUT_SEARCH
            and not search_rejected_nothing(number - 1))


def labels_xtb_minima(number: int) -> bool:
    """Whether round ``number`` labels the previous reference search's minima: from round 4 on, unless the previous
    round's search was left out."""
    return number >= XTB_MINIMA_FROM_ROUND and number - 1 not in MINIMA_ROUNDS_WITHOUT_SEARCH


def minima_round_data(number: int) -> list[str]:
    """The data files round ``number`` trains on: the peptide's data, the model's labelled minima of rounds
    2..``number``, GFN2-xTB's labelled minima of rounds 4..``number`` and the labelled rejected structures of
    rounds 5..``number`` (of those whose previous search ran, and rejected something)."""
    files = {k: minima_round_files(k) for k in range(2, number + 1)}
    return (PEPTIDE_DATA + [files[k]["labels"] for k in files]
            + [files[k]["xtb_labels"] for k in files if labels_xtb_minima(k)]
            + [files[k]["rejected_labels"] for k in files if labels_rejected(k)])


def label_step(minima_pdb: str, output: str, workers: int) -> Step:
    """GFN2-xTB energies and forces of the minima in ``minima_pdb`` (skipped once ``output`` exists)."""
    return Step([str(BIN / "so3krates-data"), "label", minima_pdb, "--structure", f"{SHIPPED_PEPTIDE}/structure.pdb",
                 "--float32", "--workers", str(workers), "--no-progress", "-o", output], done=output)


def minima_round_steps(number: int, workers: int) -> list[Step]:
    """Issue 18: round ``number`` (from 2) of active learning on the minima, then the minima search with its model
    (two MD runs of 100 ps minimising every fifth snapshot, :data:`MINIMA_ROUND_TORSION` random-dihedral starts),
    from round 3 the reference search on the same starts, and the searches of :data:`MINIMA_ROUND_EXTRA_SEARCHES`."""
    previous, this = minima_round_files(number - 1), minima_round_files(number)
    seed = 10 * number + 1
    def minima_search(runs: list[str], options: list[str], output: str) -> Step:
        """``run.py`` with this round's model and data on ``runs`` (100 ps each, snapshots 0.1 ps apart)."""
        return Step([PYTHON, "bench/minima_large/run.py", "--model", this["model"], "--training-data",
                     *minima_round_data(number), "--runs", *runs, "--ps", "100", "--timestep-fs", "1",
                     "--hydrogen-mass", "3", "--snapshot-interval", "100", *options,
                     "--workers", str(workers), "--no-progress", "--work", this["work"], "--output", output])

    def search(starts: int, output: str, cis_starts: int = 0, sample: int | None = None) -> Step:
        sample = MINIMA_ROUND_TORSION[number][1] if sample is None else sample
        cis = ["--cis-starts", str(cis_starts), "--cis-probability", "0.5"] if cis_starts else []
        return minima_search([f"500:{seed}:5", f"700:{seed}:5"],
                             ["--torsion-starts", str(starts), *cis, "--sample-torsion", str(sample),
                              "--torsion-seed", str(number - 1)], output)

    source = MINIMA_ROUND_LABEL_SOURCE.get(number, f"{previous['work']}/minima_with_torsion_search/minima.pdb")
    labels = [label_step(source, this["labels"], workers)]
    if labels_xtb_minima(number):
        labels.append(label_step(f"{previous['work']}/xtb_minima/minima.pdb", this["xtb_labels"], workers))
    if labels_rejected(number):
        labels.append(label_step(f"{previous['work']}/minima_with_torsion_search/rejected.pdb",
                                 this["rejected_labels"], workers))
    steps = [
        *labels,
        Step([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "so3krates_openmm.cli.train",
              "--data", *minima_round_data(number), "--init-from", previous["checkpoint"], "--train-size", "null",
              "--valid-size", "144", "--test-size", "200",
              "--seed", "0", "--threads", "1", "--batch-size", "10", "--max-time", "20m", "--lr", "5e-4",
              "--lr-decay-steps", "500", "--checkpoint-interval", "10m", "--output", this["training"]],
             0.4, f"{this['training']}/test_report.json"),
        Step([str(BIN / "so3krates-export"), this["checkpoint"], "--structure", f"{SHIPPED_PEPTIDE}/structure.pdb",
              "--kernels", "fused", "-o", this["model"]]),
    ]
    if number in MINIMA_ROUNDS_BY_ISOMER:
        runs = [f"{temperature}:{seed}:5:{isomer}" for group in ISOMER_RUN_TEMPERATURES for isomer in AMIDE_ISOMERS
                for temperature in group]
        return [*steps, minima_search(runs, ["--sample", "60"], this["output"])]
    if number in MINIMA_ROUNDS_WITHOUT_SEARCH:
        return steps
    steps.append(search(MINIMA_ROUND_TORSION[number][0], this["output"]))
    if number >= 3:
        # the count of the reference's own minima and the start-by-start check: the search's random-dihedral starts
        # optimised with GFN2-xTB too (about 10 CPU s each; the model's journals are the search's)
        steps.append(Step([PYTHON, "bench/minima_large/reference_search.py", "--model", this["model"], "--work",
                           this["work"], "--torsion-seed", str(number - 1), "--starts",
                           str(MINIMA_ROUND_TORSION[number][0]), "--workers", str(workers), "--no-progress",
                           "--output", this["output"]]))
    # last: the all-trans minima they leave in the work folder (minima_with_torsion_search/) are those the next
    # round labels (a search with cis starts writes minima_with_cis_torsion_search/)
    steps += [search(starts, this["output"] + suffix, cis_starts, sample)
              for starts, cis_starts, sample, suffix in MINIMA_ROUND_EXTRA_SEARCHES.get(number, [])]
    return steps


#: issue 17: the stability runs (about 15-35 min each on one core, each saved when it finishes)
STABILITY_RUNS = Step([PYTHON, "bench/stability_study/run_study.py", "--jobs", "1"])


def train_pair(molecule: str, model: str, hours: float) -> Step:
    """One model of the stability study's pair (a run finished earlier is taken as it is)."""
    return Step([PYTHON, "bench/stability_study/train_pair.py", "--molecule", molecule, "--model", model,
                 "--no-progress"], hours, f"runs/stability_study/{molecule}/train_{model}/test_report.json")


#: Lanes of steps that are finished, kept so that ``list`` shows the commands of the committed results.
FINISHED_LANES: dict[str, list[Step]] = {
    # issue 17: the shipped catcher model (round 2 of active learning, shipped 2026-12-04) for 1 ns at 300 K, the
    # validated 1 fs with 3 amu hydrogens (closed segments of 50 ps, about 20 min each on one core), then the
    # stability runs beside the stability lane's driver (each takes the runs the other does not hold), so that
    # issue 17 finishes first; then the minima (issue 18) on both cores, and the active-learning rounds on them
    "catcher": [
        Step([PYTHON, "bench/nanosecond/run.py", "--system", "buckyball_catcher", "--timestep-fs", "1",
              "--hydrogen-mass", "3", "--threads", "1", "--no-progress"]),
        STABILITY_RUNS,
        *minima_steps(workers=2),
        *(step for number in MINIMA_ROUNDS[:-1] for step in minima_round_steps(number, workers=2)),
    ],
    # issue 18: the last active-learning round on the minima, on both cores, then its search: MD from the 16 amide
    # isomers, the minimisations and the GFN2-xTB check (bench/minima_large/summary.json, finished 2026-12-06)
    "minima": minima_round_steps(MINIMA_ROUNDS[-1], workers=2),
    # issue 17: the invariant-vs-equivariant pairs (80 epochs at 85-100 s on one core; the equivariant run
    # stops at the match), then their stability runs (about 20 min each, each saved when it finishes)
    "stability": [
        train_pair("ac_ala3_nhme", "invariant", 2.2),
        train_pair("ac_ala3_nhme", "equivariant", 2.2),
        train_pair("dha", "invariant", 2.2),
        train_pair("dha", "equivariant", 2.2),
        STABILITY_RUNS,
    ],
}

#: Lanes of steps, one core each: the open long runs (none at the moment: every lane has finished).
LANES: dict[str, list[Step]] = {}

#: What a lane runs instead of a step that would not finish before ``--until``: work saved in small pieces.
FILLER = minima_steps(workers=1)


def progress(action: str, **options) -> subprocess.CompletedProcess:
    """``bench/progress.py ACTION`` on this repository's runs (``options``: of :func:`subprocess.run`)."""
    return subprocess.run([PYTHON, str(REPOSITORY / "bench" / "progress.py"), action], cwd=REPOSITORY, **options)


def save_progress(log) -> None:
    """``bench/progress.py save``, its output to ``log``."""
    progress("save", stdout=log, stderr=subprocess.STDOUT, check=False)


def run_lane(name: str, steps: list[Step], log_dir: Path, save_minutes: float,
             save: Callable[[TextIO], None] = save_progress, until: float | None = None,
             filler: list[Step] = FILLER) -> int:
    """Run ``steps`` in order, logging to ``log_dir/<name>.log`` and calling ``save`` every ``save_minutes`` and
    at the end; returns the first failing exit code, or 0. With ``until`` (a time, seconds since the epoch: when
    the session ends), a step whose ``hours`` would take it past ``until`` is not started: ``filler`` runs
    instead and the lane ends there. A second call for the same lane while one runs exits at once with 3."""
    try:
        with exclusive_lock(log_dir / f"{name}.lock"):
            return _run_lane(name, steps, log_dir, save_minutes, save, until, filler)
    except LockedError:
        print(f"lane {name} is already running on this machine ({log_dir / f'{name}.log'})", file=sys.stderr)
        return 3


def _run_lane(name: str, steps: list[Step], log_dir: Path, save_minutes: float, save: Callable[[TextIO], None],
              until: float | None, filler: list[Step]) -> int:
    environment = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
                       OMP_NUM_THREADS="1")
    stop = threading.Event()
    with open(log_dir / f"{name}.log", "a", buffering=1) as log:

        def saver() -> None:
            while not stop.wait(save_minutes * 60.0):
                save(log)

        def run(label: str, step: Step) -> int:
            log.write(f"\n# [{now()}] {name} {label}: {shown(step.command)}\n")
            code = subprocess.run(["nice", "-n", "5", *step.command], cwd=REPOSITORY, env=environment, stdout=log,
                                  stderr=subprocess.STDOUT, check=False).returncode
            log.write(f"# [{now()}] exit {code}\n")
            return code

        thread = threading.Thread(target=saver, daemon=True)
        thread.start()
        code, ending = 0, "done"
        for number, step in enumerate(steps, start=1):
            if step.finished():
                log.write(f"\n# [{now()}] {name} {number}/{len(steps)}: done earlier ({step.done}), skipped\n")
                continue
            if (until is not None and step.hours is not None
                    and time.time() + step.hours * 3600.0 > until):
                log.write(f"\n# [{now()}] {name} {number}/{len(steps)} (about {step.hours:g} h) would not finish "
                          f"before {time.strftime('%H:%M', time.gmtime(until))} UTC: not started; the filler runs "
                          "instead\n")
                ending = "paused"
                for index, extra in enumerate(filler, start=1):
                    if (code := run(f"filler {index}/{len(filler)}", extra)) != 0:
                        break
                break
            if (code := run(f"{number}/{len(steps)}", step)) != 0:
                log.write(f"# lane {name} stopped: step {number} failed; fix it, then start the lane again\n")
                ending = "stopped"
                break
        stop.set()
        thread.join()
        save(log)
        log.write(f"# [{now()}] lane {name} {ending}\n")
    return code


def now() -> str:
    """The time for the log (UTC)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())


def parse_until(text: str) -> float:
    """``HH:MM`` (UTC, the next such time) or an ISO date and time (UTC unless it says) as seconds since the
    epoch."""
    from datetime import datetime, timedelta, timezone

    current = datetime.now(timezone.utc)
    try:
        hour, minute = (int(part) for part in text.split(":"))
        moment = current.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if moment <= current:
            moment += timedelta(days=1)
    except ValueError:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def shown(command: list[str]) -> str:
    """A command as a person would type it (``python`` for this interpreter)."""
    return " ".join("python" if part == PYTHON else part for part in command)


def start(save_minutes: float, until: str | None) -> None:
    """Restore the saved progress, then start every lane as a detached background process."""
    from so3krates_openmm.runtime import openblas_library

    if openblas_library() is None:
        print("note: Debian's libopenblas0-pthread is not installed: GFN2-xTB runs on tblite's slow bundled BLAS "
              "(about 3x slower; README, 'GFN2-xTB and BLAS'); apt-get install libopenblas0-pthread, then start")
    progress("restore", check=True)
    if not LANES:
        print("no open lane: every long run has finished (`list` shows the commands of their results)")
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    for name in LANES:
        extra = ["--until", until] if until else []
        with open(LOG_DIR / f"{name}.out", "a") as out:
            process = subprocess.Popen([PYTHON, __file__, "lane", name, "--save-minutes", str(save_minutes), *extra],
                                       cwd=REPOSITORY, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        print(f"lane {name}: process {process.pid}, log {LOG_DIR / f'{name}.log'}")


def status() -> None:
    """Each lane's last log lines, then what bench/progress.py has saved."""
    for name in LANES:
        path = LOG_DIR / f"{name}.log"
        lines = path.read_text(errors="replace").replace("\r", "\n").splitlines()[-4:] if path.is_file() else []
        print(f"== {name}" + ("" if lines else ": not started on this machine"))
        for line in lines:
            print(f"   {line[:160]}")
    progress("status", check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("start", "lane", "status", "list"))
    parser.add_argument("lane", nargs="?", choices=list(LANES), help="lane: the lane to run")
    parser.add_argument("--save-minutes", type=float, default=15.0, help="minutes between progress saves")
    parser.add_argument("--until", help="when the session ends (HH:MM UTC or an ISO time): a training step that "
                                        "would not finish by then is not started, the filler runs instead")
    args = parser.parse_args(argv)
    try:
        until = parse_until(args.until) if args.until else None
    except ValueError:
        parser.error(f"--until: give HH:MM (UTC) or an ISO date and time, not {args.until!r}")
    if args.action == "lane":
        if args.lane is None:
            parser.error(f"lane: name the lane ({', '.join(LANES)})")
        return run_lane(args.lane, LANES[args.lane], LOG_DIR, args.save_minutes, until=until)
    if args.action == "start":
        start(args.save_minutes, args.until)
    elif args.action == "status":
        status()
    else:
        for title, lanes in (("open lanes", LANES), ("finished lanes (the committed results' commands)",
                                                     FINISHED_LANES)):
            print(f"{title}:" + ("" if lanes else " none"))
            for name, steps in lanes.items():
                print(f"  {name}:")
                for step in steps:
                    print(f"   {shown(step.command)}" + (f"   (about {step.hours:g} h)" if step.hours else ""))
        print("filler (instead of a step that would not finish before --until):")
        for step in FILLER:
            print(f"   {shown(step.command)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
