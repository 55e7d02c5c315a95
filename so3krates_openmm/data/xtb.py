"""GFN2-xTB (tblite) single points, geometry optimisations and harmonic frequencies as independent tasks.

The calculator is the data generator's (:func:`so3krates_openmm.data.reference.make_calculator`)
with the same :class:`~so3krates_openmm.data.reference.SamplingSettings` as the data, so a
re-optimised minimum or a Hessian is on the surface the models were trained on.

Every function here that does many calculations runs them through
:func:`so3krates_openmm.tasks.run_tasks` (a local Dask cluster, or a cluster's workers
given by its scheduler address) with a journal: a killed job resumes without redoing a
finished calculation. The task functions (:func:`single_point_task`,
:func:`optimize_task`) keep one calculator per worker process. Results are JSON-ready:
energies in eV, forces in eV/Å, positions in Å.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from so3krates_openmm.data.reference import SamplingSettings, make_calculator
from so3krates_openmm.tasks import run_tasks, worker_cache

#: ASE optimisers a re-optimisation may use.
OPTIMIZERS = ("BFGS", "LBFGS", "FIRE")


def xtb_settings(
    method: str = "GFN2-xTB",
    charge: int = 0,
    multiplicity: int = 1,
    electronic_temperature_K: float = 300.0,
    accuracy: float = 1.0,
) -> SamplingSettings:
    """The calculator settings of the data (the defaults of ``so3krates-data generate`` and ``label``), every SCF
    started from scratch so that a result depends only on the positions."""
    return SamplingSettings(
        temperatures_K=[300.0], frames_per_temperature=1, method=method, charge=charge, multiplicity=multiplicity,
        electronic_temperature_K=electronic_temperature_K, accuracy=accuracy, scf_guess="fresh",
    )


def _worker_atoms(settings: SamplingSettings, numbers: Sequence[int]):
    """An ASE ``Atoms`` of ``numbers`` with the xTB calculator of ``settings``, kept by this worker process."""
    from ase import Atoms

    numbers = [int(z) for z in numbers]

    def build():
        atoms = Atoms(numbers=numbers)
        atoms.calc = make_calculator(settings)
        return atoms

    return worker_cache(f"xtb atoms {settings!r} {numbers}", build)


def single_point_task(task: dict) -> dict:
    """One GFN2-xTB single point: ``{"settings", "numbers", "positions_angstrom"}`` ->
    ``{"energy_eV", "forces_eV_per_angstrom", "seconds", "cpu_seconds"}`` (wall and CPU time of this process).

    Raises:
        RuntimeError: tblite failed (SCF not converged, atoms on top of each other); the message names
            ``task["name"]`` when given.
    """
    atoms = _worker_atoms(task["settings"], task["numbers"])
    started, cpu_started = time.perf_counter(), time.process_time()
    atoms.set_positions(np.asarray(task["positions_angstrom"], dtype=np.float64))
    try:
        energy = float(atoms.get_potential_energy())
        forces = atoms.get_forces()
    except RuntimeError as error:  # ASE's CalculatorError from tblite
        raise RuntimeError(f"{task['settings'].method} failed on {task.get('name', 'a structure')}: {error}") from None
    return {"energy_eV": energy, "forces_eV_per_angstrom": np.asarray(forces).tolist(),
            "seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu_started}


@dataclass(frozen=True)
class OptimizationSettings:
    """How a structure is re-optimised: ASE ``optimizer``, convergence ``fmax_eV_per_angstrom`` (largest atomic
    force), at most ``max_steps`` steps."""

    optimizer: str = "BFGS"
    fmax_eV_per_angstrom: float = 0.01
    max_steps: int = 1000

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if not self.fmax_eV_per_angstrom > 0 or int(self.max_steps) < 1:
            raise ValueError(f"fmax_eV_per_angstrom must be > 0 and max_steps >= 1, got {self.fmax_eV_per_angstrom} "
                             f"and {self.max_steps}")


def xtb_optimize(
    numbers: Sequence[int],
    positions_angstrom: np.ndarray,
    settings: SamplingSettings | None = None,
    optimization: OptimizationSettings | None = None,
) -> dict:
    """Relax a structure on the GFN2-xTB surface with an ASE optimiser (in this process).

    Returns:
        ``positions_angstrom`` (the optimised structure), ``energy_eV``, ``max_force_eV_per_angstrom``,
        ``steps``, ``converged`` (largest force below ``fmax`` within ``max_steps``), ``seconds`` and
        ``cpu_seconds`` (wall and CPU time of this process).

    Raises:
        RuntimeError: tblite failed during the optimisation.
    """
    settings = settings or xtb_settings()
    # Each SCF starts from the previous step's wavefunction (as in the data generator): about 2x faster than from
    # scratch along an optimisation, the same converged surface.
    return optimize_with_ase(numbers, positions_angstrom, make_calculator(replace(settings, scf_guess="previous")),
                             optimization)


def optimize_with_ase(numbers: Sequence[int], positions_angstrom: np.ndarray, calculator,
                      optimization: OptimizationSettings | None = None) -> dict:
    """Relax a structure with an ASE optimiser on any ASE ``calculator``: the result layout of
    :func:`xtb_optimize` (a non-finite final energy counts as not converged)."""
    import ase.optimize
    from ase import Atoms

    optimization = optimization or OptimizationSettings()
    started, cpu_started = time.perf_counter(), time.process_time()
    atoms = Atoms(numbers=[int(z) for z in numbers], positions=np.asarray(positions_angstrom, dtype=np.float64))
    atoms.calc = calculator
    optimizer = getattr(ase.optimize, optimization.optimizer)(atoms, logfile=None)
    converged = bool(optimizer.run(fmax=optimization.fmax_eV_per_angstrom, steps=int(optimization.max_steps)))
    forces = atoms.get_forces()
    energy = float(atoms.get_potential_energy())
    return {
        "positions_angstrom": atoms.get_positions().tolist(),
        "energy_eV": energy,
        "max_force_eV_per_angstrom": float(np.linalg.norm(forces, axis=1).max()),
        "steps": int(optimizer.nsteps),
        "converged": converged and bool(np.isfinite(energy)),
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
    }


def optimize_task(task: dict) -> dict:
    """:func:`xtb_optimize` as a task: ``{"settings", "optimization", "numbers", "positions_angstrom"}``."""
    return xtb_optimize(task["numbers"], task["positions_angstrom"], task["settings"], task["optimization"])


def xtb_optimize_many(
    numbers: Sequence[int],
    structures_angstrom: dict[str, np.ndarray],
    journal: str | Path,
    settings: SamplingSettings | None = None,
    optimization: OptimizationSettings | None = None,
    *,
    workers: int = 2,
    scheduler: str | None = None,
    progress: bool = True,
) -> dict[str, dict]:
    """Re-optimise every structure (by key) with :func:`xtb_optimize` as Dask tasks, journaled in ``journal``."""
    settings = settings or xtb_settings()
    optimization = optimization or OptimizationSettings()
    tasks = {key: {"settings": settings, "optimization": optimization, "numbers": [int(z) for z in numbers],
                   "positions_angstrom": np.asarray(x, dtype=np.float64)} for key, x in structures_angstrom.items()}
    header = {"job": "GFN2-xTB re-optimisation", "settings": asdict(settings), "optimization": asdict(optimization),
              "numbers": [int(z) for z in numbers]}
    return run_tasks(optimize_task, tasks, journal, header=header, scheduler=scheduler, workers=workers,
                     progress=progress, description="xTB optimisation")


@dataclass
class HarmonicAnalysis:
    """Harmonic analysis of a structure: the Hessian (3N, 3N; eV/Å²) and all 3N frequencies (cm⁻¹, imaginary ones
    negative, by increasing magnitude) and the vibrational ones (without the 6, or 5 for a linear molecule, closest
    to zero: translations and rotations)."""

    hessian_eV_per_angstrom2: np.ndarray
    frequencies_cm1: np.ndarray
    vibrational_frequencies_cm1: np.ndarray
    single_points: int
    cpu_seconds: float
    #: (vibrational modes, atoms): each atom's share of each vibrational mode's kinetic energy (the squared
    #: mass-weighted eigenvector; rows sum to 1), rows in the order of ``vibrational_frequencies_cm1``
    vibrational_atom_shares: np.ndarray


def _displacement_key(atom: int, axis: int, sign: int) -> str:
    return f"{atom}{'xyz'[axis]}{'+' if sign > 0 else '-'}"


def harmonic_frequencies(
    numbers: Sequence[int],
    positions_angstrom: np.ndarray,
    journal: str | Path,
    settings: SamplingSettings | None = None,
    *,
    displacement_angstrom: float = 0.005,
    workers: int = 2,
    scheduler: str | None = None,
    progress: bool = True,
) -> HarmonicAnalysis:
    """GFN2-xTB harmonic frequencies by central finite differences of the forces (6N single points as Dask tasks).

    Each atom is displaced by ``±displacement_angstrom`` along x, y and z; row ``(i, a)`` of the Hessian is
    ``-(F(+) - F(-)) / (2 h)``; the Hessian is symmetrised and ASE's :class:`~ase.vibrations.VibrationsData`
    mass-weights and diagonalises it. Give a minimised structure (e.g. from :func:`xtb_optimize`): at other
    points the frequencies have no meaning. The single points are journaled (a killed run resumes).
    """
    from ase import Atoms
    from ase import units as ase_units
    from ase.vibrations import VibrationsData

    if not displacement_angstrom > 0:
        raise ValueError(f"displacement_angstrom must be positive, got {displacement_angstrom}")
    settings = settings or xtb_settings()
    numbers = [int(z) for z in numbers]
    positions = np.asarray(positions_angstrom, dtype=np.float64)
    if positions.shape != (len(numbers), 3):
        raise ValueError(f"positions have shape {positions.shape}, expected ({len(numbers)}, 3)")
    tasks = {}
    for atom in range(len(numbers)):
        for axis in range(3):
            for sign in (1, -1):
                displaced = positions.copy()
                displaced[atom, axis] += sign * displacement_angstrom
                key = _displacement_key(atom, axis, sign)
                tasks[key] = {"settings": settings, "numbers": numbers, "positions_angstrom": displaced,
                              "name": f"displacement {key}"}
    header = {"job": "GFN2-xTB finite-difference Hessian", "settings": asdict(settings), "numbers": numbers,
              "positions_angstrom": np.round(positions, 8).tolist(), "displacement_angstrom": displacement_angstrom}
    results = run_tasks(single_point_task, tasks, journal, header=header, scheduler=scheduler, workers=workers,
                        progress=progress, description="xTB Hessian")
    n = 3 * len(numbers)
    hessian = np.empty((n, n))
    for atom in range(len(numbers)):
        for axis in range(3):
            plus = np.asarray(results[_displacement_key(atom, axis, 1)]["forces_eV_per_angstrom"]).reshape(-1)
            minus = np.asarray(results[_displacement_key(atom, axis, -1)]["forces_eV_per_angstrom"]).reshape(-1)
            hessian[3 * atom + axis] = -(plus - minus) / (2.0 * displacement_angstrom)
    hessian = 0.5 * (hessian + hessian.T)
    atoms = Atoms(numbers=numbers, positions=positions)
    energies, modes = VibrationsData.from_2d(atoms, hessian).get_energies_and_modes()
    complex_frequencies = energies / ase_units.invcm
    frequencies = np.where(np.abs(complex_frequencies.imag) > np.abs(complex_frequencies.real),
                           -np.abs(complex_frequencies.imag), complex_frequencies.real)
    by_magnitude = np.argsort(np.abs(frequencies))
    rigid = 0 if len(numbers) == 1 else 5 if _is_linear(positions) else 6
    vibrational = by_magnitude[rigid:][np.argsort(frequencies[by_magnitude[rigid:]])]
    # ASE's modes are the mass-weighted eigenvectors divided by sqrt(mass): m |mode|^2 is the kinetic share
    shares = atoms.get_masses()[np.newaxis, :] * np.square(modes[vibrational]).sum(axis=2)
    return HarmonicAnalysis(hessian, frequencies[by_magnitude], frequencies[vibrational], len(tasks),
                            float(sum(result["cpu_seconds"] for result in results.values())), shares)


def _is_linear(positions_angstrom: np.ndarray, tolerance_angstrom: float = 1e-3) -> bool:
    """Whether the atoms lie on a line (two atoms always do)."""
    centred = positions_angstrom - positions_angstrom.mean(axis=0)
    singular = np.linalg.svd(centred, compute_uv=False)
    return len(positions_angstrom) <= 2 or bool(singular[1] < tolerance_angstrom)
