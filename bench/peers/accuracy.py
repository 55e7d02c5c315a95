#!/usr/bin/env python
"""Test accuracy of SO3krates against MACE (L=1) at equal data and equal CPU budget, in one run.

Run with the project's venv (MACE runs in its own venv, made by
``bash bench/peers/setup_venvs.sh mace``)::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/peers/accuracy.py --budget-minutes 30 \\
        --work-dir runs/accuracy --json runs/accuracy/accuracy.json

Steps:

1. One split of the GFN2-xTB Ac-Ala3-NHMe data (``--data``, default the
   shipped 2100 frames) with ``--seed``: ``--train-size`` (1000) training,
   ``--valid-size`` (100) validation and ``--test-size`` (500) test frames,
   shared by both models. The split is
   ``MolecularDataset.split_indices(train, valid, test, seed)``, the very call
   ``so3krates-train`` makes with the same flags, so SO3krates trains on the
   frames written here (checked afterwards against its checkpoint). Written to
   the work directory as ``split.json`` (indices), ``{train,valid,test}.npz``
   (kcal/mol) and ``{train,valid,test}.xyz`` (eV, eV/Å, ``REF_energy`` /
   ``REF_forces``) for MACE.
2. Trains both with the same budget, threads and batch size, by default
   concurrently (one core each on a 2-core machine; ``--sequential`` runs one
   after the other). Both stop by the same hard rule (:class:`peer_common.BudgetClock`): the
   clock starts with the first training epoch, no optimiser step starts after
   the budget, and the epoch cut short there is validated and checkpointed (if
   best) like any other. Each model is scored with its best-validation
   checkpoint (EMA weights).

   - SO3krates: ``so3krates-train`` through ``so3krates_accuracy_train.py``
     (paper size F=132 T=3 unless ``--so3krates-args`` says otherwise),
     ``--threads``, the paper's recipe, and the learning rate decay set from
     the budget (``--lr-decay-steps`` = expected steps / 13, from
     ``--so3krates-step-seconds``; ``--min-lr 1e-8`` so that only the budget stops it);
   - MACE: ``mace_run_train`` through ``mace_accuracy_train.py``, hidden irreps
     ``128x0e + 128x1o`` (L=1), r_max 5 Å, E0s by least squares on the
     training set (``average``), EMA 0.99, mace-torch's other defaults
     (AMSGrad, lr 0.01, ReduceLROnPlateau, energy/force weights 1/100),
     ``--mace-dtype`` (float32 like SO3krates by default).

   Each training's wall time and CPU time (``wait4`` rusage) are recorded.
3. Predicts the test frames with each model's best-validation checkpoint
   (SO3krates here; MACE through its ASE calculator in its venv,
   ``mace_accuracy_eval.py``), scores both with the same function
   (:func:`peer_common.error_metrics`) and prints the table side by side:
   energy MAE/RMSE (meV, meV/atom), force MAE/RMSE (meV/Å and kcal/mol/Å),
   parameters, epochs, training time, CPU time.

``--eval-only`` scores the models already trained in ``--work-dir`` again.
Small flags for a smoke test: ``--budget-minutes 1 --train-size 50
--valid-size 10 --test-size 20``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

# The sibling scripts are importable only after the sys.path entry above.
from compare import load_average, peer_python  # noqa: E402
from peer_common import (  # noqa: E402
    error_metrics,
    find_result_line,
    peer_environment,
    write_reference_extxyz,
)

DEFAULT_DATA = ROOT / "datasets" / "ac_ala3_nhme" / "dataset.npz"
PARTS = ("train", "valid", "test")
#: SO3krates training seconds per optimiser step (paper size, batch 10, 42 atoms, 1 thread of
#: its own; measured 2.2 s when the core was shared with other jobs), which sets the learning-rate
#: decay from the budget. Erring fast is the safe side: slower real steps leave the final lr a bit
#: higher, while faster real steps would decay it early and waste the end of the budget.
SO3KRATES_STEP_SECONDS = 1.2
#: Learning-rate periods (factor 0.7 each) over the budget: 0.7**13 ~ 1e-2, lr 1e-3 -> 1e-5.
SO3KRATES_DECAY_PERIODS = 13
MACE_NAME = "mace_L1"
MACE_HIDDEN_IRREPS = "128x0e + 128x1o"


# ------------------------------------------------------------------------------------- data
@dataclass
class Split:
    """The shared split: frame indices into the data file and the files written for each model."""

    data: Path
    seed: int
    indices: dict[str, list[int]]
    npz: dict[str, Path]
    xyz: dict[str, Path]
    atoms: int

    def sizes(self) -> dict[str, int]:
        return {part: len(self.indices[part]) for part in PARTS}

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": str(self.data),
            "seed": self.seed,
            "atoms": self.atoms,
            "sizes": self.sizes(),
            "npz": {part: str(path) for part, path in self.npz.items()},
            "xyz": {part: str(path) for part, path in self.xyz.items()},
            "indices": self.indices,
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Split:
        return cls(
            Path(record["data"]),
            int(record["seed"]),
            {part: [int(i) for i in record["indices"][part]] for part in PARTS},
            {part: Path(path) for part, path in record["npz"].items()},
            {part: Path(path) for part, path in record["xyz"].items()},
            int(record["atoms"]),
        )


def make_split(data: Path, train: int, valid: int, test: int | None, seed: int, work: Path) -> Split:
    """Split ``data`` as ``so3krates-train --train-size/--valid-size/--test-size/--seed`` would,
    and write each part as MD22 ``.npz`` (the data's unit) and extended XYZ (eV) into ``work``."""
    from so3krates_openmm.data.formats import load_dataset, save_npz

    dataset = load_dataset(data)
    if not dataset.same_molecule:
        raise SystemExit(f"{data}: the comparison expects frames of one molecule")
    parts = dataset.split(train, valid, test, seed)
    npz: dict[str, Path] = {}
    xyz: dict[str, Path] = {}
    indices: dict[str, list[int]] = {}
    for name, part in zip(PARTS, parts, strict=True):
        indices[name] = list(part.metadata["split"]["indices"])
        npz[name] = save_npz(part, work / f"{name}.npz")
        numbers, positions, energies, forces = part.converted("eV").stacked()
        xyz[name] = write_reference_extxyz(work / f"{name}.xyz", numbers, positions, energies, forces)
    split = Split(data.resolve(), seed, indices, npz, xyz, int(dataset[0].n_atoms))
    (work / "split.json").write_text(json.dumps(split.to_dict(), indent=1) + "\n")
    print(f"[accuracy] split of {data} ({len(dataset)} frames, seed {seed}): {split.sizes()} -> {work}", flush=True)
    return split


# -------------------------------------------------------------------------------- processes
@dataclass
class TimedProcess:
    """A training subprocess with its log file, wall time and CPU time (from ``os.wait4``)."""

    name: str
    command: list[str]
    environment: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None
    started: float = 0.0
    record: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as log:
            log.write(f"$ {shlex.join(self.command)}\n")
            log.flush()
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, env=self.environment, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started = time.monotonic()
        print(f"[accuracy] {self.name} started (pid {self.process.pid}), log {self.log_path}", flush=True)

    def poll(self) -> bool:
        """Reap the process if it has ended (recording its rusage); True once it has."""
        if self.record:
            return True
        assert self.process is not None
        pid, status, usage = os.wait4(self.process.pid, os.WNOHANG)
        if pid == 0:
            return False
        self.process.returncode = os.waitstatus_to_exitcode(status)
        self.record = {
            "command": self.command,
            "log": str(self.log_path),
            "returncode": self.process.returncode,
            "wall_s": time.monotonic() - self.started,
            "cpu_user_s": usage.ru_utime,
            "cpu_system_s": usage.ru_stime,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "max_rss_mb": usage.ru_maxrss / 1024.0,
        }
        state = "finished" if self.process.returncode == 0 else f"FAILED (exit {self.process.returncode})"
        print(
            f"[accuracy] {self.name} {state} after {self.record['wall_s']:.0f} s wall, "
            f"{self.record['cpu_s']:.0f} s CPU",
            flush=True,
        )
        return True

    def stop(self) -> None:
        """Terminate the process group (after the hard deadline)."""
        if self.process is not None and not self.record:
            print(f"[accuracy] {self.name}: past the hard deadline, terminating", flush=True)
            os.killpg(self.process.pid, signal.SIGTERM)


def run_processes(jobs: list[TimedProcess], concurrent: bool, deadline_s: float) -> None:
    """Run ``jobs`` together or one after the other; terminate any still running after ``deadline_s`` each."""
    batches = [jobs] if concurrent else [[job] for job in jobs]
    for batch in batches:
        for job in batch:
            job.start()
        start = time.monotonic()
        terminated = False
        while not all(job.poll() for job in batch):
            if not terminated and time.monotonic() - start > deadline_s:
                for job in batch:
                    job.stop()
                terminated = True
            time.sleep(1.0)


# ------------------------------------------------------------------------------- commands
def so3krates_lr_decay_steps(budget_s: float, step_seconds: float) -> int:
    """Optimiser steps per learning-rate period so that the lr falls ~100x over the budget."""
    return max(1, round(budget_s / step_seconds / SO3KRATES_DECAY_PERIODS))


def so3krates_command(args: argparse.Namespace, split: Split, output: Path) -> list[str]:
    """``so3krates-train`` on the shared split through the budget driver ``so3krates_accuracy_train.py``."""
    budget_s = args.budget_minutes * 60.0
    test_size = split.sizes()["test"]
    return [
        sys.executable, str(HERE / "so3krates_accuracy_train.py"),
        "--budget-seconds", f"{budget_s:.0f}", "--summary", str(output / "summary.json"),
        "--",
        "--data", str(split.data),
        "--train-size", str(args.train_size), "--valid-size", str(args.valid_size), "--test-size", str(test_size),
        "--seed", str(args.seed),
        "--batch-size", str(args.batch_size),
        "--lr-decay-steps", str(so3krates_lr_decay_steps(budget_s, args.so3krates_step_seconds)),
        "--min-lr", "1e-8",
        "--threads", str(args.threads), "--device", "cpu",
        "--checkpoint-interval", "null",
        "--no-progress",
        "--output", str(output),
        *shlex.split(args.so3krates_args),
    ]


def mace_command(args: argparse.Namespace, split: Split, output: Path) -> list[str]:
    """``mace_run_train`` in the MACE venv through the budget driver ``mace_accuracy_train.py``."""
    budget_s = args.budget_minutes * 60.0
    return [
        str(peer_python("mace")), str(HERE / "mace_accuracy_train.py"),
        "--budget-seconds", f"{budget_s:.0f}", "--threads", str(args.threads),
        "--summary", str(output / "summary.json"),
        "--",
        "--name", MACE_NAME, "--work_dir", str(output),
        "--train_file", str(split.xyz["train"]), "--valid_file", str(split.xyz["valid"]),
        "--energy_key", "REF_energy", "--forces_key", "REF_forces",
        "--E0s", "average",
        "--model", "MACE", "--hidden_irreps", MACE_HIDDEN_IRREPS, "--r_max", "5.0",
        "--batch_size", str(args.batch_size), "--valid_batch_size", str(args.batch_size),
        "--max_num_epochs", "100000", "--eval_interval", "1",
        "--ema", "--ema_decay", "0.99",
        "--default_dtype", args.mace_dtype, "--device", "cpu",
        "--seed", str(args.seed),
        "--plot", "False", "--error_table", "PerAtomMAE",
        # mace_run_train's closing error table on the training set costs minutes, untimed and unused
        "--skip_evaluate_heads", "train_Default",
        *shlex.split(args.mace_args),
    ]


# ----------------------------------------------------------------------------- evaluation
def predict_so3krates(
    checkpoint: Path, test_npz: Path, threads: int, batch: int = 25
) -> tuple[np.ndarray, np.ndarray, int]:
    """Energies (B,) eV and forces (B, N, 3) eV/Å of an SO3krates checkpoint on the test frames; parameters."""
    import torch

    from so3krates_openmm.data.formats import load_dataset
    from so3krates_openmm.model.checkpoint import load_model
    from so3krates_openmm.units import energy_conversion

    torch.set_num_threads(threads)
    model = load_model(checkpoint).eval()
    data = load_dataset(test_npz).converted(model.config.energy_unit)
    numbers, positions, _, _ = data.stacked()
    n_frames, n_atoms = positions.shape[:2]
    energies = np.empty(n_frames)
    forces = np.empty((n_frames, n_atoms, 3))
    for start in range(0, n_frames, batch):
        stop = min(start + batch, n_frames)
        count = stop - start
        atomic_numbers = torch.as_tensor(np.tile(numbers, count))
        batch_index = torch.arange(count).repeat_interleave(n_atoms)
        frame_positions = torch.as_tensor(positions[start:stop].reshape(-1, 3))
        e, f = model.energy_and_forces(atomic_numbers, frame_positions, batch_index, count)
        energies[start:stop] = e.double().numpy()
        forces[start:stop] = f.double().numpy().reshape(count, n_atoms, 3)
    to_ev = energy_conversion(model.config.energy_unit, "eV")
    return energies * to_ev, forces * to_ev, sum(p.numel() for p in model.parameters())


def check_so3krates_split(output: Path, split: Split) -> None:
    """Raise if the split stored in so3krates-train's last checkpoint is not the shared one."""
    from so3krates_openmm.model.checkpoint import read_checkpoint

    state = read_checkpoint(output / "last_checkpoint.pt")["extra"]["training_state"]
    for part in PARTS:
        if [int(i) for i in state["split"][part].tolist()] != split.indices[part]:
            raise RuntimeError(f"so3krates-train's {part} split differs from the shared one in {output}")


def evaluate_so3krates(output: Path, split: Split, threads: int) -> dict[str, Any]:
    """Test errors of SO3krates' best checkpoint, with its training record (epochs, steps, time)."""
    from so3krates_openmm.data.formats import load_dataset

    check_so3krates_split(output, split)
    started = time.perf_counter()
    energies, forces, parameters = predict_so3krates(output / "best_checkpoint.pt", split.npz["test"], threads)
    seconds = time.perf_counter() - started
    _, _, reference_energies, reference_forces = load_dataset(split.npz["test"]).converted("eV").stacked()
    report = json.loads((output / "test_report.json").read_text())
    summary = json.loads((output / "summary.json").read_text())
    errors = error_metrics(energies, reference_energies, forces, reference_forces)
    # so3krates-train's own test report (same frames, same checkpoint) as a cross-check
    own_force_mae_ev = report["errors_meV"]["force_mae"] / 1e3 if "errors_meV" in report else None
    return {
        "model": "SO3krates",
        "description": "F={features} T={layers} H={heads} degrees {degrees} r_c {cutoff} Å {dtype}".format(
            **report["model"]
        ),
        "parameters": int(parameters),
        "epochs": int(summary["epochs"]),
        "steps": int(summary["steps"]),
        "best_epoch": int(report["epoch"]),
        "train_s": float(summary["train_s"]),
        "stop_reason": "budget" if summary["stopped_by_budget"] else report["training"]["stop_reason"],
        "trainer_time_s": float(report["training"]["time_s"]),
        "eval_s": seconds,
        "errors_ev": errors,
        "trainer_test_force_mae_ev_a": own_force_mae_ev,
    }


def evaluate_mace(output: Path, split: Split, args: argparse.Namespace) -> dict[str, Any]:
    """Test errors of MACE's best checkpoint (``<name>.model``), predicted in the MACE venv."""
    from so3krates_openmm.data.formats import load_dataset

    summary = json.loads((output / "summary.json").read_text())
    predictions = output / "test_predictions.npz"
    command = [
        str(peer_python("mace")), str(HERE / "mace_accuracy_eval.py"), summary["model"], str(split.xyz["test"]),
        "--predictions", str(predictions), "--threads", str(args.threads), "--dtype", args.mace_dtype,
    ]
    print(f"[accuracy] MACE test predictions: {shlex.join(command)}", flush=True)
    completed = subprocess.run(
        command, cwd=HERE, env=peer_environment(args.threads), stdout=subprocess.PIPE, text=True, check=False
    )
    record = find_result_line(completed.stdout)
    if record is None:
        raise RuntimeError(
            f"mace_accuracy_eval.py exited with {completed.returncode} and printed no result line; "
            f"its stdout ended with:\n{completed.stdout[-2000:]}"
        )
    with np.load(predictions) as arrays:
        energies, forces = arrays["energies"], arrays["forces"]
    _, _, reference_energies, reference_forces = load_dataset(split.npz["test"]).converted("eV").stacked()
    best_epoch = mace_best_epoch(output)
    return {
        "model": "MACE",
        "description": f"hidden {MACE_HIDDEN_IRREPS} (L=1), 2 interactions, r_max 5 Å {args.mace_dtype}",
        "parameters": int(record["parameters"]),
        "epochs": int(summary["epochs"]),
        "steps": int(summary["steps"]),
        "best_epoch": best_epoch,
        "train_s": float(summary["train_s"]),
        "stop_reason": summary["stop_reason"],
        "eval_s": float(record["eval_s"]),
        "versions": record["versions"],
        "errors_ev": error_metrics(energies, reference_energies, forces, reference_forces),
    }


def mace_best_epoch(output: Path) -> int | None:
    """Epoch of the checkpoint mace_run_train kept (``checkpoints/<tag>_epoch-N.pt``), counted from 1."""
    epochs = []
    for path in (output / "checkpoints").glob("*_epoch-*.pt"):
        try:
            epochs.append(int(path.stem.rsplit("_epoch-", 1)[1]))
        except ValueError:
            continue
    return max(epochs) + 1 if epochs else None


# ---------------------------------------------------------------------------------- table
def format_table(results: list[dict[str, Any]]) -> str:
    """The models side by side: test errors in meV and kcal/mol, size, epochs, time."""
    from so3krates_openmm.units import energy_conversion

    kcal = energy_conversion("eV", "kcal/mol")

    def errors(key: str, factor: float, digits: int) -> list[str]:
        return [f"{r['errors_ev'][key] * factor:.{digits}f}" for r in results]

    rows: list[tuple[str, list[str]]] = [
        ("test frames", [str(r["errors_ev"]["frames"]) for r in results]),
        ("energy MAE (meV)", errors("energy_mae_ev", 1e3, 1)),
        ("energy RMSE (meV)", errors("energy_rmse_ev", 1e3, 1)),
        ("energy MAE (meV/atom)", errors("energy_mae_per_atom_ev", 1e3, 2)),
        ("force MAE (meV/Å)", errors("force_mae_ev_a", 1e3, 1)),
        ("force RMSE (meV/Å)", errors("force_rmse_ev_a", 1e3, 1)),
        ("energy MAE (kcal/mol)", errors("energy_mae_ev", kcal, 3)),
        ("force MAE (kcal/mol/Å)", errors("force_mae_ev_a", kcal, 3)),
        ("force RMSE (kcal/mol/Å)", errors("force_rmse_ev_a", kcal, 3)),
        ("parameters", [f"{r['parameters']:,}" for r in results]),
        ("epochs (last one cut)", [str(r["epochs"]) for r in results]),
        ("optimiser steps", [str(r["steps"]) for r in results]),
        ("s per step (incl. validation)", [f"{r['train_s'] / max(r['steps'], 1):.2f}" for r in results]),
        ("best epoch", [str(r.get("best_epoch") or "-") for r in results]),
        ("training time at stop (s)", [f"{r['train_s']:.0f}" for r in results]),
        ("process wall time (s)", [f"{r['process']['wall_s']:.0f}" if r.get("process") else "-" for r in results]),
        ("process CPU time (s)", [f"{r['process']['cpu_s']:.0f}" if r.get("process") else "-" for r in results]),
        ("test prediction time (s)", [f"{r['eval_s']:.1f}" for r in results]),
    ]
    width = max(len(label) for label, _ in rows) + 2
    column = max(14, *(len(r["model"]) + 2 for r in results))
    lines = [f"{'':<{width}}" + "".join(f"{r['model']:>{column}}" for r in results)]
    lines += [f"{label:<{width}}" + "".join(f"{value:>{column}}" for value in values) for label, values in rows]
    lines += [f"{r['model']}: {r['description']}; stop: {r['stop_reason']}" for r in results]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="reference data (MD22 .npz of one molecule)")
    parser.add_argument("--budget-minutes", type=float, default=30.0, help="training-time budget of each model")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each model")
    parser.add_argument("--sequential", action="store_true",
                        help="train one model after the other (default: both at once)")
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--valid-size", type=int, default=100)
    parser.add_argument("--test-size", type=int, default=500, help="test frames (0: all the rest)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and of both trainings")
    parser.add_argument("--batch-size", type=int, default=10, help="structures per optimiser step (both models)")
    parser.add_argument("--so3krates-step-seconds", type=float, default=SO3KRATES_STEP_SECONDS,
                        help="expected SO3krates seconds per step, to set --lr-decay-steps from the budget")
    parser.add_argument("--so3krates-args", default="",
                        help="extra so3krates-train flags (e.g. '--features 60 --layers 2')")
    parser.add_argument("--mace-dtype", choices=["float32", "float64"], default="float32",
                        help="MACE training/evaluation precision")
    parser.add_argument("--mace-args", default="", help="extra mace_run_train flags")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "accuracy", help="split, runs and logs")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier comparison in --work-dir")
    parser.add_argument("--eval-only", action="store_true", help="score the models already trained in --work-dir")
    parser.add_argument("--json", type=Path, help="also write every record to this JSON file")
    args = parser.parse_args()
    if args.budget_minutes <= 0 or args.threads < 1 or args.train_size < 1 or args.valid_size < 1:
        parser.error("--budget-minutes, --threads, --train-size and --valid-size must be positive")
    return args


def main() -> None:
    args = parse_args()
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    work = args.work_dir.resolve()
    outputs = {"SO3krates": work / "so3krates", "MACE": work / "mace"}
    started = datetime.datetime.now(datetime.UTC)
    load_before = load_average()
    processes: dict[str, dict[str, Any]] = {}
    if args.eval_only:
        split = Split.from_dict(json.loads((work / "split.json").read_text()))
        args.budget_minutes = json.loads((outputs["SO3krates"] / "summary.json").read_text())["budget_s"] / 60.0
        for name, output in outputs.items():
            record = output / "process.json"
            if record.is_file():
                processes[name] = json.loads(record.read_text())
    else:
        if (work / "split.json").exists():
            if not args.overwrite:
                raise SystemExit(
                    f"{work} holds an earlier comparison: pass --overwrite, --eval-only or another --work-dir"
                )
            for output in outputs.values():
                shutil.rmtree(output, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        split = make_split(args.data, args.train_size, args.valid_size, args.test_size or None, args.seed, work)
        environment = peer_environment(args.threads)
        environment.pop("PYTHONPATH")
        jobs = [
            TimedProcess("SO3krates", so3krates_command(args, split, outputs["SO3krates"]),
                         {**environment, "PYTHONPATH": str(ROOT)}, outputs["SO3krates"] / "train.log"),
            TimedProcess("MACE", mace_command(args, split, outputs["MACE"]),
                         {**environment, "PYTHONPATH": str(HERE)}, outputs["MACE"] / "train.log"),
        ]
        budget_s = args.budget_minutes * 60.0
        print(f"[accuracy] budget {budget_s:.0f} s each, {args.threads} thread(s) each, "
              f"{'one after the other' if args.sequential else 'concurrently'}; load {load_before}", flush=True)
        run_processes(jobs, not args.sequential, deadline_s=2 * budget_s + 1800)
        for job in jobs:
            processes[job.name] = job.record
            (outputs[job.name] / "process.json").write_text(json.dumps(job.record, indent=1) + "\n")
        failed = [job.name for job in jobs if job.record["returncode"] != 0]
        if failed:
            raise SystemExit(f"training failed for {', '.join(failed)}: see " +
                             ", ".join(str(job.log_path) for job in jobs if job.name in failed))
    load_after_training = load_average()
    results = [
        evaluate_so3krates(outputs["SO3krates"], split, args.threads),
        evaluate_mace(outputs["MACE"], split, args),
    ]
    for result in results:
        result["process"] = processes.get(result["model"])
    check = results[0].get("trainer_test_force_mae_ev_a")
    if check is not None and not math.isclose(check, results[0]["errors_ev"]["force_mae_ev_a"], rel_tol=1e-3):
        print(f"[accuracy] WARNING: so3krates-train's own test force MAE {check * 1e3:.2f} meV/Å differs from "
              f"this script's {results[0]['errors_ev']['force_mae_ev_a'] * 1e3:.2f} meV/Å", flush=True)
    print()
    print(f"Test errors at equal data ({split.sizes()['train']} training frames, seed {split.seed}) "
          f"and equal budget ({args.budget_minutes:g} min, {args.threads} thread(s) each, "
          f"{'sequential' if args.sequential else 'concurrent'}):")
    print(format_table(results))
    print(f"load average: before {load_before}; after training {load_after_training}")
    if args.json:
        record = {
            "benchmark": "accuracy at equal data and budget",
            "started_utc": started.isoformat(timespec="seconds"),
            "host": platform.node(),
            "cpu_count": os.cpu_count(),
            "budget_minutes": args.budget_minutes,
            "threads": args.threads,
            "concurrent": not args.sequential,
            "batch_size": args.batch_size,
            "load_average_before": load_before,
            "load_average_after_training": load_after_training,
            "split": {key: value for key, value in split.to_dict().items() if key != "indices"},
            "results": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1, default=str) + "\n")
        print(f"[accuracy] records written to {args.json}")


if __name__ == "__main__":
    main()
