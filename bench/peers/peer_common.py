"""Shared helpers of the peer benchmark scripts (step time and accuracy; run inside each peer's venv).

Each ``<peer>_step.py`` builds its models with random weights, adds them to an
OpenMM ``System`` by the peer's usual openmm-ml route (an ``openmm.PythonForce``),
and times single ``LangevinMiddleIntegrator`` steps (0.5 fs) on the CPU platform.
This module holds what they share: argument parsing, structure reading
(without this project's package, which the peer venvs do not have), the timed
OpenMM step and the result record of one model on one structure, and the one
JSON line each script prints on stdout. The accuracy comparison (``accuracy.py``
with ``mace_accuracy_train.py``, ``so3krates_accuracy_train.py`` and
``mace_accuracy_eval.py``) shares the extended XYZ exchange format, the error
metrics, the result-line parsing, the subprocess environment, the training
budget and the training drivers' command line, at the end of this module.

Only openmm, numpy, torch and ase are imported here, all of which the peer venvs
have, and ``bench/bench_common.py`` (the timing loop; standard library only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for bench_common
from bench_common import time_call

#: Marker key of the result line, so the driver can tell it from library chatter on stdout.
RESULT_KEY = "peer_benchmark"
TIMESTEP_FS = 0.5
TEMPERATURE_K = 300.0
FRICTION_PER_PS = 1.0


@dataclass
class Molecule:
    """A structure ready for OpenMM: topology with elements, positions in nm."""

    name: str
    topology: Any  # openmm.app.Topology
    positions_nm: np.ndarray  # (N, 3) float64
    atomic_numbers: list[int]

    @property
    def n_atoms(self) -> int:
        return len(self.atomic_numbers)

    @property
    def elements(self) -> list[int]:
        """The sorted, distinct atomic numbers of the structure."""
        return sorted(set(self.atomic_numbers))

    @property
    def positions_angstrom(self) -> np.ndarray:
        return self.positions_nm * 10.0


def read_molecule(path: str | Path) -> Molecule:
    """Read a PDB (OpenMM's reader) or any ASE-readable file (XYZ, extended XYZ)."""
    from openmm import app, unit

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"structure file {str(path)!r} does not exist")
    name = path.parent.name if path.name == "structure.pdb" else path.stem
    if path.suffix.lower() == ".pdb":
        pdb = app.PDBFile(str(path))
        numbers = [atom.element.atomic_number for atom in pdb.topology.atoms()]
        positions = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)
        return Molecule(name, pdb.topology, positions, numbers)
    from ase.io import read

    atoms = read(str(path))
    topology = app.Topology()
    chain = topology.addChain()
    residue = topology.addResidue("MOL", chain)
    for index, number in enumerate(atoms.numbers):
        element = app.Element.getByAtomicNumber(int(number))
        topology.addAtom(f"{element.symbol}{index + 1}", element, residue)
    return Molecule(
        name, topology, np.asarray(atoms.positions, dtype=np.float64) / 10.0, [int(z) for z in atoms.numbers]
    )


def count_pairs(molecule: Molecule, cutoff_angstrom: float) -> int:
    """Ordered pairs of distinct atoms closer than ``cutoff_angstrom`` (isolated molecule)."""
    positions = molecule.positions_angstrom
    distances = np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=-1)
    np.fill_diagonal(distances, np.inf)
    return int((distances < cutoff_angstrom).sum())


def parse_args(description: str, models: Sequence[str]) -> argparse.Namespace:
    """Command line shared by the peer scripts."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("structures", nargs="+", help="PDB or XYZ files (the same ones SO3krates is timed on)")
    parser.add_argument("--threads", type=int, default=2, help="OpenMM CPU Threads and torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=30, help="timed single steps per structure and model")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, caches)")
    parser.add_argument("--models", nargs="+", choices=list(models), default=list(models),
                        help="model variants to time")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare model energy+forces timing")
    args = parser.parse_args()
    if args.threads < 1 or args.repeats < 3:
        parser.error("--threads must be >= 1 and --repeats >= 3")
    return args


def configure_torch(threads: int) -> None:
    """Thread count and float32 default for the model, as on the SO3krates side."""
    import torch

    torch.set_num_threads(threads)
    torch.set_default_dtype(torch.float32)


def time_openmm_step(system: Any, molecule: Molecule, threads: int, repeats: int, warmup: int) -> dict[str, Any]:
    """Median wall time of one Langevin step (CPU platform), plus a sanity check of the force.

    The potential energy and the largest force at the start must be finite and
    the force not all zero, else the model was not wired in and the time means nothing.
    """
    import openmm
    from openmm import unit

    integrator = openmm.LangevinMiddleIntegrator(
        TEMPERATURE_K * unit.kelvin, FRICTION_PER_PS / unit.picosecond, TIMESTEP_FS * unit.femtosecond
    )
    platform_ = openmm.Platform.getPlatformByName("CPU")
    context = openmm.Context(system, integrator, platform_, {"Threads": str(threads)})
    context.setPositions(molecule.positions_nm * unit.nanometer)
    context.setVelocitiesToTemperature(TEMPERATURE_K * unit.kelvin, 1)
    state = context.getState(getEnergy=True, getForces=True)
    energy_kj_mol = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    max_force = float(np.abs(forces).max())
    if not np.isfinite(energy_kj_mol) or not np.isfinite(max_force) or max_force == 0.0:
        raise RuntimeError(f"{molecule.name}: bad initial energy {energy_kj_mol} / max force {max_force}")
    timing = time_call(lambda: integrator.step(1), repeats, warmup)
    final = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    if not np.isfinite(final):
        raise RuntimeError(f"{molecule.name}: energy became {final} during the timed steps")
    del context
    return {
        "openmm_step_ms": timing.median_ms,
        "openmm_step_iqr_half_ms": timing.iqr_half_ms,
        "openmm_step_min_ms": timing.min_ms,
        "initial_energy_kj_mol": energy_kj_mol,
        "initial_max_force_kj_mol_nm": max_force,
    }


def parameter_count(module: Any) -> int:
    """Number of parameters of a torch module."""
    return sum(p.numel() for p in module.parameters())


def step_record(
    model: str,
    description: str,
    route: str,
    molecule: Molecule,
    cutoff_angstrom: float,
    system: Any,
    threads: int,
    repeats: int,
    warmup: int,
    bare: Callable[[], object] | None = None,
    parameters: int | None = None,
    bare_note: str | None = None,
) -> dict[str, Any]:
    """Time one model on one structure (:func:`time_openmm_step`, and ``bare``) and log the result.

    Args:
        model: the model's name in the table (``mace-L1``).
        description: its size in words.
        route: how it enters OpenMM.
        molecule: the structure.
        cutoff_angstrom: the model's cutoff, for the pair count.
        system: the OpenMM ``System`` of ``molecule`` with the model's force.
        threads, repeats, warmup: as for :func:`time_openmm_step`.
        bare: the model's own energy+forces call on a ready input, timed as well
            (None: not timed, e.g. with ``--no-bare``).
        parameters: the model's parameter count, recorded if given.
        bare_note: a remark on the bare time, recorded with it.

    Returns:
        The record for the script's result line.
    """
    record: dict[str, Any] = {
        "model": model,
        "description": description,
        "route": route,
        "structure": molecule.name,
        "atoms": molecule.n_atoms,
        "pairs": count_pairs(molecule, cutoff_angstrom),
    }
    if parameters is not None:
        record["parameters"] = parameters
    record.update(time_openmm_step(system, molecule, threads, repeats, warmup))
    if bare is not None:
        timing = time_call(bare, repeats, warmup)
        record["bare_ms"] = timing.median_ms
        record["bare_iqr_half_ms"] = timing.iqr_half_ms
        if bare_note is not None:
            record["bare_note"] = bare_note
    log(f"  step {record['openmm_step_ms']:.2f} ms, bare {record.get('bare_ms', float('nan')):.2f} ms")
    return record


def versions(packages: Sequence[str]) -> dict[str, str | None]:
    """Installed versions of ``packages`` (None when one is missing)."""
    found: dict[str, str | None] = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def emit(peer: str, args: argparse.Namespace, packages: Sequence[str], results: list[dict[str, Any]]) -> None:
    """Print the script's single JSON result line on stdout."""
    import torch

    record = {
        RESULT_KEY: 1,
        "peer": peer,
        "python": platform.python_version(),
        "versions": versions(["torch", "openmm", "openmmml", *packages]),
        "threads": args.threads,
        "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "timestep_fs": TIMESTEP_FS,
        "platform": "CPU",
        "dtype": "float32",
        "results": results,
    }
    sys.stdout.flush()
    print(json.dumps(record), flush=True)


def log(message: str) -> None:
    """Progress on stderr (stdout carries only the result line)."""
    print(f"[{os.path.basename(sys.argv[0])}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Accuracy comparison (accuracy.py in the project venv, mace_accuracy_*.py in the MACE venv)
# --------------------------------------------------------------------------------------------

#: Keys of the reference energy (info) and forces (arrays) in the extended XYZ files given to
#: the peers; mace_run_train's defaults (``--energy_key``/``--forces_key``), and unlike ASE's
#: plain ``energy``/``forces`` they are not taken over by a calculator when read back.
REF_ENERGY_KEY = "REF_energy"
REF_FORCES_KEY = "REF_forces"


def write_reference_extxyz(
    path: str | Path, atomic_numbers: np.ndarray, positions: np.ndarray, energies_ev: np.ndarray, forces_ev: np.ndarray
) -> Path:
    """Write frames of one molecule as extended XYZ with ``REF_energy`` (eV) and ``REF_forces`` (eV/Å).

    Args:
        path: output file (written to a temporary name, then renamed).
        atomic_numbers: (N,) atomic numbers shared by all frames.
        positions: (B, N, 3) in Å.
        energies_ev: (B,) total energies in eV.
        forces_ev: (B, N, 3) forces in eV/Å.
    """
    from ase import Atoms
    from ase.io import write

    path = Path(path)
    frames = []
    for frame_positions, energy, forces in zip(positions, energies_ev, forces_ev, strict=True):
        atoms = Atoms(numbers=atomic_numbers, positions=frame_positions, pbc=False)
        atoms.info[REF_ENERGY_KEY] = float(energy)
        atoms.arrays[REF_FORCES_KEY] = np.asarray(forces, dtype=np.float64)
        frames.append(atoms)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(str(temporary), frames, format="extxyz")
    os.replace(temporary, path)
    return path


def read_reference_extxyz(path: str | Path) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """Frames of :func:`write_reference_extxyz`: the ASE ``Atoms``, energies (B,) eV, forces (B, N, 3) eV/Å."""
    from ase.io import read

    frames = read(str(path), index=":", format="extxyz")
    energies = np.array([atoms.info[REF_ENERGY_KEY] for atoms in frames], dtype=np.float64)
    forces = np.stack([atoms.arrays[REF_FORCES_KEY] for atoms in frames]).astype(np.float64)
    return frames, energies, forces


def error_metrics(
    energies: np.ndarray, reference_energies: np.ndarray, forces: np.ndarray, reference_forces: np.ndarray
) -> dict[str, float]:
    """Test errors of predicted against reference energies (B,) and forces (B, N, 3), all in eV(/Å).

    Returns MAE and RMSE of the total energy (eV) and per atom (eV/atom), and
    MAE and RMSE over all force components (eV/Å), plus the frame count. Each
    model is scored by this one function, so both are measured the same way.
    """
    energies = np.asarray(energies, dtype=np.float64)
    reference_energies = np.asarray(reference_energies, dtype=np.float64)
    forces = np.asarray(forces, dtype=np.float64)
    reference_forces = np.asarray(reference_forces, dtype=np.float64)
    if energies.shape != reference_energies.shape or forces.shape != reference_forces.shape:
        raise ValueError(
            f"prediction shapes {energies.shape}, {forces.shape} differ from the reference "
            f"{reference_energies.shape}, {reference_forces.shape}"
        )
    if not (np.isfinite(energies).all() and np.isfinite(forces).all()):
        raise ValueError("predictions contain NaN or infinite values")
    n_atoms = forces.shape[1]
    energy_error = energies - reference_energies
    force_error = forces - reference_forces
    return {
        "frames": int(energies.shape[0]),
        "atoms": int(n_atoms),
        "energy_mae_ev": float(np.abs(energy_error).mean()),
        "energy_rmse_ev": float(np.sqrt((energy_error**2).mean())),
        "energy_mae_per_atom_ev": float(np.abs(energy_error).mean() / n_atoms),
        "force_mae_ev_a": float(np.abs(force_error).mean()),
        "force_rmse_ev_a": float(np.sqrt((force_error**2).mean())),
    }


def find_result_line(stdout: str) -> dict[str, Any] | None:
    """The last JSON line of ``stdout`` carrying :data:`RESULT_KEY` (None if there is none)."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get(RESULT_KEY):
            return record
    return None


def peer_environment(threads: int, extra_pythonpath: str | Path | None = None) -> dict[str, str]:
    """Environment for a peer subprocess: ``threads`` OpenMP/MKL threads, passive OpenMP waiting,
    MACE's whole-module unpickling allowed, no inherited ``VIRTUAL_ENV``, and this folder
    (or ``extra_pythonpath``) on ``PYTHONPATH`` so the scripts import this module."""
    environment = dict(os.environ)
    environment.update({
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "OMP_WAIT_POLICY": "PASSIVE",  # spinning OpenMP threads stall a shared, loaded machine
        "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",
        "PYTHONPATH": str(extra_pythonpath or Path(__file__).resolve().parent),
        "PYTHONWARNINGS": "ignore",  # the peers' import-time deprecation chatter
    })
    environment.pop("VIRTUAL_ENV", None)
    return environment


def parse_budget_args(
    description: str, program: str, threads: bool = False
) -> tuple[argparse.Namespace, list[str]]:
    """Command line of the budgeted training drivers (``*_accuracy_train.py``).

    ``--budget-seconds`` and ``--summary`` (and ``--threads`` if ``threads``),
    then ``--`` and the arguments of ``program``, the trainer the driver runs.

    Returns:
        The parsed options and ``program``'s arguments (without the ``--``).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--budget-seconds", type=float, required=True, help="training time budget (s)")
    if threads:
        parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--summary", type=Path, required=True, help="JSON summary file to write")
    parser.add_argument("program_args", nargs=argparse.REMAINDER, help=f"-- then {program}'s arguments")
    args = parser.parse_args()
    program_args = args.program_args[1:] if args.program_args[:1] == ["--"] else args.program_args
    if not program_args:
        parser.error(f"give {program}'s arguments after --")
    return args, program_args


class BudgetClock:
    """The training-time budget of the accuracy comparison, applied the same way to every model.

    The clock starts with the first training epoch (:meth:`start_epoch`; data loading,
    model set-up and any validation before training are not counted). Once
    ``budget_seconds`` have passed, :meth:`cut` hands out no more training
    batches: the epoch in progress ends early, the trainer validates it and
    checkpoints it if it is the best, as after any epoch, and then stops. So no
    optimiser step starts after the budget, whatever the length of an epoch.
    """

    def __init__(self, budget_seconds: float) -> None:
        self.budget_seconds = budget_seconds
        self.started: float | None = None
        self.stopped_at: float | None = None
        self.epochs = 0  # epochs begun (the last one possibly cut short)
        self.steps = 0  # training batches handed out

    def elapsed(self) -> float:
        """Seconds since the first training batch (0 before it)."""
        return 0.0 if self.started is None else time.monotonic() - self.started

    @property
    def spent(self) -> bool:
        return self.started is not None and self.elapsed() >= self.budget_seconds

    def start_epoch(self) -> None:
        """Count a training epoch; the first one starts the clock."""
        if self.started is None:
            self.started = time.monotonic()
        self.epochs += 1

    def cut(self, iterable: Any, count_steps: bool = True) -> Any:
        """Yield the training batches of ``iterable`` until the budget is spent (counted as steps)."""
        for batch in iterable:
            if self.spent:
                if self.stopped_at is None:
                    self.stopped_at = self.elapsed()
                    log(f"training budget of {self.budget_seconds:.0f} s spent in epoch {self.epochs} "
                        f"after {self.steps} steps: the epoch ends here")
                return
            if count_steps:
                self.steps += 1
            yield batch

    def summary(self) -> dict[str, Any]:
        """Budget, epochs begun, steps, and the training seconds when the budget stopped it."""
        return {
            "budget_s": self.budget_seconds,
            "epochs": self.epochs,
            "steps": self.steps,
            "stopped_by_budget": self.stopped_at is not None,
            "budget_stop_s": self.stopped_at,
        }
