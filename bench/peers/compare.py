#!/usr/bin/env python
"""OpenMM step time of SO3krates against MACE, NequIP and TorchMD-Net TensorNet, in one run.

Run with the project's venv (the peers run in their own venvs, made by
``bash bench/peers/setup_venvs.sh all``)::

    .venv/bin/python bench/peers/compare.py [--threads 2] [--repeats 30] [--peers mace nequip tensornet]

For each structure (default: the shipped 42-atom Ac-Ala3-NHMe and 148-atom
buckyball catcher) it times one ``LangevinMiddleIntegrator`` step (0.5 fs,
OpenMM CPU platform, ``Threads`` = ``torch.set_num_threads`` = ``--threads``,
float32 models, random weights) of:

- SO3krates at the paper's size (F=132, T=3) and a small config (F=60, T=2:
  the closest to 64 that the three degrees and four heads divide), exported to
  TorchScript and run by openmm-torch's ``TorchForce``, this project's route;
- each peer through its usual openmm-ml route, by its script in its venv
  (``mace_step.py``, ``nequip_step.py``, ``tensornet_step.py``).

It prints a table of ms/step and the ratios peer/SO3krates (> 1: SO3krates is
faster), the bare model energy+forces times where measured, and the load
average before and after: other jobs share the machine's cores, so the
figures mean most on an idle machine. ``--json FILE`` also writes every record.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))  # bench/, for bench_common
from bench_common import HOST_SPEED, add_malloc_argument, configure_allocator, host_gemm_rate  # noqa: E402

VENVS = HERE / ".venvs"
PRETRAINED = ROOT / "so3krates_openmm" / "pretrained"
DEFAULT_STRUCTURES = [
    PRETRAINED / "ac_ala3_nhme" / "structure.pdb",
    PRETRAINED / "buckyball_catcher" / "structure.pdb",
]
PEER_SCRIPTS = {"mace": "mace_step.py", "nequip": "nequip_step.py", "tensornet": "tensornet_step.py"}
#: name -> (features F, layers T); the other hyperparameters are the paper's defaults
SO3KRATES_CONFIGS = {"so3krates-paper": (132, 3), "so3krates-small": (60, 2)}
RESULT_KEY = "peer_benchmark"  # same as peer_common.RESULT_KEY
PEER_TIMEOUT_S = 3600


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` shows them."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min, {os.cpu_count()} cores)"


def so3krates_records(
    structure_paths: Sequence[Path], threads: int, repeats: int, warmup: int,
    configs: dict[str, tuple[int, int]] = SO3KRATES_CONFIGS, kernels: str = "reference", bare: bool = True,
) -> list[dict[str, Any]]:
    """Time this project's model in OpenMM (TorchForce) on each structure: each of ``configs`` (name -> (F, T);
    default paper size and small), exported with ``kernels`` (``so3krates-export --kernels``); ``bare`` also
    times the eager model's energy+forces."""
    import torch

    sys.path.insert(0, str(HERE))
    from peer_common import (  # the peers' own helpers
        Molecule,
        parameter_count,
        step_record,
    )

    from so3krates_openmm import SO3krates, SO3kratesConfig
    from so3krates_openmm.data.structures import read_structure
    from so3krates_openmm.export import export_checkpoint
    from so3krates_openmm.model.checkpoint import save_checkpoint
    from so3krates_openmm.openmm_force import create_system

    torch.set_num_threads(threads)
    records = []
    with tempfile.TemporaryDirectory(prefix="so3krates_compare_") as workdir:
        for path in structure_paths:
            structure = read_structure(path)
            name = path.parent.name if path.name == "structure.pdb" else path.stem
            molecule = Molecule(
                name, structure.topology, structure.positions_angstrom / 10.0, structure.atomic_numbers.tolist()
            )
            elements = sorted(set(molecule.atomic_numbers))
            for key, (features, layers) in configs.items():
                print(
                    f"[compare] {key} (F={features}, T={layers}) on {name} ({molecule.n_atoms} atoms)",
                    file=sys.stderr, flush=True,
                )
                torch.manual_seed(0)
                config = SO3kratesConfig(elements=elements, features=features, layers=layers, dtype="float32")
                model = SO3krates(config).eval()
                checkpoint = save_checkpoint(model, Path(workdir) / f"{key}_{name}.ckpt.pt")
                model_path = export_checkpoint(
                    checkpoint, Path(workdir) / f"{key}_{name}.pt", structure=structure, dtype="float32",
                    periodic=structure.box_angstrom is not None, kernels=kernels,
                )
                system = create_system(structure, model_path)
                numbers = torch.tensor(molecule.atomic_numbers)
                positions = torch.tensor(structure.positions_angstrom, dtype=torch.float32)

                # step_record times the closure right away, within this iteration
                def energy_forces() -> None:
                    p = positions.clone().requires_grad_(True)  # noqa: B023 (called in this iteration)
                    torch.autograd.grad(model(numbers, p).sum(), p)  # noqa: B023 (called in this iteration)

                records.append(step_record(
                    key, f"SO3krates F={features} T={layers} H=4 degrees 1-3 K=32 r_c=5 Å",
                    f"TorchScript export ({kernels} kernels) -> openmm-torch TorchForce", molecule,
                    float(model.cutoff), system, threads, repeats, warmup, bare=energy_forces if bare else None,
                    parameters=parameter_count(model),
                ))
    return records


def peer_python(peer: str) -> Path:
    """The peer venv's interpreter, or a clear error naming the set-up command."""
    python = VENVS / peer / "bin" / "python"
    if not python.is_file():
        raise FileNotFoundError(
            f"the {peer} venv is missing ({python}): create it with `bash bench/peers/setup_venvs.sh {peer}`"
        )
    return python


def run_peer(
    peer: str, structure_paths: Sequence[Path], threads: int, repeats: int, warmup: int, extra_args: Sequence[str] = (),
    timeout_s: float = PEER_TIMEOUT_S,
) -> dict[str, Any]:
    """Run ``<peer>_step.py`` in its venv (with ``extra_args``, e.g. ``--models L0``) and return its JSON record.

    Raises ``subprocess.TimeoutExpired`` after ``timeout_s`` seconds (the process is killed)."""
    python = peer_python(peer)
    command = [str(python), str(HERE / PEER_SCRIPTS[peer]), *map(str, structure_paths),
               "--threads", str(threads), "--repeats", str(repeats), "--warmup", str(warmup), *extra_args]
    environment = dict(os.environ)
    environment.update({
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",
        "PYTHONPATH": str(HERE),
        "PYTHONWARNINGS": "ignore",  # the peers' import-time deprecation chatter
    })
    environment.pop("VIRTUAL_ENV", None)
    print(f"[compare] {peer}: {shlex.join(command)}", file=sys.stderr, flush=True)
    completed = subprocess.run(
        command, cwd=HERE, env=environment, stdout=subprocess.PIPE, text=True, timeout=timeout_s, check=False
    )
    for line in reversed(completed.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get(RESULT_KEY):
                return record
    raise RuntimeError(
        f"{peer}: {PEER_SCRIPTS[peer]} exited with {completed.returncode} and printed no result line; "
        f"its stdout ended with:\n{completed.stdout[-2000:]}"
    )


def best_of_rounds(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per model and structure: the round with the lowest median step time.

    It keeps every round's median (``round_medians_ms``) and the lowest single
    step and bare time of all rounds.
    """
    best: dict[tuple[str, str], dict[str, Any]] = {}
    rounds: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        key = (record["model"], record["structure"])
        rounds.setdefault(key, []).append(record)
        if key not in best or record["openmm_step_ms"] < best[key]["openmm_step_ms"]:
            best[key] = record
    chosen = []
    for key, record in best.items():
        merged = dict(record)
        merged["round_medians_ms"] = [r["openmm_step_ms"] for r in rounds[key]]
        merged["openmm_step_min_ms"] = min(r.get("openmm_step_min_ms", r["openmm_step_ms"]) for r in rounds[key])
        bares = [r["bare_ms"] for r in rounds[key] if "bare_ms" in r]
        if bares:
            merged["bare_ms"] = min(bares)
        chosen.append(merged)
    return chosen


def format_table(records: list[dict[str, Any]], structures: list[str]) -> str:
    """Rows per model and structure: ms/step (median, spread, minimum), bare ms, ratios to SO3krates.

    Ratios are of medians (``/paper``, ``/small``) and of minima (``min/paper``),
    each against the SO3krates configuration on the same structure.
    """
    median = {(r["model"], r["structure"]): r["openmm_step_ms"] for r in records if r["model"].startswith("so3krates")}
    minimum = {
        (r["model"], r["structure"]): r.get("openmm_step_min_ms") for r in records if r["model"].startswith("so3krates")
    }

    def ratio(value: float | None, reference: float | None) -> str:
        return f"{value / reference:.2f}" if value and reference else "-"

    header = (
        f"{'model':<17}{'structure':<19}{'atoms':>6}{'pairs':>6}{'ms/step':>10}{'±':>8}{'min ms':>10}{'bare ms':>10}"
        f"{'/paper':>8}{'/small':>8}{'min/paper':>10}  {'rounds':<16}route"
    )
    lines = [header, "-" * (len(header) + 40)]
    for structure in structures:
        for r in (r for r in records if r["structure"] == structure):
            step = r["openmm_step_ms"]
            step_min = r.get("openmm_step_min_ms")
            bare = f"{r['bare_ms']:10.2f}" if "bare_ms" in r else f"{'-':>10}"
            lines.append(
                f"{r['model']:<17}{structure:<19}{r['atoms']:>6}{r.get('pairs', 0):>6}{step:>10.2f}"
                f"{r['openmm_step_iqr_half_ms']:>8.2f}{(step_min or float('nan')):>10.2f}{bare}"
                f"{ratio(step, median.get(('so3krates-paper', structure))):>8}"
                f"{ratio(step, median.get(('so3krates-small', structure))):>8}"
                f"{ratio(step_min, minimum.get(('so3krates-paper', structure))):>10}  "
                f"{'/'.join(f'{m:.0f}' for m in r.get('round_medians_ms', [step])):<16}{r['route']}"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structures", nargs="+", type=Path, default=DEFAULT_STRUCTURES,
                        help="PDB/XYZ files (default: the shipped Ac-Ala3-NHMe and buckyball catcher)")
    parser.add_argument("--threads", type=int, default=2, help="OpenMM CPU Threads and torch threads, everywhere")
    parser.add_argument("--repeats", type=int, default=30, help="timed single steps per model and structure")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--peers", nargs="*", choices=list(PEER_SCRIPTS), default=list(PEER_SCRIPTS))
    parser.add_argument("--skip-so3krates", action="store_true", help="time only the peers")
    parser.add_argument("--rounds", type=int, default=1,
                        help="time everything this many times, in alternating order; the table shows, for each "
                        "model, the round with the lowest median (the least disturbed by other jobs)")
    parser.add_argument("--json", type=Path, help="also write all records to this file")
    add_malloc_argument(parser)
    parser.add_argument(
        "--omp-wait-policy", choices=["PASSIVE", "ACTIVE", "inherit"], default="PASSIVE",
        help="OMP_WAIT_POLICY for every model (set before torch loads; peers inherit it). PASSIVE (default) "
        "keeps idle OpenMP threads from spinning, which on a loaded machine costs some models many times "
        "their step time; 'inherit' keeps the caller's environment",
    )
    args = parser.parse_args()
    if args.omp_wait_policy != "inherit":
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    allocator = configure_allocator(args.malloc)

    missing = [str(p) for p in args.structures if not p.is_file()]
    if missing:
        parser.error(
            f"structure file(s) not found: {', '.join(missing)} (the shipped structures come from the "
            "molecule builders of so3krates_openmm.data; pass --structures to use others)"
        )
    structures = [p.resolve() for p in args.structures]
    dry_run = any(PRETRAINED not in p.parents for p in structures)
    started = time.time()
    print(f"# peer step-time benchmark | {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC | "
          f"{platform.processor() or platform.machine()} | {os.cpu_count()} cores | threads={args.threads} | "
          f"repeats={args.repeats} warm-up={args.warmup} | "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')} | "
          "CPU platform, float32, LangevinMiddle 0.5 fs, random weights")
    print(f"# command: {shlex.join([sys.executable, *sys.argv])} | niceness {os.nice(0)} (peers inherit it) | "
          f"{allocator}")
    if dry_run:
        print("# DRY RUN: not all structures are the shipped ones; do not record these figures")
    print(f"# load average before: {load_average()}", flush=True)
    print(f"# host speed before: {host_gemm_rate():.1f} {HOST_SPEED}", flush=True)

    records: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    peer_versions: dict[str, Any] = {}
    parts = ([] if args.skip_so3krates else ["so3krates"]) + list(args.peers)
    for round_index in range(args.rounds):
        # alternate the order, so that a change of the machine's load does not always hit the same models
        order = parts if round_index % 2 == 0 else parts[::-1]
        for part in order:
            if part in failures:
                continue
            if part == "so3krates":
                import openmm
                import torch

                found = so3krates_records(structures, args.threads, args.repeats, args.warmup)
                peer_versions["so3krates"] = {"torch": torch.__version__, "openmm": openmm.__version__}
            else:
                try:
                    record = run_peer(part, structures, args.threads, args.repeats, args.warmup)
                except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as error:
                    failures[part] = str(error)
                    print(f"# {part} FAILED: {error}", file=sys.stderr, flush=True)
                    continue
                found = record["results"]
                peer_versions[part] = record["versions"]
            for entry in found:
                entry["round"] = round_index + 1
            records += found
            print(f"# round {round_index + 1}: load average after {part}: {load_average()}", flush=True)
    all_records = records
    records = best_of_rounds(all_records)

    names = []
    for record in records:
        if record["structure"] not in names:
            names.append(record["structure"])
    print()
    print(format_table(records, names))
    print()
    print("# ms/step: median of single steps, ± half the interquartile range, min: fastest step;"
          " bare: the model's own energy+forces call")
    if args.rounds > 1:
        print(f"# best of {args.rounds} rounds (lowest median); 'rounds' lists every round's median ms/step")
    print("# /paper, /small: ms/step divided by SO3krates' (paper size, small) on the same structure"
          " (> 1: SO3krates is faster); min/paper: the same with minima")
    for name, found in peer_versions.items():
        print(f"# versions {name}: {', '.join(f'{k} {v}' for k, v in found.items())}")
    for peer, error in failures.items():
        print(f"# {peer}: FAILED: {error.splitlines()[0]}")
    print(f"# load average after: {load_average()} | wall time {time.time() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({
            "records": all_records, "best_of_rounds": records, "versions": peer_versions, "failures": failures,
            "threads": args.threads, "dry_run": dry_run,
        }, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
