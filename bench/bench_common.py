"""Shared set-up of the benchmark scripts in ``bench/`` (run as ``python bench/SCRIPT.py``).

Only the standard library is imported at module level: the peer benchmarks'
``peers/peer_common.py`` imports :func:`time_call` from here inside the peer
venvs, which do not have this project's package.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

#: Starting structures of the showcase systems, ``PRETRAINED / name / "structure.pdb"``.
PRETRAINED = Path(__file__).resolve().parents[1] / "so3krates_openmm" / "pretrained"


class RandomModelCase(NamedTuple):
    """A paper-size model with random weights (seed 0, float32) for one shipped structure."""

    structure: Any
    model: Any
    atomic_numbers: Any
    positions_angstrom: Any
    pairs: int


def random_paper_model(name: str) -> RandomModelCase:
    """The paper-size SO3krates (random weights; speed does not depend on them) for the shipped
    starting structure ``name``, its inputs as tensors, and its number of unordered pairs within
    the cutoff. Imports ``so3krates_openmm`` only when called, so that a script may choose
    which checkout to import first."""
    import torch

    from so3krates_openmm import SO3krates, SO3kratesConfig
    from so3krates_openmm.data.structures import read_structure
    from so3krates_openmm.model.neighbours import neighbour_list

    structure = read_structure(PRETRAINED / name / "structure.pdb")
    torch.manual_seed(0)
    config = SO3kratesConfig(elements=sorted(set(structure.atomic_numbers.tolist())), dtype="float32")
    model = SO3krates(config).eval()
    numbers = torch.tensor(structure.atomic_numbers)
    positions = torch.tensor(structure.positions_angstrom, dtype=torch.float32)
    batch = torch.zeros(len(numbers), dtype=torch.long)
    pairs = neighbour_list(positions, batch, 1, model.cutoff)[0].numel()
    return RandomModelCase(structure, model, numbers, positions, pairs)


@dataclass(frozen=True)
class CallTiming:
    """Milliseconds per call of a timed function: wall time (``time.perf_counter``) and CPU time
    of this process (``time.process_time``, which a shared machine disturbs less)."""

    median_ms: float
    iqr_half_ms: float  # half the interquartile range of the wall times (0 for a single call)
    min_ms: float
    cpu_median_ms: float
    cpu_min_ms: float


def time_call(function: Callable[[], object], repeats: int, warmup: int) -> CallTiming:
    """Call ``function`` ``warmup`` times untimed, then time ``repeats`` calls.

    The minima are the figures least disturbed by other jobs on a shared machine.
    """
    for _ in range(warmup):
        function()
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(repeats):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        function()
        cpu.append((time.process_time() - cpu_start) * 1e3)
        wall.append((time.perf_counter() - wall_start) * 1e3)
    quartiles = statistics.quantiles(wall, n=4) if repeats > 1 else [wall[0]] * 3
    return CallTiming(
        median_ms=statistics.median(wall),
        iqr_half_ms=(quartiles[2] - quartiles[0]) / 2,
        min_ms=min(wall),
        cpu_median_ms=statistics.median(cpu),
        cpu_min_ms=min(cpu),
    )


#: what :func:`host_gemm_rate` measures
HOST_SPEED = "GFLOP/s of a 1-thread float32 torch.mm, 1024 x 1024"


def host_gemm_rate(size: int = 1024, repeats: int = 10) -> float:
    """The host's single-thread float32 matrix-product rate (``torch.mm`` of two ``size`` x ``size`` matrices,
    median of ``repeats``), GFLOP/s: a speed reference for comparing runs made at different times on a shared
    (virtual) host, whose speed varies by tens of percent between hours."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = torch.rand(size, size, generator=torch.Generator().manual_seed(0))
        torch.mm(a, a)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, a)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    times.sort()
    return 2 * size**3 / times[len(times) // 2] / 1e9


def add_malloc_argument(parser: Any) -> None:
    """The step benchmarks' ``--malloc`` option (an ``argparse.ArgumentParser``'s), for :func:`configure_allocator`."""
    parser.add_argument(
        "--malloc", choices=("reuse", "default"), default="reuse",
        help="reuse (default): freed memory stays in glibc's heap, as the project's commands set it, for every "
             "model (peers too); default: glibc as it comes",
    )


def configure_allocator(mode: str) -> str:
    """glibc's allocator for this benchmark and the peer processes it starts, the same for all; returns a note.

    ``reuse``: freed memory stays in the heap (:func:`so3krates_openmm.memory.reuse_freed_memory`, what the
    project's commands do by default) in this process and, through the environment it sets, in its children
    (the peers' venvs). ``default``: glibc as it comes, whose dynamic mmap threshold settles differently in
    each process: large pair-sized tensors may be mapped and page-faulted afresh on every call
    (``bench/RESULTS.md``, "Freed memory")."""
    if mode == "default":
        return "malloc: glibc default"
    from so3krates_openmm.memory import reuse_freed_memory

    if not reuse_freed_memory():
        return "malloc: glibc default (reuse_freed_memory does not apply here)"
    return "malloc: freed memory reused (mallopt here, MALLOC_*_THRESHOLD_ for the peers)"
