#!/usr/bin/env python
"""OpenMM step time against system size: SO3krates and the peers MACE L=0, MACE L=1, NequIP l_max=1 in one run.

The systems are water clusters at liquid density (``so3krates_openmm.data.builders.build_water``:
compact droplets, no box, so every model runs its isolated-molecule route) from 7 to ~1700 molecules
(21 to ~5000 atoms). For each size and thread count (``--threads 1 2``) it times one
``LangevinMiddleIntegrator`` step (0.5 fs, OpenMM CPU platform, float32, random weights):

- SO3krates at the paper's size (F=132, T=3), exported with ``--kernels`` (default ``fused``, the fastest
  kind: ``so3krates-export --kernels fused``) and run by openmm-torch's ``TorchForce``;
- each peer by its script in its venv (``bench/peers/``; ``bash bench/peers/setup_venvs.sh mace nequip``),
  through its usual openmm-ml route, one subprocess per model and size with a time limit
  (``--time-limit``): a peer model that fails or runs out of time at one size is not tried at the
  larger ones, and the table, the JSON and the plot say so.

Writes ``--output``/scaling_peers.json, scaling_peers.png (log-log step time against atoms, with the
slope fitted from ``--fit-from-atoms`` on) and scaling_peers_ratio.png (peer / SO3krates against atoms).
Run it on an idle machine::

    python bench/scaling_peers.py --threads 1 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))  # compare.py and peer_common.py
import compare  # noqa: E402

from so3krates_openmm.data.builders import build_water, write_pdb  # noqa: E402
from so3krates_openmm.files import write_atomically  # noqa: E402

#: water molecules per size: 21 to 5001 atoms, about a factor 2 apart
DEFAULT_MOLECULES = [7, 14, 28, 56, 112, 224, 448, 896, 1667]
#: peer -> the models its script times (its --models)
PEER_MODELS = {"mace": ["L0", "L1"], "nequip": ["lmax1"], "tensornet": ["2x128"]}
SO3KRATES = "so3krates-paper"


def repeats_for(n_atoms: int, repeats: int) -> int:
    """Fewer timed steps for the large systems (a step of thousands of atoms takes seconds)."""
    return repeats if n_atoms < 1000 else max(3, repeats // 4)


def write_systems(molecules: list[int], directory: Path) -> list[Path]:
    """PDB files of the water clusters, smallest first."""
    return [write_pdb(build_water(n), directory / f"water_{3 * n:05d}.pdb") for n in sorted(molecules)]


def measure_peer(peer: str, model: str, paths: list[Path], threads: int, repeats: int, warmup: int,
                 time_limit_s: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One model's records (``model`` of the peer's script) on each system, smallest first, until one fails or
    exceeds the time limit.

    Returns the records and a note: ``{"versions": ...}``, plus ``{"stopped_at_atoms": N, "reason": ...}``
    when it stopped before the largest system.
    """
    records: list[dict[str, Any]] = []
    note: dict[str, Any] = {}
    for path in paths:
        n_atoms = int(path.stem.split("_")[1])
        try:
            record = compare.run_peer(peer, [path], threads, repeats_for(n_atoms, repeats), warmup,
                                      ["--models", model, "--no-bare"], timeout_s=time_limit_s)
        except subprocess.TimeoutExpired:
            note.update(stopped_at_atoms=n_atoms, reason=f"over the time limit of {time_limit_s:.0f} s")
            break
        except (FileNotFoundError, RuntimeError) as error:
            note.update(stopped_at_atoms=n_atoms, reason=str(error).splitlines()[0])
            break
        records += record["results"]
        note["versions"] = record["versions"]
    return records, note


def fitted_slope(atoms: np.ndarray, ms: np.ndarray, from_atoms: int) -> float | None:
    """Slope of log(ms) against log(atoms) over the sizes from ``from_atoms`` on (None with fewer than 2)."""
    keep = atoms >= from_atoms
    if keep.sum() < 2:
        return None
    return float(np.polyfit(np.log(atoms[keep]), np.log(ms[keep]), 1)[0])


def series(records: list[dict[str, Any]]) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    """(model, threads) -> (atoms, ms/step), sorted by atoms."""
    found: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for record in records:
        found.setdefault((record["model"], record["threads"]), []).append((record["atoms"], record["openmm_step_ms"]))
    return {key: tuple(np.array(v, dtype=float) for v in zip(*sorted(points), strict=True))
            for key, points in found.items()}


def plot(records: list[dict[str, Any]], thread_counts: list[int], from_atoms: int, output: Path) -> dict[str, Any]:
    """The two figures; returns the fitted slopes and the ratios peer / SO3krates by threads and model."""
    from so3krates_openmm.md.plotting import pyplot, save_figure

    plt = pyplot()
    curves = series(records)
    models = sorted({model for model, _ in curves}, key=lambda m: (m != SO3KRATES, m))
    figure, axes = plt.subplots(1, len(thread_counts), figsize=(5.5 * len(thread_counts), 4.2), squeeze=False)
    ratio_figure, ratio_axis = plt.subplots(figsize=(6.0, 4.2))
    slopes: dict[str, dict[str, float | None]] = {}
    ratios: dict[str, dict[str, list]] = {}
    for axis, threads in zip(axes[0], thread_counts, strict=True):
        reference = curves.get((SO3KRATES, threads))
        for index, model in enumerate(models):
            if (model, threads) not in curves:
                continue
            atoms, ms = curves[(model, threads)]
            slope = fitted_slope(atoms, ms, from_atoms)
            slopes.setdefault(str(threads), {})[model] = slope
            label = model + (f" (slope {slope:.2f})" if slope is not None else "")
            axis.loglog(atoms, ms, "o-", color=f"C{index}", ms=4, label=label)
            if model != SO3KRATES and reference is not None:
                common, mine, theirs = np.intersect1d(atoms, reference[0], return_indices=True)
                if len(common):
                    ratio = ms[mine] / reference[1][theirs]
                    ratios.setdefault(str(threads), {})[model] = [[int(n), float(r)] for n, r in zip(common, ratio,
                                                                                                     strict=True)]
                    ratio_axis.semilogx(common, ratio, "o-" if threads == thread_counts[0] else "s--",
                                        color=f"C{index}", ms=4, label=f"{model}, {threads} thread(s)")
        axis.set_xlabel("atoms (water cluster)")
        axis.set_ylabel("ms per MD step")
        axis.set_title(f"{threads} thread(s); slopes fitted from {from_atoms} atoms")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8)
    save_figure(figure, output / "scaling_peers.png")
    ratio_axis.axhline(1.0, color="k", lw=0.8)
    ratio_axis.set_xlabel("atoms (water cluster)")
    ratio_axis.set_ylabel("step time peer / SO3krates")
    ratio_axis.grid(alpha=0.3, which="both")
    if ratios:
        ratio_axis.legend(fontsize=8)
    save_figure(ratio_figure, output / "scaling_peers_ratio.png")
    return {"slopes": slopes, "ratios": ratios}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecules", type=int, nargs="+", default=DEFAULT_MOLECULES,
                        help="water molecules of each system (atoms: 3x)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to time")
    parser.add_argument("--peers", nargs="*", choices=list(PEER_MODELS), default=["mace", "nequip"])
    parser.add_argument("--kernels", choices=["reference", "analytic", "fused"], default="fused",
                        help="SO3krates export kind (so3krates-export --kernels)")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per point (a quarter from 1000 atoms)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--time-limit", type=float, default=900.0,
                        help="seconds a peer may take for one system (build, warm-up and timing)")
    parser.add_argument("--fit-from-atoms", type=int, default=200, help="fit the slopes from this size on")
    parser.add_argument("--output", type=Path, default=HERE / "scaling_peers", help="JSON and figures")
    args = parser.parse_args(argv)
    if min(args.molecules) < 1 or min(args.threads) < 1 or args.repeats < 3:
        parser.error("--molecules and --threads must be positive and --repeats at least 3")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as compare.py: before torch loads; peers inherit it
    output = args.output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    print(f"# scaling against peers | {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC | "
          f"{os.cpu_count()} cores | load average before {compare.load_average()}", flush=True)
    records: list[dict[str, Any]] = []
    notes: dict[str, dict[str, Any]] = {}
    command = " ".join([sys.executable, *(sys.argv if argv is None else ["bench/scaling_peers.py", *argv])])

    def save(complete: bool, fits: dict[str, Any] | None = None) -> None:
        """The JSON, also after each model and thread count (``complete: false``): a stopped run keeps its points."""
        write_atomically(output / "scaling_peers.json", json.dumps({
            "command": command, "complete": complete,
            "systems": "water clusters at liquid density, no box (build_water)", "kernels": args.kernels,
            "records": records, "peers": notes, **(fits or {}),
        }, indent=1) + "\n")

    with tempfile.TemporaryDirectory(prefix="scaling_peers_") as workdir:
        paths = write_systems(args.molecules, Path(workdir))
        for threads in args.threads:
            for path in paths:
                found = compare.so3krates_records(
                    [path], threads, repeats_for(int(path.stem.split("_")[1]), args.repeats), args.warmup,
                    configs={SO3KRATES: compare.SO3KRATES_CONFIGS[SO3KRATES]}, kernels=args.kernels, bare=False,
                )
                records += [dict(record, threads=threads) for record in found]
            save(complete=False)
            for peer in args.peers:
                for model in PEER_MODELS[peer]:
                    found, note = measure_peer(peer, model, paths, threads, args.repeats, args.warmup,
                                               args.time_limit)
                    records += [dict(record, threads=threads) for record in found]
                    notes[f"{peer} {model}, {threads} thread(s)"] = note
                    save(complete=False)
            print(f"# {threads} thread(s) done; load average {compare.load_average()}", flush=True)
    fits = plot(records, args.threads, args.fit_from_atoms, output)
    print(f"{'model':<18}{'threads':>8}" + "".join(f"{3 * n:>9}" for n in sorted(args.molecules)))
    for (model, threads), (atoms, ms) in sorted(series(records).items()):
        by_atoms = dict(zip(atoms.astype(int), ms, strict=True))
        print(f"{model:<18}{threads:>8}" + "".join(
            f"{by_atoms[3 * n]:9.1f}" if 3 * n in by_atoms else f"{'-':>9}" for n in sorted(args.molecules)))
    for name, note in notes.items():
        if "stopped_at_atoms" in note:
            print(f"# {name}: not timed from {note['stopped_at_atoms']} atoms on: {note['reason']}")
    print(f"# slopes (log ms vs log atoms from {args.fit_from_atoms} atoms): {json.dumps(fits['slopes'])}")
    print(f"# load average after: {compare.load_average()}")
    save(complete=True, fits=fits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
