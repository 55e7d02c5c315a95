"""Shared helpers of the peer step-time scripts (run inside each peer's venv).

Each ``<peer>_step.py`` builds its models with random weights, adds them to an
OpenMM ``System`` by the peer's usual openmm-ml route (an ``openmm.PythonForce``),
and times single ``LangevinMiddleIntegrator`` steps (0.5 fs) on the CPU platform.
This module holds what they share: argument parsing, structure reading
(without this project's package, which the peer venvs do not have), the timing
loop and the one JSON line each script prints on stdout.

Only openmm, numpy, torch and ase are imported here: all peer venvs have them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

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
    return Molecule(name, topology, np.asarray(atoms.positions, dtype=np.float64) / 10.0, [int(z) for z in atoms.numbers])


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
    parser.add_argument("--models", nargs="+", choices=list(models), default=list(models), help="model variants to time")
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


def time_call(function: Callable[[], object], repeats: int, warmup: int) -> dict[str, float]:
    """Median, interquartile half-range and minimum of the wall time of ``function`` in ms.

    The minimum is the figure least disturbed by other jobs on a shared machine.
    """
    for _ in range(warmup):
        function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1e3)
    quartiles = statistics.quantiles(samples, n=4)
    return {
        "median_ms": statistics.median(samples),
        "iqr_half_ms": (quartiles[2] - quartiles[0]) / 2,
        "min_ms": min(samples),
    }


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
        "openmm_step_ms": timing["median_ms"],
        "openmm_step_iqr_half_ms": timing["iqr_half_ms"],
        "openmm_step_min_ms": timing["min_ms"],
        "initial_energy_kj_mol": energy_kj_mol,
        "initial_max_force_kj_mol_nm": max_force,
    }


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
