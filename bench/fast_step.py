#!/usr/bin/env python
"""OpenMM step time of the fast SO3krates path against the reference export and MACE L=0, in one run.

    .venv/bin/python bench/fast_step.py [--threads 1 2] [--repeats 30] [--rounds 2] [--kernels reference analytic fused]
                                        [--no-mace] [--profile] [--json FILE]
                                        [--models equivariant invariant] [--structures PDB ...]

For each thread count (OpenMM CPU ``Threads`` = ``torch.set_num_threads``) and
each shipped structure (42-atom Ac-Ala3-NHMe, 148-atom buckyball catcher; ``--structures``
for others) it times one ``LangevinMiddleIntegrator`` step (0.5 fs, CPU platform, float32,
paper-size model F=132 T=3: the shipped checkpoint of each system; with ``--models invariant``
also or instead the invariant ablation (``degrees=()``, the stability study's model, rows
``so3krates-invariant-<kind>``) of the same size and config for any structure, with seeded
untrained weights: the step time does not depend on the weights)
of each export kind (``so3krates-export --kernels``):

- ``reference``: the readable model, forces by autograd in openmm-torch;
- ``analytic``: energy and forces with the hand-derived backward, pure TorchScript;
- ``fused``: the same with the C++/OpenMP per-pair and filter kernels;

and MACE L=0 (64x0e, openmm-ml) in its venv (``bash bench/peers/setup_venvs.sh mace``)
unless ``--no-mace``. It prints ms/step (per model the best median of
``--rounds`` rounds run in alternating order, and the fastest single step), the ratios reference/fast and
MACE/fast, and the targets of issue 19 (<= 5 ms at 42 atoms and <= 25 ms at
148 atoms at the best thread count; MACE L=0 / SO3krates >= 6 and >= 5 at one
thread). The records of the fast kinds also have ``bare_ms``: one energy+forces call of the
exported module as openmm-torch makes it, outside OpenMM (the step minus it is OpenMM's and
TorchForce's own share: integrator, position and force copies; not for ``reference``, whose
forces openmm-torch gets by its own backward pass in C++). ``--profile`` adds a
torch.profiler table per kind, system and thread count (top operators by self CPU time,
5 energy+forces calls of the exported module; the fused operator's stages appear as
``so3krates::energy_forces::<stage>``).
The host's speed (a single-thread float32 matrix product, GFLOP/s) is printed before and after: a
virtual host's speed varies between hours, and this says which runs are comparable.
On a shared machine compare within one run; record figures only from an idle machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
sys.path.insert(0, str(HERE))

from bench_common import HOST_SPEED, add_malloc_argument, configure_allocator, host_gemm_rate  # noqa: E402
from compare import DEFAULT_STRUCTURES, load_average, run_peer  # noqa: E402

KINDS = ("reference", "analytic", "fused")
#: targets of issue 19: ms/step at the best thread count, and MACE L=0 / SO3krates at one thread
STEP_TARGET_MS = {42: 5.0, 148: 25.0}
MACE_RATIO_TARGET = {42: 6.0, 148: 5.0}


MODELS = ("equivariant", "invariant")
#: the shipped models' configuration, for the invariant models of ``--models invariant``
SHIPPED_CHECKPOINT = DEFAULT_STRUCTURES[0].parent / "best_checkpoint.pt"


def model_name(model: str, kind: str) -> str:
    """The name of a SO3krates row: ``so3krates-<kind>`` (equivariant) or ``so3krates-invariant-<kind>``."""
    return f"so3krates-{kind}" if model == "equivariant" else f"so3krates-invariant-{kind}"


def model_checkpoint(structure_path: Path, structure: Any, model: str, workdir: Path) -> Path | None:
    """The checkpoint to time on a structure: the shipped one beside it (``equivariant``; None if there
    is none), or a paper-size invariant model of the shipped config (``degrees=()``) for the structure's
    elements with seeded untrained weights (``invariant``)."""
    if model == "equivariant":
        checkpoint = structure_path.parent / "best_checkpoint.pt"
        if not checkpoint.is_file():
            print(f"[fast_step] {structure_path}: no shipped checkpoint beside it, no equivariant rows",
                  file=sys.stderr, flush=True)
            return None
        return checkpoint
    import dataclasses

    import torch

    from so3krates_openmm import SO3krates
    from so3krates_openmm.model.checkpoint import load_model, save_checkpoint

    path = workdir / f"{structure.n_atoms}_invariant_checkpoint.pt"
    if path.is_file():  # made by an earlier round or thread count: the same seeded weights
        return path
    elements = tuple(sorted(set(structure.atomic_numbers.tolist())))
    config = dataclasses.replace(load_model(SHIPPED_CHECKPOINT).config, degrees=(), elements=elements)
    torch.manual_seed(0)
    return save_checkpoint(SO3krates(config).eval(), path)


def export_model(checkpoint: Path, structure: Any, kind: str, workdir: Path) -> Path:
    """The paper-size float32 ``checkpoint`` for ``structure``, exported as ``kind``."""
    from so3krates_openmm.export import export_checkpoint

    return export_checkpoint(
        checkpoint, workdir / f"{structure.n_atoms}_{kind}.pt", structure=structure, dtype="float32", kernels=kind
    )


def module_call(kind: str, module: Any, positions_nm: Any) -> Callable[[], None]:
    """One energy+forces evaluation of an exported module as openmm-torch makes it: the forces by
    autograd for ``reference`` (energy-only module), in the module for the fast kinds."""
    import torch

    def call() -> None:
        if kind == "reference":
            p = positions_nm.clone().requires_grad_(True)
            torch.autograd.grad(module(p), p)
        else:
            module(positions_nm)

    return call


def so3krates_records(
    threads: int, kinds: list[str], repeats: int, warmup: int, workdir: Path, models: list[str], structures: list[Path]
) -> list[dict[str, Any]]:
    import torch
    from peer_common import Molecule, step_record

    from so3krates_openmm.data.structures import read_structure
    from so3krates_openmm.openmm_force import create_system

    torch.set_num_threads(threads)
    records = []
    for path in structures:
        structure = read_structure(path)
        name = path.parent.name
        molecule = Molecule(
            name, structure.topology, structure.positions_angstrom / 10.0, structure.atomic_numbers.tolist()
        )
        positions_nm = torch.tensor(molecule.positions_nm, dtype=torch.float64)
        for model in models:
            checkpoint = model_checkpoint(path, structure, model, workdir)
            if checkpoint is None:
                continue
            description = "SO3krates F=132 T=3 H=4 degrees {} K=32 r_c=5 Å".format(
                "1-3" if model == "equivariant" else "() (invariant)")
            for kind in kinds:
                print(f"[fast_step] {model} {kind} on {name}, {threads} thread(s)", file=sys.stderr, flush=True)
                exported = export_model(checkpoint, structure, kind, workdir)
                system = create_system(structure, exported)  # first: it loads the fused kernels' operators
                bare = None if kind == "reference" else module_call(kind, torch.jit.load(str(exported)), positions_nm)
                record = step_record(
                    model_name(model, kind), description, f"so3krates-export --kernels {kind} -> TorchForce",
                    molecule, 5.0, system, threads, repeats, warmup, bare=bare,
                    bare_note="one energy+forces call of the exported module outside OpenMM",
                )
                record["threads"] = threads
                records.append(record)
    return records


def profile_tables(
    kinds: list[str], thread_counts: list[int], workdir: Path, models: list[str], structures: list[Path], rows: int = 12
) -> str:
    """torch.profiler tables (top ``rows`` operators by self CPU time) of 5 energy+forces calls of the
    exported module of each kind, system and thread count, as openmm-torch calls it."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from so3krates_openmm.data.structures import read_structure

    tables = []
    for path in structures:
        structure = read_structure(path)
        positions = torch.tensor(structure.positions_angstrom / 10.0, dtype=torch.float64)
        for model in models:
            checkpoint = model_checkpoint(path, structure, model, workdir)
            if checkpoint is None:
                continue
            for kind in kinds:
                exported = export_model(checkpoint, structure, kind, workdir)
                call = module_call(kind, torch.jit.load(str(exported)), positions)
                for threads in thread_counts:
                    torch.set_num_threads(threads)
                    for _ in range(5):
                        call()
                    with profile(activities=[ProfilerActivity.CPU]) as profiler:
                        for _ in range(5):
                            call()
                    table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
                    heading = f"## profile: {model_name(model, kind)}, {path.parent.name}, {threads} thread(s), 5 calls"
                    tables.append(f"{heading}\n{table}")
    return "\n".join(tables)


def overhead_summary(records: list[dict[str, Any]]) -> str:
    """Per SO3krates kind, system and thread count: the OpenMM step, the exported module's call alone
    (``bare_ms``) and the difference, OpenMM's and TorchForce's share (medians, ms)."""
    lines = [f"{'model':<31}{'atoms':>6}{'threads':>8}{'step':>9}{'module':>9}{'outside':>9}"]
    for r in sorted(records, key=lambda r: (r["atoms"], r["model"], r["threads"])):
        if "bare_ms" in r:
            lines.append(f"{r['model']:<31}{r['atoms']:>6}{r['threads']:>8}{r['openmm_step_ms']:>9.2f}"
                         f"{r['bare_ms']:>9.2f}{r['openmm_step_ms'] - r['bare_ms']:>9.2f}")
    return "\n".join(lines)


def mace_records(threads: int, repeats: int, warmup: int, structures: list[Path]) -> list[dict[str, Any]]:
    record = run_peer("mace", structures, threads, repeats, warmup, ["--models", "L0", "--no-bare"])
    for entry in record["results"]:
        entry["threads"] = threads
    return record["results"]


def best_of_rounds(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model, structure and thread count: the round with the lowest median, with the
    fastest single step of all rounds (``openmm_step_min_ms``)."""
    best: dict[tuple[str, int, int], dict[str, Any]] = {}
    for record in records:
        key = (record["model"], record["atoms"], record["threads"])
        if key not in best or record["openmm_step_ms"] < best[key]["openmm_step_ms"]:
            fastest = (
                min(record["openmm_step_min_ms"], best[key]["openmm_step_min_ms"])
                if key in best
                else record["openmm_step_min_ms"]
            )
            best[key] = dict(record, openmm_step_min_ms=fastest)
        else:
            best[key]["openmm_step_min_ms"] = min(best[key]["openmm_step_min_ms"], record["openmm_step_min_ms"])
    return list(best.values())


def summary(
    records: list[dict[str, Any]], kinds: list[str], thread_counts: list[int], statistic: str, models: list[str]
) -> str:
    """Table of ms/step (``statistic``: ``openmm_step_ms`` median or ``openmm_step_min_ms``) and ratios
    (``ref``: the same model's ``reference`` export)."""
    step = {(r["model"], r["atoms"], r["threads"]): r[statistic] for r in records}
    fastest = kinds[-1]
    lines = [f"{'model':<31}{'atoms':>6}" + "".join(f"{f'{t} thr ms':>12}" for t in thread_counts)
             + "".join(f"{f'ref/this {t}':>13}" for t in thread_counts)
             + "".join(f"{f'mace/this {t}':>14}" for t in thread_counts)]
    rows = [(model_name(m, k), model_name(m, "reference")) for m in models for k in kinds]
    if any(r["model"] == "mace-L0" for r in records):
        rows.append(("mace-L0", "so3krates-reference"))
    for atoms in sorted({r["atoms"] for r in records}):
        for model, reference in rows:
            times = [step.get((model, atoms, t)) for t in thread_counts]
            if not any(times):
                continue
            refs = [step.get((reference, atoms, t)) for t in thread_counts]
            maces = [step.get(("mace-L0", atoms, t)) for t in thread_counts]
            cells = "".join(f"{x:>12.2f}" if x else f"{'-':>12}" for x in times)
            cells += "".join(f"{r / x:>13.2f}" if x and r else f"{'-':>13}" for x, r in zip(times, refs, strict=True))
            cells += "".join(f"{m / x:>14.2f}" if x and m else f"{'-':>14}" for x, m in zip(times, maces, strict=True))
            lines.append(f"{model:<31}{atoms:>6}{cells}")
    lines.append("")
    for atoms, target in STEP_TARGET_MS.items():
        times = [
            step[(f"so3krates-{fastest}", atoms, t)]
            for t in thread_counts
            if (f"so3krates-{fastest}", atoms, t) in step
        ]
        if times:
            best = min(times)
            lines.append(
                f"# target {atoms} atoms: {fastest} best {best:.2f} ms/step <= {target} ms: "
                f"{'MET' if best <= target else 'NOT MET'}"
            )
        mace, fast = step.get(("mace-L0", atoms, 1)), step.get((f"so3krates-{fastest}", atoms, 1))
        if mace and fast:
            ratio = mace / fast
            goal = MACE_RATIO_TARGET[atoms]
            lines.append(
                f"# target {atoms} atoms: MACE L=0 / {fastest} at 1 thread {ratio:.2f} >= {goal}: "
                f"{'MET' if ratio >= goal else 'NOT MET'}"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (OpenMM and torch)")
    parser.add_argument(
        "--repeats", type=int, default=30, help="timed single steps per model, structure and thread count"
    )
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--kernels", nargs="+", choices=KINDS, default=list(KINDS),
                        help="export kinds to time; the last one is checked against the targets")
    parser.add_argument("--rounds", type=int, default=2, help="time everything this many times, alternating the order")
    parser.add_argument("--no-mace", action="store_true", help="skip MACE L=0 (needs bench/peers/.venvs/mace)")
    parser.add_argument("--profile", action="store_true",
                        help="also print torch.profiler tables of both systems at each thread count")
    add_malloc_argument(parser)
    parser.add_argument("--json", type=Path, help="also write all records to this file")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=["equivariant"],
                        help="equivariant: the shipped checkpoints; invariant: paper-size invariant models "
                             "(degrees=()) with untrained weights")
    parser.add_argument("--structures", type=Path, nargs="+", default=DEFAULT_STRUCTURES,
                        help="PDB files (default: the two shipped systems; the equivariant model is timed on those "
                             "with the shipped best_checkpoint.pt beside them)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    allocator = configure_allocator(args.malloc)
    started = time.time()
    print(f"# fast step benchmark | {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC | "
          f"{platform.processor() or platform.machine()} | {os.cpu_count()} cores | threads {args.threads} | "
          f"repeats={args.repeats} | OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} | "
          f"models {' '.join(args.models)} | CPU platform, float32, LangevinMiddle 0.5 fs")
    print(f"# command: {shlex.join([sys.executable, *sys.argv])} | {allocator}")
    print(f"# load average before: {load_average()}", flush=True)
    host_speed = {"measure": HOST_SPEED, "before": host_gemm_rate()}
    print(f"# host speed before: {host_speed['before']:.1f} {HOST_SPEED}", flush=True)
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="so3krates_fast_step_") as workdir:
        for round_index in range(args.rounds):
            parts = [
                (threads, part)
                for threads in args.threads
                for part in ["so3krates"] + ([] if args.no_mace else ["mace"])
            ]
            for threads, part in parts if round_index % 2 == 0 else parts[::-1]:
                if part == "so3krates":
                    found = so3krates_records(
                        threads, args.kernels, args.repeats, args.warmup, Path(workdir), args.models, args.structures
                    )
                else:
                    found = mace_records(threads, args.repeats, args.warmup, args.structures)
                for record in found:
                    record["round"] = round_index + 1
                records += found
                print(
                    f"# round {round_index + 1}: load average after {part}, {threads} thread(s): {load_average()}",
                    flush=True,
                )
        best = best_of_rounds(records)
        print()
        print(f"## ms/step, median of {args.repeats} steps (best of {args.rounds} rounds)")
        print(summary(best, args.kernels, args.threads, "openmm_step_ms", args.models))
        print()
        print("## ms/step, fastest single step of all rounds (the least disturbed by other jobs)")
        print(summary(best, args.kernels, args.threads, "openmm_step_min_ms", args.models))
        print()
        print("## OpenMM step vs one call of the exported module outside OpenMM, ms (best round)")
        print(overhead_summary(best))
        if args.profile:
            print()
            print(profile_tables(args.kernels, args.threads, Path(workdir), args.models, args.structures))
    host_speed["after"] = host_gemm_rate()
    print(f"# host speed after: {host_speed['after']:.1f} {HOST_SPEED}")
    print(f"# load average after: {load_average()} | wall time {time.time() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(
            {"records": records, "threads": args.threads, "kernels": args.kernels, "host_speed": host_speed,
             "malloc": allocator}, indent=1
        ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
