"""Minima exploration: MD at raised temperature, snapshots minimised in parallel, duplicates removed by RMSD.

1. Run MD (usually at a raised temperature, e.g. 500 K) and keep a snapshot
   every ``snapshot_interval`` steps (the DCD of :func:`~so3krates_openmm.md.runner.run_md`).
2. Minimise every snapshot with OpenMM's ``LocalEnergyMinimizer`` (in float64 where the
   float32 model overflows, see :mod:`~so3krates_openmm.md.minimize`) in worker
   processes (``multiprocessing``, spawn start method); each worker builds its
   own System and Context with one thread (OpenMM ``CPU`` Threads=1 and
   ``torch.set_num_threads(1)``), so ``workers`` processes use ``workers`` cores.
3. Drop minimised structures whose covalent bonds no longer match the
   starting topology (the monitor's checks), sort the rest by energy, and
   merge each into the first lower-energy minimum within
   ``rmsd_threshold_angstrom`` heavy-atom RMSD (mdtraj, after optimal superposition).

The System is passed to workers as a picklable factory (a callable with no
arguments returning an ``openmm.System``), e.g. :class:`ModelSystemFactory`;
OpenMM's XML serialisation of a ``TorchForce`` cannot be used for this.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openmm as mm
from openmm import app, unit

from so3krates_openmm.data.structures import Structure, read_structure
from so3krates_openmm.data.trajectory import mdtraj_trajectory
from so3krates_openmm.md.minimize import MinimizationError, Minimizer
from so3krates_openmm.md.plotting import pyplot, save_figure
from so3krates_openmm.md.stability import StabilityChecker, StabilityCriteria
from so3krates_openmm.units import ANGSTROM_PER_NM

SystemFactory = Callable[[], mm.System]


@dataclass(frozen=True)
class ModelSystemFactory:
    """Picklable recipe for the model System of a structure (rebuilt in each worker)."""

    structure_path: str
    model_path: str
    kernels: str | None = None

    def __call__(self) -> mm.System:
        from so3krates_openmm.md.simulation import model_system

        return model_system(read_structure(self.structure_path), self.model_path, kernels=self.kernels)


@dataclass
class MinimizedSnapshot:
    """One snapshot after minimisation: its index, MD step, energy (kJ/mol), positions (Å) and worker seconds spent."""

    index: int
    step: int
    energy_kj_mol: float
    positions_angstrom: np.ndarray
    problem: str | None = None
    seconds: float = float("nan")


@dataclass
class Minimum:
    """A distinct minimum: its lowest-energy representative and the snapshots that fell into it."""

    energy_kj_mol: float
    positions_angstrom: np.ndarray
    snapshots: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)


# State of a worker process (one Context per process).
_WORKER: dict = {}


def _init_worker(factory: SystemFactory, platform_name: str, tolerance_kj_mol_nm: float, max_iterations: int) -> None:
    from so3krates_openmm.md.platforms import get_platform

    system = factory()  # first: a model System imports torch, whose threads get_platform then sets
    platform, properties = get_platform(platform_name, threads=1)
    context = mm.Context(system, mm.VerletIntegrator(0.001), platform, properties)
    _WORKER.update(context=context, minimizer=Minimizer(context, tolerance_kj_mol_nm, max_iterations))


def _minimize(task: tuple[int, int, np.ndarray]) -> MinimizedSnapshot:
    import time

    index, step, positions_angstrom = task
    start = time.perf_counter()
    context: mm.Context = _WORKER["context"]
    context.setPositions(np.asarray(positions_angstrom, dtype=np.float64) / ANGSTROM_PER_NM)
    try:
        _WORKER["minimizer"]()
    except (mm.OpenMMException, MinimizationError) as error:
        return MinimizedSnapshot(index, step, float("nan"), np.asarray(positions_angstrom), problem=str(error),
                                 seconds=time.perf_counter() - start)
    state = context.getState(getEnergy=True, getPositions=True)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    positions = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    return MinimizedSnapshot(index, step, float(energy), np.asarray(positions), seconds=time.perf_counter() - start)


JOURNAL_FORMAT = "so3krates-openmm minimised snapshots/1"
#: File name of the journal in a minima run's output directory.
MINIMA_JOURNAL = "minimised_snapshots.jsonl"


def journal_header(
    positions_angstrom: np.ndarray,
    steps: Sequence[int],
    factory: SystemFactory,
    tolerance_kj_mol_nm: float,
    max_iterations: int,
) -> dict:
    """What a journal of minimised snapshots belongs to: the snapshots, the System recipe, the minimiser settings."""
    import hashlib

    snapshots = np.ascontiguousarray(positions_angstrom, dtype=np.float64)
    header = {
        "format": JOURNAL_FORMAT,
        "snapshots_sha256": hashlib.sha256(snapshots.tobytes()).hexdigest(),
        "steps": [int(step) for step in steps],
        "system": repr(factory),
        "tolerance_kj_mol_nm": float(tolerance_kj_mol_nm),
        "max_iterations": int(max_iterations),
    }
    model_path = getattr(factory, "model_path", None)
    if model_path is not None and Path(model_path).is_file():
        from so3krates_openmm.model.checkpoint import file_sha256

        header["model_sha256"] = file_sha256(model_path)
    return header


def read_journal(path: Path, header: dict) -> dict[int, MinimizedSnapshot]:
    """Snapshots minimised by an earlier (killed) run, by index; rewrites ``path`` without a line cut by the kill.

    Raises ``ValueError`` when the journal belongs to other snapshots, another model or other settings.
    """
    lines = path.read_text().splitlines()
    if not lines:
        return {}
    recorded = json.loads(lines[0])
    if recorded != header:
        changed = sorted(key for key in set(recorded) | set(header) if recorded.get(key) != header.get(key))
        raise ValueError(
            f"{path} holds snapshots minimised for another run (different {', '.join(changed)}); "
            "pass --overwrite to start again, or another --output"
        )
    done: dict[int, MinimizedSnapshot] = {}
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break  # the last line, cut by the kill: that snapshot is minimised again
        done[record["index"]] = MinimizedSnapshot(
            record["index"], record["step"], float(record["energy_kj_mol"]),
            np.asarray(record["positions_angstrom"]), record["problem"], record.get("seconds", float("nan")),
        )
    path.write_text("".join(line + "\n" for line in lines[: 1 + len(done)]))
    return done


def _journal_line(snapshot: MinimizedSnapshot) -> str:
    return json.dumps({
        "index": snapshot.index, "step": snapshot.step, "energy_kj_mol": snapshot.energy_kj_mol,
        "positions_angstrom": np.round(np.asarray(snapshot.positions_angstrom, dtype=np.float64), 6).tolist(),
        "problem": snapshot.problem, "seconds": snapshot.seconds,
    }) + "\n"


def minimize_snapshots(
    positions_angstrom: np.ndarray,
    steps: Sequence[int],
    factory: SystemFactory,
    *,
    workers: int = 2,
    platform: str = "CPU",
    tolerance_kj_mol_nm: float = 1.0,
    max_iterations: int = 0,
    progress: bool = False,
    journal: Path | None = None,
) -> list[MinimizedSnapshot]:
    """Minimise each snapshot (frames, atoms, 3; Å) in ``workers`` processes; results in input order.

    With ``journal`` (a JSON-lines file) each minimised snapshot is appended as it
    finishes, and the snapshots an earlier, killed run already wrote there are
    not minimised again (see :func:`read_journal`). With ``progress`` a tqdm bar
    on stderr counts the minimised snapshots (with ETA).
    """
    from tqdm import tqdm

    tasks = [(k, int(step), np.asarray(x)) for k, (step, x) in enumerate(zip(steps, positions_angstrom, strict=True))]
    done: dict[int, MinimizedSnapshot] = {}
    handle = None
    if journal is not None:
        header = journal_header(positions_angstrom, steps, factory, tolerance_kj_mol_nm, max_iterations)
        if journal.is_file():
            done = read_journal(journal, header)
        else:
            journal.parent.mkdir(parents=True, exist_ok=True)
            journal.write_text(json.dumps(header) + "\n")
        handle = open(journal, "a")
    todo = [task for task in tasks if task[0] not in done]
    bar = tqdm(total=len(tasks), initial=len(done), desc="minimising", unit="snapshot", disable=not progress)

    def record(snapshot: MinimizedSnapshot) -> None:
        done[snapshot.index] = snapshot
        if handle is not None:
            handle.write(_journal_line(snapshot))
            handle.flush()
        bar.update(1)
        if np.isfinite(snapshot.energy_kj_mol):
            bar.set_postfix_str(f"E {snapshot.energy_kj_mol:.1f} kJ/mol", refresh=False)

    arguments = (factory, platform, tolerance_kj_mol_nm, max_iterations)
    try:
        if todo and workers <= 1:
            _init_worker(*arguments)
            try:
                for task in todo:
                    record(_minimize(task))
            finally:
                _WORKER.clear()
        elif todo:
            with multiprocessing.get_context("spawn").Pool(
                workers, initializer=_init_worker, initargs=arguments
            ) as pool:
                # One snapshot per task, in any order: the bar and the journal follow every finished snapshot.
                for snapshot in pool.imap_unordered(_minimize, todo):
                    record(snapshot)
    finally:
        bar.close()
        if handle is not None:
            handle.close()
    return [done[index] for index in range(len(tasks))]


def heavy_atom_indices(structure: Structure) -> np.ndarray:
    """Indices of the non-hydrogen atoms (all atoms if there are fewer than 3 heavy ones)."""
    heavy = np.flatnonzero(structure.atomic_numbers > 1)
    return heavy if len(heavy) >= 3 else np.arange(structure.n_atoms)


def deduplicate(
    snapshots: Sequence[MinimizedSnapshot],
    structure: Structure,
    *,
    rmsd_threshold_angstrom: float = 0.1,
    criteria: StabilityCriteria | None = None,
) -> tuple[list[Minimum], list[MinimizedSnapshot]]:
    """Distinct minima (lowest energy first) and the snapshots rejected (non-finite or bonds changed).

    Snapshots are taken in order of increasing energy; each joins the first
    known minimum within ``rmsd_threshold_angstrom`` heavy-atom RMSD, or
    starts a new one.
    """
    import mdtraj

    checker = StabilityChecker(structure, criteria)
    rejected, accepted = [], []
    for snapshot in snapshots:
        problem = snapshot.problem
        if problem is None:
            problem = checker.check(snapshot.positions_angstrom, snapshot.energy_kj_mol)
        if problem is not None:
            snapshot.problem = problem
            rejected.append(snapshot)
        else:
            accepted.append(snapshot)
    accepted.sort(key=lambda s: s.energy_kj_mol)
    if not accepted:
        return [], rejected
    topology = structure.openmm_topology()
    heavy = heavy_atom_indices(structure)
    frames = mdtraj_trajectory(topology, np.stack([s.positions_angstrom for s in accepted]))
    minima: list[Minimum] = []
    representatives: list[int] = []
    for k, snapshot in enumerate(accepted):
        if representatives:
            reference = frames.slice(representatives, copy=True)
            rmsd_angstrom = 10.0 * mdtraj.rmsd(reference, frames, frame=k, atom_indices=heavy)
            # mdtraj.rmsd(target, reference, frame) aligns every target frame to reference[frame]
            closest = int(np.argmin(rmsd_angstrom))
            if rmsd_angstrom[closest] < rmsd_threshold_angstrom:
                minima[closest].snapshots.append(snapshot.index)
                minima[closest].steps.append(snapshot.step)
                continue
        representatives.append(k)
        minima.append(Minimum(snapshot.energy_kj_mol, snapshot.positions_angstrom, [snapshot.index], [snapshot.step]))
    return minima, rejected


def write_minima(
    output_dir: str | Path,
    minima: Sequence[Minimum],
    rejected: Sequence[MinimizedSnapshot],
    structure: Structure,
    summary: dict,
) -> dict[str, Path]:
    """Write ``minima.csv``, ``minima.pdb`` (one model per minimum), ``minima_energies.png`` and ``minima.json``."""
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / name for name in ("minima.csv", "minima.pdb", "minima_energies.png", "minima.json")}
    lowest = minima[0].energy_kj_mol if minima else float("nan")
    with open(paths["minima.csv"], "w", encoding="utf-8") as handle:
        handle.write("rank,energy_kJ/mol,relative_energy_kJ/mol,n_snapshots,first_step\n")
        for rank, minimum in enumerate(minima):
            handle.write(f"{rank},{minimum.energy_kj_mol!r},{minimum.energy_kj_mol - lowest:.6f},"
                         f"{len(minimum.snapshots)},{min(minimum.steps)}\n")
    topology = structure.openmm_topology()
    with open(paths["minima.pdb"], "w") as handle:
        app.PDBFile.writeHeader(topology, handle)
        for rank, minimum in enumerate(minima):
            app.PDBFile.writeModel(
                topology, minimum.positions_angstrom * unit.angstrom, handle, modelIndex=rank + 1, keepIds=True
            )
        app.PDBFile.writeFooter(topology, handle)
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    relative = np.array([m.energy_kj_mol - lowest for m in minima])
    if len(relative):
        axis.hist(relative, bins=max(5, min(50, len(relative))), color="tab:blue", edgecolor="k", lw=0.5)
    axis.set_xlabel("energy above the lowest minimum (kJ/mol)")
    axis.set_ylabel("distinct minima")
    axis.yaxis.get_major_locator().set_params(integer=True)
    axis.set_title(f"{len(minima)} distinct minima from {summary.get('snapshots', '?')} snapshots")
    save_figure(figure, paths["minima_energies.png"])
    summary = dict(summary, distinct_minima=len(minima), rejected_snapshots=len(rejected),
                   rejected_reasons=[r.problem for r in rejected][:20],
                   lowest_energy_kj_mol=lowest if minima else None)
    paths["minima.json"].write_text(json.dumps(summary, indent=2) + "\n")
    return paths
