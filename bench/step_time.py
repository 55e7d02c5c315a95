#!/usr/bin/env python
"""Milliseconds per energy+forces evaluation of the paper-size SO3krates model.

For the 42-atom Ac-Ala3-NHMe and the 148-atom buckyball catcher (the shipped
starting structures), float32, a fixed thread count, it times:
  1. eager PyTorch (model forward + autograd forces),
  2. the exported TorchScript module (what TorchForce runs),
  3. one MD step (LangevinMiddleIntegrator, 0.5 fs) in OpenMM's CPU platform,
and prints the OpenMM/eager ratio. The weights are random (speed does not
depend on them); pair counts are printed so that runs can be compared.

    python bench/step_time.py [--threads 2] [--repeats 30] [--systems ac_ala3_nhme buckyball_catcher]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import random_paper_model, time_call

from so3krates_openmm.export import build_energy_module, export_checkpoint
from so3krates_openmm.model.checkpoint import save_checkpoint

#: untimed calls before each timing
WARMUP = 3


def benchmark_system(name: str, threads: int, repeats: int, workdir: Path) -> dict:
    import openmm
    from openmm import unit

    from so3krates_openmm.openmm_force import create_system, positions_nm

    structure, model, numbers, positions, pairs = random_paper_model(name)

    def eager() -> None:
        p = positions.clone().requires_grad_(True)
        energy = model(numbers, p)
        torch.autograd.grad(energy.sum(), p)

    scripted = torch.jit.script(build_energy_module(model, structure.atomic_numbers.tolist()))
    positions_nm_tensor = torch.tensor(structure.positions_angstrom / 10.0, dtype=torch.float64)

    def torchscript() -> None:
        p = positions_nm_tensor.clone().requires_grad_(True)
        energy = scripted(p)
        torch.autograd.grad(energy, p)

    checkpoint = save_checkpoint(model, workdir / f"{name}_checkpoint.pt")
    model_path = export_checkpoint(checkpoint, workdir / f"{name}.pt", structure=structure, dtype="float32")
    system = create_system(structure, model_path)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.5 * unit.femtosecond)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"), {"Threads": str(threads)})
    context.setPositions(positions_nm(structure))
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)

    results = {"system": name, "atoms": structure.n_atoms, "pairs": pairs}
    results["eager"] = time_call(eager, repeats, WARMUP)
    results["torchscript"] = time_call(torchscript, repeats, WARMUP)
    results["openmm_cpu_step"] = time_call(lambda: integrator.step(1), repeats, WARMUP)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch and OpenMM CPU threads")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--systems", nargs="+", default=["ac_ala3_nhme", "buckyball_catcher"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("# so3krates-openmm step time, paper-size model (F=132, T=3, H=4, degrees 1-3, K=32, r_c=5 Å), float32")
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} | {platform.processor() or platform.machine()} | "
        f"{os.cpu_count()} cores | torch {torch.__version__} threads={args.threads} | "
        f"load average before: {os.getloadavg()[0]:.2f}"
    )
    print(f"{'system':<20}{'atoms':>6}{'pairs':>7}{'eager ms':>14}{'TorchScript ms':>18}"
          f"{'OpenMM CPU step ms':>22}{'OpenMM/eager':>14}")
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.systems:
            r = benchmark_system(name, args.threads, args.repeats, Path(workdir))
            eager, torchscript, step = r["eager"], r["torchscript"], r["openmm_cpu_step"]
            print(
                f"{r['system']:<20}{r['atoms']:>6}{r['pairs']:>7}"
                f"{eager.median_ms:>9.2f} ±{eager.iqr_half_ms:<4.1f}"
                f"{torchscript.median_ms:>13.2f} ±{torchscript.iqr_half_ms:<4.1f}"
                f"{step.median_ms:>17.2f} ±{step.iqr_half_ms:<4.1f}{step.median_ms / eager.median_ms:>12.2f}"
            )
    print(f"# load average after: {os.getloadavg()[0]:.2f} (figures are only meaningful on an otherwise idle machine)")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
