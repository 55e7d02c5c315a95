#!/usr/bin/env python
"""How close the fused step's largest stage, the radial filter networks, runs to the host's matrix-product rate.

    .venv/bin/python bench/radial_filters.py [--threads 1 2] [--repeats 20]
        [--structures ac_ala3_nhme buckyball_catcher]

The radial filters (all 2T of them, 6 in the paper-size model: PhysNet basis, K + 1 -> F, SiLU, F -> F per
filter) are half of the fused energy+forces of the buckyball catcher (``fast_step.py --profile``:
``so3krates::energy_forces::radial_forward`` and ``radial_backward``). Both are matrix products over the
unordered pairs. For each shipped structure (its pairs within the cutoff; paper-size model, random weights,
float32) and thread count this times, median of ``--repeats`` calls:

- ``radial_forward``: the fused operator ``torch.ops.so3krates.radial_forward`` (filters and SiLU slopes);
- ``radial_backward``: ``torch.ops.so3krates.radial_backward`` (filter gradients -> dE/dd);
- ``torch.mm, same shapes``: only the forward's matrix products, ``(P, K+1) x (K+1, F)`` and
  ``(P, F) x (F, F)`` per filter, by ``torch.mm`` (no basis, no SiLU): what the library's GEMM does with
  these shapes;

each as GFLOP/s of the forward's matrix-product FLOPs (2 P N ((K+1) F + F^2); the backward has the same),
beside the host's rate on a large square product (``bench_common.host_gemm_rate``) measured in the same run.
A ratio near 1 to ``torch.mm`` says the stage runs at the GEMM rate these shapes allow: a faster step then needs
fewer FLOPs, not better code. Compare figures within one run; on a shared machine pause other jobs.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    HOST_SPEED,
    add_malloc_argument,
    configure_allocator,
    host_gemm_rate,
    random_paper_model,
    time_call,
)

#: the stage every rate is compared with
LIBRARY_GEMM = "torch.mm, same shapes"


def stage_calls(name: str) -> tuple[int, float, dict[str, Callable[[], object]]]:
    """For the shipped structure ``name``: its number of pairs, the forward's matrix-product FLOPs, and the three
    timed calls (module docstring) on its pair distances (paper-size model, random weights, float32)."""
    import torch

    from so3krates_openmm.model.fast import FastSO3krates
    from so3krates_openmm.model.neighbours import neighbour_list

    case = random_paper_model(name)
    fast = FastSO3krates(case.model, "fused")
    positions = case.positions_angstrom
    first, second, shifts = neighbour_list(
        positions, torch.zeros(len(positions), dtype=torch.long), 1, case.model.cutoff
    )
    distances = (positions[second] - positions[first] + shifts).norm(dim=1)
    filters_count, features, _ = fast.radial_out_weight.shape
    basis_width = fast.radial_in_weight.shape[1]  # K + 1 (the bias column)
    pairs = distances.numel()
    flops = 2 * pairs * filters_count * (basis_width * features + features * features)
    weights = (fast.radial_centres, fast.beta, fast.radial_in_weight, fast.radial_out_weight)
    _, slopes = torch.ops.so3krates.radial_forward(distances, *weights, fast.radial_out_bias)
    generator = torch.Generator().manual_seed(0)
    gradients = [torch.randn(pairs, features, generator=generator) for _ in range(filters_count)]
    basis = torch.rand(pairs, basis_width, generator=generator)
    hidden = torch.rand(pairs, features, generator=generator)
    in_weights = fast.radial_in_weight.view(filters_count, features, basis_width)

    def library_products() -> None:
        for in_weight, out_weight in zip(in_weights, fast.radial_out_weight, strict=True):
            torch.mm(basis, in_weight.t())
            torch.mm(hidden, out_weight.t())

    return pairs, flops, {
        "radial_forward": lambda: torch.ops.so3krates.radial_forward(distances, *weights, fast.radial_out_bias),
        "radial_backward": lambda: torch.ops.so3krates.radial_backward(gradients, distances, *weights, slopes),
        LIBRARY_GEMM: library_products,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per stage")
    add_malloc_argument(parser)
    parser.add_argument("--structures", nargs="+", default=["ac_ala3_nhme", "buckyball_catcher"],
                        help="shipped structures (so3krates_openmm/pretrained/<name>/structure.pdb)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    allocator = configure_allocator(args.malloc)
    import torch

    from so3krates_openmm.model import kernels

    kernels.load()
    print(f"# radial filters | {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC | {os.cpu_count()} cores | "
          f"load average {os.getloadavg()[0]:.2f} | OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} | {allocator}")
    print(f"# host speed before: {host_gemm_rate():.1f} {HOST_SPEED}")
    print(f"{'structure':18s} {'pairs':>6s} {'threads':>7s} {'stage':22s} {'ms':>8s} {'GFLOP/s':>8s} "
          f"{'/ torch.mm':>10s}")
    for name in args.structures:
        pairs, flops, calls = stage_calls(name)
        for threads in args.threads:
            torch.set_num_threads(threads)
            rows = {stage: time_call(call, args.repeats, warmup=3).median_ms for stage, call in calls.items()}
            library_rate = flops / rows[LIBRARY_GEMM] / 1e6
            for stage, milliseconds in rows.items():
                rate = flops / milliseconds / 1e6
                print(f"{name:18s} {pairs:6d} {threads:7d} {stage:22s} {milliseconds:8.2f} {rate:8.1f} "
                      f"{rate / library_rate:10.2f}", flush=True)
    print(f"# host speed after: {host_gemm_rate():.1f} {HOST_SPEED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
