#!/usr/bin/env python
"""CPU and wall milliseconds per eager energy+forces call of the paper-size SO3krates model.

Paper-size model (F=132, T=3, H=4, degrees 1-3, K=32, r_c = 5 Å), float32,
random weights (speed does not depend on them), on the shipped starting
structures: Ac-Ala3-NHMe (42 atoms) and the buckyball catcher (148 atoms).
One call = ``model(z, positions)`` + ``torch.autograd.grad`` of the energy.

Prints, per system, the median over ``--repeats`` calls of the wall time
(``time.perf_counter``) and of the CPU time of this process
(``time.process_time``), the minimum CPU time, and the load average before
and after. On a machine shared with other jobs the CPU time is the robust
figure: the wall time also counts the time the process waits for a core (and
other jobs on the same core still slow the CPU time down through caches and
memory bandwidth; the minimum is the least affected).

    OMP_WAIT_POLICY=PASSIVE python bench/energy_forces.py [--threads 1] [--repeats 30]

``--code DIR`` imports ``so3krates_openmm`` from another checkout (for
example an older commit unpacked with ``git archive``) to compare versions
with the same script.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bench_common import random_paper_model, time_call

SYSTEMS = ("ac_ala3_nhme", "buckyball_catcher")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--code", type=Path, help="import so3krates_openmm from this directory instead")
    args = parser.parse_args()
    if args.code is not None:
        sys.path.insert(0, str(args.code.resolve()))

    import torch

    import so3krates_openmm

    torch.set_num_threads(args.threads)
    print("# eager energy+forces, paper-size SO3krates (F=132, T=3, H=4, degrees 1-3, K=32, r_c=5 Å), float32")
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M %Z')} | torch {torch.__version__} threads={args.threads} | "
        f"code {Path(so3krates_openmm.__file__).parent} | load average before: {os.getloadavg()[0]:.2f}"
    )
    print(f"{'system':<20}{'atoms':>6}{'pairs':>7}{'wall ms':>10}{'CPU ms':>10}{'min CPU ms':>12}")
    for name in args.systems:
        structure, model, numbers, positions, pairs = random_paper_model(name)

        # time_call runs the closure within this iteration, so it sees this system's tensors.
        def energy_and_forces() -> None:
            p = positions.clone().requires_grad_(True)  # noqa: B023
            torch.autograd.grad(model(numbers, p).sum(), p)  # noqa: B023

        timing = time_call(energy_and_forces, args.repeats, args.warmup)
        print(
            f"{name:<20}{structure.n_atoms:>6}{pairs:>7}"
            f"{timing.median_ms:>10.2f}{timing.cpu_median_ms:>10.2f}{timing.cpu_min_ms:>12.2f}"
        )
    print(f"# load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
