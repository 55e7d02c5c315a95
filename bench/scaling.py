#!/usr/bin/env python
"""Step time against system size: periodic water boxes from 24 to ~5000 atoms.

The paper-size model (random weights, elements H and O, float32) evaluates
energy and forces of cubic water boxes at liquid density (one molecule per
29.9 Å^3) with the cell-list neighbour search; for comparison, the all-pairs
search up to a moderate size. Prints ms per evaluation, pairs within the
cutoff, and the log-log slope of time against atoms (1 = linear scaling).

    python bench/scaling.py [--threads 2] [--max-molecules-per-side 12]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from bench_common import time_call

from so3krates_openmm import SO3krates, SO3kratesConfig
from so3krates_openmm.data.builders import build_water
from so3krates_openmm.model.neighbours import neighbour_list


def water_box(per_side: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Atomic numbers, positions (Å) and box (Å) of per_side^3 randomly oriented waters on a grid."""
    structure = build_water(per_side**3, periodic=True, seed=seed)
    return (torch.tensor(structure.atomic_numbers), torch.tensor(structure.positions_angstrom, dtype=torch.float32),
            torch.tensor(structure.box_angstrom, dtype=torch.float32))


def time_energy_forces(model: SO3krates, numbers, positions, box, method: str, repeats: int) -> float:
    """Median ms of one energy+forces evaluation with the given neighbour search."""
    batch = torch.zeros(len(numbers), dtype=torch.long)
    boxes = box.unsqueeze(0)

    def run() -> None:
        p = positions.clone().requires_grad_(True)
        first, second, shifts = neighbour_list(p, batch, 1, model.cutoff, boxes, True, method)
        energy = model.energy_from_neighbours(numbers, p, batch, 1, first, second, shifts)
        torch.autograd.grad(energy.sum(), p)

    return time_call(run, repeats, warmup=1).median_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-molecules-per-side", type=int, default=12, help="12 gives 5184 atoms")
    parser.add_argument("--all-pairs-max-atoms", type=int, default=1600)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = SO3krates(SO3kratesConfig(elements=(1, 8), dtype="float32")).eval()
    print(f"# scaling of energy+forces, paper-size model, float32, threads={args.threads}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.2f}")
    print(f"{'atoms':>7}{'pairs':>9}{'cell list ms':>15}{'all pairs ms':>15}")
    sizes, times = [], []
    for per_side in range(3, args.max_molecules_per_side + 1):
        numbers, positions, box = water_box(per_side)
        n_atoms = len(numbers)
        pairs = neighbour_list(
            positions, torch.zeros(n_atoms, dtype=torch.long), 1, model.cutoff, box.unsqueeze(0)
        )[0].numel()
        repeats = 5 if n_atoms < 1500 else 2
        cells = time_energy_forces(model, numbers, positions, box, "cell_list", repeats)
        all_pairs = (
            f"{time_energy_forces(model, numbers, positions, box, 'all_pairs', repeats):15.1f}"
            if n_atoms <= args.all_pairs_max_atoms
            else f"{'-':>15}"
        )
        print(f"{n_atoms:>7}{pairs:>9}{cells:15.1f}{all_pairs}", flush=True)
        sizes.append(n_atoms)
        times.append(cells)
    large = np.array(sizes) >= 500
    slope = np.polyfit(np.log(np.array(sizes)[large]), np.log(np.array(times)[large]), 1)[0]
    print(f"# log-log slope of cell-list time vs atoms (>= 500 atoms): {slope:.3f}")
    print(f"# load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
