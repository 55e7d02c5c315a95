#!/usr/bin/env python
"""The open long runs as lanes of resumable commands, one core each, continued by every session.

    python bench/campaign.py start            # restore bench/progress/, then every lane in the background
    python bench/campaign.py lane NAME        # one lane in the foreground (what ``start`` runs)
    python bench/campaign.py status           # each lane's log tail and bench/progress.py status
    python bench/campaign.py list             # the lanes and their commands

A lane runs its commands in order. Every command resumes (the same command again skips what finished and
continues what was cut off), so a lane started in a new session goes through the finished commands in
seconds and picks up where the last session stopped. A command that fails stops its lane (its log says why;
fix, then start again). While a lane runs, ``bench/progress.py save`` stores the closed files every
``--save-minutes`` (default 15), and once more when the lane ends; committing ``bench/progress/`` stays with the
person (or session) at the keyboard. Logs: ``runs/campaign/<lane>.log``.

Each lane runs ``nice``-d with one thread per process (``OMP_WAIT_POLICY=PASSIVE``), so that two lanes share
the two cores of a small machine and an interactive shell stays usable. Edit :data:`LANES` as the work moves
on (a finished lane is removed; a shipped model changes what follows it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from so3krates_openmm.files import LockedError, exclusive_lock

REPOSITORY = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BIN = Path(sys.executable).parent
LOG_DIR = REPOSITORY / "runs" / "campaign"

#: Lanes of commands (argument lists, run from the repository), one core each.
LANES: dict[str, list[list[str]]] = {
    # issue 16: the catcher's second round of active learning, then its check (ship by hand if it recommends)
    "catcher": [
        [str(BIN / "so3krates-active-learning"), "--config", "bench/active_learning/buckyball_catcher/config.yaml"],
        [PYTHON, "bench/active_learning/buckyball_catcher/check.py", "--threads", "1", "--no-progress"],
        # issue 18: then the minima at scale on this core (the README's command, one Dask worker)
        [str(BIN / "so3krates-export"), "so3krates_openmm/pretrained/ac_ala3_nhme/best_checkpoint.pt", "--structure",
         "so3krates_openmm/pretrained/ac_ala3_nhme/structure.pdb", "--kernels", "fused", "-o",
         "runs/minima_large/model_fused.pt"],
        [PYTHON, "bench/minima_large/run.py", "--model", "runs/minima_large/model_fused.pt", "--runs", "500:1",
         "500:2", "500:3", "700:1", "700:2", "700:3", "--ps", "100", "--timestep-fs", "1", "--hydrogen-mass", "3",
         "--snapshot-interval", "100", "--workers", "1", "--no-progress"],
    ],
    # issue 17: the invariant-vs-equivariant pairs, then their stability runs
    "stability": [
        [PYTHON, "bench/stability_study/train_pair.py", "--molecule", "ac_ala3_nhme", "--model", "invariant",
         "--no-progress"],
        [PYTHON, "bench/stability_study/train_pair.py", "--molecule", "ac_ala3_nhme", "--model", "equivariant",
         "--no-progress"],
        [PYTHON, "bench/stability_study/train_pair.py", "--molecule", "dha", "--model", "both", "--no-progress"],
        [PYTHON, "bench/stability_study/run_study.py", "--jobs", "1"],
    ],
}


def save_progress(log) -> None:
    """``bench/progress.py save`` of this repository's runs, its output to ``log``."""
    subprocess.run([PYTHON, str(REPOSITORY / "bench" / "progress.py"), "save"], cwd=REPOSITORY, stdout=log,
                   stderr=subprocess.STDOUT, check=False)


def run_lane(name: str, commands: list[list[str]], log_dir: Path, save_minutes: float,
             save: Callable[[TextIO], None] = save_progress) -> int:
    """Run ``commands`` in order, logging to ``log_dir/<name>.log`` and calling ``save`` every ``save_minutes``
    and at the end; returns the first failing exit code, or 0. A second call for the same lane while one runs
    exits at once with 3."""
    try:
        with exclusive_lock(log_dir / f"{name}.lock"):
            return _run_lane(name, commands, log_dir, save_minutes, save)
    except LockedError:
        print(f"lane {name} is already running on this machine ({log_dir / f'{name}.log'})", file=sys.stderr)
        return 3


def _run_lane(name: str, commands: list[list[str]], log_dir: Path, save_minutes: float,
              save: Callable[[TextIO], None]) -> int:
    environment = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
                       OMP_NUM_THREADS="1")
    stop = threading.Event()
    with open(log_dir / f"{name}.log", "a", buffering=1) as log:

        def saver() -> None:
            while not stop.wait(save_minutes * 60.0):
                save(log)

        thread = threading.Thread(target=saver, daemon=True)
        thread.start()
        code = 0
        for number, command in enumerate(commands, start=1):
            log.write(f"\n# [{time.strftime('%Y-%m-%d %H:%M:%S')}] {name} {number}/{len(commands)}: "
                      f"{shown(command)}\n")
            code = subprocess.run(["nice", "-n", "5", *command], cwd=REPOSITORY, env=environment, stdout=log,
                                  stderr=subprocess.STDOUT, check=False).returncode
            log.write(f"# [{time.strftime('%Y-%m-%d %H:%M:%S')}] exit {code}\n")
            if code != 0:
                log.write(f"# lane {name} stopped: command {number} failed; fix it, then start the lane again\n")
                break
        stop.set()
        thread.join()
        save(log)
        log.write(f"# [{time.strftime('%Y-%m-%d %H:%M:%S')}] lane {name} {'done' if code == 0 else 'stopped'}\n")
    return code


def shown(command: list[str]) -> str:
    """A command as a person would type it (``python`` for this interpreter)."""
    return " ".join("python" if part == PYTHON else part for part in command)


def start(save_minutes: float) -> None:
    """Restore the saved progress, then start every lane as a detached background process."""
    subprocess.run([PYTHON, str(REPOSITORY / "bench" / "progress.py"), "restore"], cwd=REPOSITORY, check=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    for name in LANES:
        with open(LOG_DIR / f"{name}.out", "a") as out:
            process = subprocess.Popen([PYTHON, __file__, "lane", name, "--save-minutes", str(save_minutes)],
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
    subprocess.run([PYTHON, str(REPOSITORY / "bench" / "progress.py"), "status"], cwd=REPOSITORY, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("start", "lane", "status", "list"))
    parser.add_argument("lane", nargs="?", choices=list(LANES), help="lane: the lane to run")
    parser.add_argument("--save-minutes", type=float, default=15.0, help="minutes between progress saves")
    args = parser.parse_args(argv)
    if args.action == "lane":
        if args.lane is None:
            parser.error(f"lane: name the lane ({', '.join(LANES)})")
        return run_lane(args.lane, LANES[args.lane], LOG_DIR, args.save_minutes)
    if args.action == "start":
        start(args.save_minutes)
    elif args.action == "status":
        status()
    else:
        for name, commands in LANES.items():
            print(f"{name}:")
            for command in commands:
                print(f"   {shown(command)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
