"""Starts with random backbone dihedrals minimised with the model, and the same starts with GFN2-xTB.

The starts come from :func:`~so3krates_openmm.md.conformers.random_torsion_conformers` (the first ``n`` of a
seed's draw are those of any longer draw). Both minimisations run as Dask tasks (:mod:`so3krates_openmm.tasks`:
a local cluster or a scheduler's workers) in journals of :data:`TORSION_BLOCK` starts, one file per block and
method under ``journal_dir``, so that asking for more starts later minimises only the new ones and a killed run
redoes nothing that finished. The results are :class:`~so3krates_openmm.md.minima.MinimizedSnapshot` (``index``
and ``step``: the start's number; energies in kJ/mol), ready for
:func:`~so3krates_openmm.md.minima.deduplicate`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import openmm as mm
from ase.calculators.calculator import Calculator, all_changes
from openmm import unit

from so3krates_openmm.data.reference import SamplingSettings
from so3krates_openmm.data.structures import Structure
from so3krates_openmm.data.xtb import OptimizationSettings, optimize_with_ase, xtb_optimize_many, xtb_settings
from so3krates_openmm.md.minima import MinimizedSnapshot, MinimizerRecipe, SystemFactory, minimize_snapshots
from so3krates_openmm.tasks import JournalMismatch, run_tasks, worker_cache
from so3krates_openmm.units import ANGSTROM_PER_NM, energy_conversion

#: Random-dihedral starts per journal.
TORSION_BLOCK = 250


def _blocks(n_starts: int) -> Iterator[np.ndarray]:
    for first in range(0, n_starts, TORSION_BLOCK):
        yield np.arange(first, min(first + TORSION_BLOCK, n_starts))


def _journal(journal_dir: Path, prefix: str, seed: int, block: np.ndarray) -> Path:
    return Path(journal_dir) / f"{prefix}torsion_seed{seed}_{block[0]:06d}-{block[-1] + 1:06d}.jsonl"


def _refused(journal: Path, holds: str, error: JournalMismatch) -> JournalMismatch:
    """The error for a journal of other settings: what it holds, what to do, and the settings that differ."""
    return JournalMismatch(f"{journal} holds {holds}: give the options as before, or move the journal away to "
                           f"compute them again ({error})")


def minimize_starts_with_model(
    starts_angstrom: np.ndarray,
    seed: int,
    factory: SystemFactory,
    journal_dir: str | Path,
    *,
    workers: int = 2,
    scheduler: str | None = None,
    platform: str = "CPU",
    tolerance_kj_mol_nm: float = 1.0,
    max_iterations: int = 0,
    progress: bool = False,
    log: Callable[[str], None] = print,
    journal_prefix: str = "",
) -> list[MinimizedSnapshot]:
    """The starts (n, atoms, 3; Å) of random-dihedral ``seed`` minimised with the model System of ``factory``
    (:func:`~so3krates_openmm.md.minima.minimize_snapshots`), journaled in ``journal_dir``.

    ``journal_prefix`` names journals of other structures of the same seed (e.g. GFN2-xTB's minima of the starts
    minimised again with the model, or starts drawn with cis peptide bonds). Raises
    :class:`~so3krates_openmm.tasks.JournalMismatch`, naming the journal, when it holds minimisations with another
    model, structure or minimiser settings.
    """
    found: list[MinimizedSnapshot] = []
    for block in _blocks(len(starts_angstrom)):
        journal = _journal(Path(journal_dir), journal_prefix, seed, block)
        try:
            result = minimize_snapshots(
                starts_angstrom[block], block, factory, journal, workers=workers, scheduler=scheduler,
                platform=platform, tolerance_kj_mol_nm=tolerance_kj_mol_nm, max_iterations=max_iterations,
                progress=progress,
            )
        except JournalMismatch as error:
            raise _refused(journal, "minimisations with another model, structure or minimiser settings",
                           error) from None
        found += [replace(snapshot, index=int(block[snapshot.index])) for snapshot in result]
        log(f"   {journal.name}: {len(block)} structures minimised with the model")
    return found


def minimize_starts_with_xtb(
    structure: Structure,
    starts_angstrom: np.ndarray,
    seed: int,
    journal_dir: str | Path,
    settings: SamplingSettings | None = None,
    optimization: OptimizationSettings | None = None,
    *,
    workers: int = 2,
    scheduler: str | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> list[MinimizedSnapshot]:
    """The same starts optimised on the GFN2-xTB surface (:func:`~so3krates_openmm.data.xtb.xtb_optimize_many`,
    the data's settings by default), journaled in ``journal_dir`` as ``xtb_torsion_seed<seed>_...``.

    A start whose optimisation did not converge within ``optimization.max_steps`` keeps its positions and
    names that as its ``problem``.
    """
    settings = settings or xtb_settings()
    kj_mol_per_ev = energy_conversion("eV", "kJ/mol")
    found: list[MinimizedSnapshot] = []
    for block in _blocks(len(starts_angstrom)):
        journal = _journal(Path(journal_dir), "xtb_", seed, block)
        try:
            results = xtb_optimize_many(structure.atomic_numbers, {str(k): starts_angstrom[k] for k in block},
                                        journal, settings, optimization, workers=workers, scheduler=scheduler,
                                        progress=progress)
        except JournalMismatch as error:
            raise _refused(journal, "GFN2-xTB optimisations with other settings", error) from None
        found += _optimised_snapshots(block, results, kj_mol_per_ev, "GFN2-xTB")
        log(f"   {journal.name}: {len(block)} starts optimised with GFN2-xTB")
    return found


def _optimised_snapshots(block: np.ndarray, results: dict[str, dict], kj_mol_per_ev: float,
                         method: str) -> list[MinimizedSnapshot]:
    """ASE optimisations (:func:`~so3krates_openmm.data.xtb.xtb_optimize`'s result layout) as minimised snapshots;
    one that did not converge keeps its positions and names that as its ``problem``."""
    found = []
    for k in block:
        result = results[str(k)]
        problem = None if result["converged"] else (
            f"{method} optimisation not converged in {result['steps']} steps (largest force "
            f"{result['max_force_eV_per_angstrom']:.3f} eV/Å)")
        found.append(MinimizedSnapshot(int(k), int(k), float(result["energy_eV"]) * kj_mol_per_ev,
                                       np.asarray(result["positions_angstrom"]), problem,
                                       float(result["seconds"]), float(result["cpu_seconds"])))
    return found


class ContextCalculator(Calculator):
    """ASE calculator on an OpenMM ``Context`` (e.g. a model System's): energy in eV, forces in eV/Å."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, context: mm.Context) -> None:
        super().__init__()
        self.context = context

    def calculate(self, atoms=None, properties=None, system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        self.context.setPositions(self.atoms.get_positions() / ANGSTROM_PER_NM)
        state = self.context.getState(getEnergy=True, getForces=True)
        ev_per_kj_mol = energy_conversion("kJ/mol", "eV")
        energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.angstrom)
        self.results = {"energy": float(energy) * ev_per_kj_mol, "forces": np.asarray(forces) * ev_per_kj_mol}


def model_ase_optimize_task(task: dict) -> dict:
    """One start optimised on the model surface with an ASE optimiser (``{"recipe", "optimization", "numbers",
    "positions_angstrom"}``; the recipe's Context is built once per worker): the result layout of
    :func:`~so3krates_openmm.data.xtb.xtb_optimize`."""
    recipe: MinimizerRecipe = task["recipe"]
    context = worker_cache(f"minimizer {recipe!r}", recipe.build).context
    return optimize_with_ase(task["numbers"], task["positions_angstrom"], ContextCalculator(context),
                             task["optimization"])


def minimize_starts_with_model_ase(
    structure: Structure,
    starts_angstrom: np.ndarray,
    seed: int,
    factory: SystemFactory,
    journal_dir: str | Path,
    optimization: OptimizationSettings,
    *,
    workers: int = 2,
    scheduler: str | None = None,
    platform: str = "CPU",
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> list[MinimizedSnapshot]:
    """The starts optimised on the model surface with GFN2-xTB's ASE optimiser and convergence
    (``optimization``), journaled as ``model_ase_torsion_seed<seed>_...``: a control that separates the
    surfaces' difference from the minimisers' (OpenMM L-BFGS against ASE BFGS)."""
    recipe = MinimizerRecipe(factory, platform)
    header = {"job": "model optimisation with ASE", "factory": repr(factory), "platform": platform,
              "optimization": asdict(optimization), "numbers": [int(z) for z in structure.atomic_numbers]}
    kj_mol_per_ev = energy_conversion("eV", "kJ/mol")
    found: list[MinimizedSnapshot] = []
    for block in _blocks(len(starts_angstrom)):
        journal = _journal(Path(journal_dir), "model_ase_", seed, block)
        tasks = {str(k): {"recipe": recipe, "optimization": optimization,
                          "numbers": [int(z) for z in structure.atomic_numbers],
                          "positions_angstrom": np.asarray(starts_angstrom[k], dtype=np.float64)} for k in block}
        try:
            results = run_tasks(model_ase_optimize_task, tasks, journal, header=header, scheduler=scheduler,
                                workers=workers, progress=progress, description="model optimisation (ASE)")
        except JournalMismatch as error:
            raise _refused(journal, "optimisations with another model or settings", error) from None
        found += _optimised_snapshots(block, results, kj_mol_per_ev, f"model ({optimization.optimizer})")
        log(f"   {journal.name}: {len(block)} starts optimised on the model with ASE {optimization.optimizer}")
    return found
