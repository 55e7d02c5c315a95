#!/usr/bin/env python
"""OpenMM CPU step of the shipped models with glibc's default malloc vs with freed memory kept.

Each measurement is a fresh process (``mallopt`` cannot be undone within one)
that builds the shipped model's System (openmm-torch ``TorchForce``, CPU
platform, 1 thread, Langevin 0.5 fs), takes warm-up steps and then times
``--steps`` steps: wall and CPU milliseconds per step (user and system time of
the process) and minor page faults per step. ``default`` runs with
``SO3KRATES_MALLOPT=0`` (glibc as it comes), ``reuse`` with
:func:`so3krates_openmm.memory.reuse_freed_memory`. The two alternate
``--rounds`` times per system; the last lines give the median of each and the
ratio reuse/default.

    OMP_WAIT_POLICY=PASSIVE python bench/malloc.py [--systems buckyball_catcher] [--rounds 3] [--steps 100]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from bench_common import PRETRAINED

SYSTEMS = ("ac_ala3_nhme", "buckyball_catcher")
MODES = ("default", "reuse")


def measure(name: str, steps: int, warmup: int) -> dict:
    """One measurement in this process (called in the child)."""
    import resource

    import openmm
    from openmm import unit

    from so3krates_openmm.data.structures import read_structure
    from so3krates_openmm.md.platforms import get_platform
    from so3krates_openmm.memory import reuse_freed_memory
    from so3krates_openmm.openmm_force import create_system, positions_nm

    reuse_freed_memory()  # as the commands do (runtime.configure_process); SO3KRATES_MALLOPT=0 switches it off

    structure = read_structure(PRETRAINED / name / "structure.pdb")
    system = create_system(structure, PRETRAINED / name / "model.pt")
    platform, properties = get_platform("CPU", threads=1)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.5 * unit.femtoseconds)
    integrator.setRandomNumberSeed(1)
    context = openmm.Context(system, integrator, platform, properties)
    context.setPositions(positions_nm(structure))
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    integrator.step(warmup)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    integrator.step(steps)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall_ms": wall / steps * 1e3,
        "user_ms": (after.ru_utime - before.ru_utime) / steps * 1e3,
        "system_ms": (after.ru_stime - before.ru_stime) / steps * 1e3,
        "page_faults": (after.ru_minflt - before.ru_minflt) / steps,
    }


def run_child(name: str, mode: str, steps: int, warmup: int) -> dict:
    environment = dict(os.environ, SO3KRATES_MALLOPT="0" if mode == "default" else "1")
    output = subprocess.run(
        [sys.executable, __file__, "--child", name, "--steps", str(steps), "--warmup", str(warmup)],
        env=environment, capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--rounds", type=int, default=3, help="alternating default/reuse pairs per system")
    parser.add_argument("--steps", type=int, default=100, help="timed MD steps per measurement")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.steps, args.warmup)))
        return
    print(f"# {time.strftime('%Y-%m-%d %H:%M %Z')} | load average before: {os.getloadavg()[0]:.2f} | "
          f"{args.steps} steps after {args.warmup}, CPU platform, 1 thread")
    columns = ("wall_ms", "user_ms", "system_ms", "page_faults")
    print(f"{'system':<20}{'malloc':>8}" + "".join(f"{c:>13}" for c in columns))
    for name in args.systems:
        results: dict[str, list[dict]] = {mode: [] for mode in MODES}
        for _ in range(args.rounds):
            for mode in MODES:
                record = run_child(name, mode, args.steps, args.warmup)
                results[mode].append(record)
                print(f"{name:<20}{mode:>8}" + "".join(f"{record[c]:>13.1f}" for c in columns), flush=True)
        medians = {mode: {c: statistics.median(r[c] for r in results[mode]) for c in columns} for mode in MODES}
        for mode in MODES:
            print(f"{name:<20}{mode:>8}" + "".join(f"{medians[mode][c]:>13.1f}" for c in columns) + "   (median)")
        cpu = {mode: medians[mode]["user_ms"] + medians[mode]["system_ms"] for mode in MODES}
        print(f"{name:<20} reuse/default: wall {medians['reuse']['wall_ms'] / medians['default']['wall_ms']:.2f}, "
              f"CPU {cpu['reuse'] / cpu['default']:.2f}")
    print(f"# load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
