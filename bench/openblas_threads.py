#!/usr/bin/env python
"""What the preloaded OpenBLAS's thread count does to GFN2-xTB and to PyTorch in the same process.

    .venv/bin/python bench/openblas_threads.py [--threads 1 2] [--repeats 3]

``configure_process(openblas=True)`` (``so3krates-data``, ``so3krates-active-learning``, the minima and harmonic
scripts) re-executes the process with Debian's pthread OpenBLAS in ``LD_PRELOAD`` for tblite. Preloaded, it also
serves PyTorch's BLAS calls (``torch.mv``, ``torch.mm``). For each setting (bundled BLAS, i.e. no preload; the
preload with ``OPENBLAS_NUM_THREADS`` = each of ``--threads``) a fresh process measures:

- a GFN2-xTB single point of the shipped buckyball catcher (148 atoms; positions perturbed by 0.01 Å per call
  so that nothing is cached), wall and CPU seconds, median of ``--repeats``;
- 3 s of a small ``torch.mv`` every 10 ms (what an MD step's readout does), the process's user and system CPU
  seconds over them and its thread count: OpenBLAS threads beyond the first spin in ``sched_yield`` between
  calls.

Other jobs on the machine change the figures (the xTB time with 2 threads above all); the script prints the load
average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]

#: run in the child process: prints one JSON line
PROBE = r"""
import json, os, statistics, sys, time
import numpy as np
import torch
from so3krates_openmm.data.structures import read_structure
from so3krates_openmm.data.xtb import single_point_task, xtb_settings

torch.set_num_threads(1)
structure = read_structure(sys.argv[1])
repeats = int(sys.argv[2])
task = {"settings": xtb_settings(), "numbers": structure.atomic_numbers.tolist()}
wall, cpu = [], []
for call in range(repeats + 1):
    noise = 0.01 * np.random.default_rng(call).normal(size=structure.positions_angstrom.shape)
    result = single_point_task(dict(task, positions_angstrom=structure.positions_angstrom + noise))
    if call:  # the first call builds the calculator
        wall.append(result["seconds"])
        cpu.append(result["cpu_seconds"])
matrix, vector = torch.rand(148, 132), torch.rand(132)
before, started = os.times(), time.time()
while time.time() - started < 3.0:
    torch.mv(matrix, vector)
    time.sleep(0.01)
after = os.times()
print(json.dumps({"xtb_wall_s": statistics.median(wall), "xtb_cpu_s": statistics.median(cpu),
                  "mv_user_s": after.user - before.user, "mv_system_s": after.system - before.system,
                  "threads": len(os.listdir("/proc/self/task"))}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="OPENBLAS_NUM_THREADS values")
    parser.add_argument("--repeats", type=int, default=3, help="xTB single points per setting")
    args = parser.parse_args()
    sys.path.insert(0, str(REPOSITORY))
    from so3krates_openmm.runtime import OPENBLAS_THREADS, openblas_library

    library = openblas_library()
    if library is None:
        raise SystemExit("Debian's pthread OpenBLAS (libopenblas0-pthread) is not installed: nothing to compare")
    structure = REPOSITORY / "so3krates_openmm" / "pretrained" / "buckyball_catcher" / "structure.pdb"
    print(f"# OpenBLAS threads | {library} | load average {os.getloadavg()[0]:.2f} | {os.cpu_count()} cores")
    print(f"{'BLAS':34s} {'xTB wall s':>10s} {'xTB CPU s':>10s} {'mv user s':>10s} {'mv system s':>11s} "
          f"{'threads':>7s}")
    settings = [("bundled (no preload)", {})] + [
        (f"OpenBLAS, {OPENBLAS_THREADS}={threads}", {"LD_PRELOAD": library, OPENBLAS_THREADS: str(threads)})
        for threads in args.threads
    ]
    for name, extra in settings:
        environment = {key: value for key, value in os.environ.items()
                       if key not in ("LD_PRELOAD", OPENBLAS_THREADS)}
        environment.update({"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", **extra})
        completed = subprocess.run([sys.executable, "-c", PROBE, str(structure), str(args.repeats)],
                                   env=environment, cwd=REPOSITORY, capture_output=True, text=True, check=True)
        row = json.loads(completed.stdout.strip().splitlines()[-1])
        print(f"{name:34s} {row['xtb_wall_s']:10.2f} {row['xtb_cpu_s']:10.2f} {row['mv_user_s']:10.2f} "
              f"{row['mv_system_s']:11.2f} {row['threads']:7d}", flush=True)
    print(f"# load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
