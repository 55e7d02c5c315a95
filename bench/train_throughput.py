"""Training throughput of SO3krates: structures per second on 42-atom structures (Ac-Ala3-NHMe).

One training step is the trainer's real step: batch gather, forward, forces
by autograd (create_graph), weighted energy/force MSE, backward, gradient
clipping, Adam, learning-rate schedule and EMA update. Measured through
:class:`so3krates_openmm.training.Trainer` epochs (no validation), with the
paper-size model (F=132, T=3, H=4, degrees 1-3, K=32, 5 Å) in float32 and a
fixed number of threads, for batch sizes 1, 5 and 10.

The structures are the MMFF geometry of Ac-Ala3-NHMe from
:func:`so3krates_openmm.data.builders.build_ac_ala3_nhme` (no xTB needed),
randomly displaced by 0.1 Å and labelled by a random teacher model: the
labels do not change the cost of a step.

Usage: ``python bench/train_throughput.py [--threads 2] [--frames 60] [--epochs 2]``.

On a machine shared with other busy processes, OpenMP's default of spinning
while waiting makes 2 threads many times slower than 1;
``OMP_WAIT_POLICY=PASSIVE`` (set before Python starts) avoids that. The
header prints the policy in effect.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch

from so3krates_openmm.data.builders import build_ac_ala3_nhme
from so3krates_openmm.training import Trainer, config_from_dict
from so3krates_openmm.training.synthetic import teacher_dataset


def measure(dataset, batch_size: int, frames: int, epochs: int, threads: int, dtype: str, output: str) -> dict:
    """Structures per second of training epochs (after one warm-up epoch)."""
    config = config_from_dict({
        "data": "<bench>", "train_size": frames, "valid_size": 1, "test_size": 0, "batch_size": batch_size,
        "threads": threads, "dtype": dtype, "output": output, "progress": False, "patience": None,
    })
    trainer = Trainer(config, dataset=dataset, log=lambda message: None)
    trainer.setup()
    trainer.train_epoch(1)  # warm-up (allocator, first-call overheads)
    started, cpu_started = time.perf_counter(), time.process_time()
    for epoch in range(2, 2 + epochs):
        trainer.train_epoch(epoch)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    steps = epochs * -(-frames // batch_size)
    return {
        "batch_size": batch_size,
        "structures_per_s": epochs * frames / seconds,
        "ms_per_step": 1e3 * seconds / steps,
        "cpu_ms_per_structure": 1e3 * cpu_seconds / (epochs * frames),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--frames", type=int, default=60, help="structures per timed epoch (default 60)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per batch size (default 2)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    peptide = build_ac_ala3_nhme(relax=False, log=lambda message: None)
    dataset = teacher_dataset(peptide.atomic_numbers, peptide.positions_angstrom, args.frames + 1, displacement=0.1,
                              force_rms=30.0)
    print(f"SO3krates training throughput: Ac-Ala3-NHMe ({len(peptide.atomic_numbers)} atoms), paper-size model "
          f"(F=132, T=3, H=4, degrees 1-3, K=32, 5 Å), {args.dtype}, {args.threads} threads, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print("step = forward + forces (autograd, create_graph) + backward + clip + Adam + EMA; "
          "CPU ms/structure = process CPU time (all threads), less sensitive to other load than wall time")
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    policy = os.environ.get("OMP_WAIT_POLICY", "(unset)")
    print(f"load average before: {load} (figures are only comparable on an otherwise idle machine); "
          f"OMP_WAIT_POLICY={policy}")
    print(f"{'batch':>5}  {'structures/s':>12}  {'ms/step':>8}  {'CPU ms/structure':>16}")
    with tempfile.TemporaryDirectory() as scratch:
        for batch_size in args.batch_sizes:
            result = measure(dataset, batch_size, args.frames, args.epochs, args.threads, args.dtype,
                             f"{scratch}/run{batch_size}")
            print(f"{result['batch_size']:>5}  {result['structures_per_s']:>12.2f}  {result['ms_per_step']:>8.1f}  "
                  f"{result['cpu_ms_per_structure']:>16.1f}", flush=True)
    print("load average after: " + " ".join(f"{value:.2f}" for value in os.getloadavg()))


if __name__ == "__main__":
    main()
