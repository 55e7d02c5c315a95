"""Minima exploration: MD at raised temperature, snapshots minimised in parallel, duplicates removed by RMSD.

1. Run MD (usually at a raised temperature, e.g. 500 K) and keep a snapshot
   every ``snapshot_interval`` steps (the DCD of :func:`~so3krates_openmm.md.runner.run_md`).
2. Minimise every snapshot with OpenMM's ``LocalEnergyMinimizer`` (in float64 where the
   float32 model overflows, see :mod:`~so3krates_openmm.md.minimize`), one Dask task per
   snapshot (:func:`so3krates_openmm.tasks.run_tasks`: a local cluster of worker
   processes, or a cluster's workers given by its scheduler address; journaled, so a
   killed run resumes without minimising a snapshot twice); each worker builds its
   own System and Context once, with one thread (OpenMM ``CPU`` Threads=1 and
   ``torch.set_num_threads(1)``), so ``workers`` processes use ``workers`` cores.
3. Drop minimised structures whose covalent bonds no longer match the
   starting topology (the monitor's checks), sort the rest by energy, and
   merge each into the closest lower-energy minimum within
   ``rmsd_threshold_angstrom`` heavy-atom RMSD (mdtraj, after optimal superposition).

The System is passed to workers as a picklable factory (a callable with no
arguments returning an ``openmm.System``), e.g. :class:`ModelSystemFactory`;
OpenMM's XML serialisation of a ``TorchForce`` cannot be used for this.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openmm as mm
from openmm import app, unit

from so3krates_openmm.data.structures import Structure, read_structure
from so3krates_openmm.md.minimize import MinimizationError, Minimizer
from so3krates_openmm.md.plotting import pyplot, save_figure
from so3krates_openmm.md.stability import StabilityChecker, StabilityCriteria
from so3krates_openmm.tasks import run_tasks, worker_cache
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
    """One snapshot after minimisation: its index, MD step, energy (kJ/mol), positions (Å), and the worker's wall
    and CPU seconds spent on it."""

    index: int
    step: int
    energy_kj_mol: float
    positions_angstrom: np.ndarray
    problem: str | None = None
    seconds: float = float("nan")
    cpu_seconds: float = float("nan")


@dataclass
class Minimum:
    """A distinct minimum: its lowest-energy representative and the snapshots that fell into it."""

    energy_kj_mol: float
    positions_angstrom: np.ndarray
    snapshots: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class MinimizerRecipe:
    """Picklable recipe of what a worker builds once and keeps (:func:`~so3krates_openmm.tasks.worker_cache`):
    the System from ``factory`` in a Context on ``platform`` with one thread, and a :class:`Minimizer`."""

    factory: SystemFactory
    platform: str = "CPU"
    tolerance_kj_mol_nm: float = 1.0
    max_iterations: int = 0

    def build(self) -> Minimizer:
        from so3krates_openmm.md.platforms import get_platform

        system = self.factory()  # first: a model System imports torch, whose threads get_platform then sets
        platform, properties = get_platform(self.platform, threads=1)
        context = mm.Context(system, mm.VerletIntegrator(0.001), platform, properties)
        return Minimizer(context, self.tolerance_kj_mol_nm, self.max_iterations)


def minimize_task(task: dict) -> dict:
    """One snapshot minimised in a task worker: ``{"recipe", "positions_angstrom"}`` -> a JSON-ready result.

    The result holds the energy (kJ/mol), the minimised positions (Å, rounded to 1e-6), the problem
    (``None``, or why the minimiser failed: the positions are then the snapshot's) and the worker's wall and CPU
    seconds.
    """
    recipe: MinimizerRecipe = task["recipe"]
    minimizer: Minimizer = worker_cache(f"minimizer {recipe!r}", recipe.build)
    positions_angstrom = np.asarray(task["positions_angstrom"], dtype=np.float64)
    start, cpu_start = time.perf_counter(), time.process_time()
    context = minimizer.context
    context.setPositions(positions_angstrom / ANGSTROM_PER_NM)
    energy, problem = float("nan"), None
    try:
        minimizer()
    except (mm.OpenMMException, MinimizationError) as error:
        problem = str(error)
    else:
        state = context.getState(getEnergy=True, getPositions=True)
        energy = float(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        positions_angstrom = np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.angstrom))
    return {"energy_kj_mol": energy, "positions_angstrom": np.round(positions_angstrom, 6).tolist(),
            "problem": problem, "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start}


JOURNAL_FORMAT = "so3krates-openmm minimised snapshots/3"
#: File name of the journal in a minima run's output directory.
MINIMA_JOURNAL = "minimised_snapshots.jsonl"


def journal_header(positions_angstrom: np.ndarray, steps: Sequence[int], recipe: MinimizerRecipe) -> dict:
    """What a journal of minimised snapshots belongs to: the snapshots, the System recipe, the minimiser settings."""
    import hashlib

    snapshots = np.ascontiguousarray(positions_angstrom, dtype=np.float64)
    header = {
        "format": JOURNAL_FORMAT,
        "snapshots_sha256": hashlib.sha256(snapshots.tobytes()).hexdigest(),
        "steps": [int(step) for step in steps],
        "system": repr(recipe.factory),
        "tolerance_kj_mol_nm": float(recipe.tolerance_kj_mol_nm),
        "max_iterations": int(recipe.max_iterations),
    }
    model_path = getattr(recipe.factory, "model_path", None)
    if model_path is not None and Path(model_path).is_file():
        from so3krates_openmm.export import model_identity

        header["model"] = model_identity(model_path)  # by content: the same model exported again on a new machine
    return header


def minimize_snapshots(
    positions_angstrom: np.ndarray,
    steps: Sequence[int],
    factory: SystemFactory,
    journal: Path,
    *,
    workers: int = 2,
    scheduler: str | None = None,
    platform: str = "CPU",
    tolerance_kj_mol_nm: float = 1.0,
    max_iterations: int = 0,
    progress: bool = False,
) -> list[MinimizedSnapshot]:
    """Minimise each snapshot (frames, atoms, 3; Å) as a Dask task; results in input order.

    The snapshots run through :func:`so3krates_openmm.tasks.run_tasks`: a local
    cluster of ``workers`` single-threaded processes, or the workers of the Dask
    scheduler at ``scheduler`` (they must see the structure and model files at the
    same paths). Each minimised snapshot is appended to ``journal`` (JSON lines)
    as it finishes; the snapshots an earlier, killed run already wrote there are
    not minimised again, and a journal of other snapshots, another model or other
    minimiser settings is refused (:class:`~so3krates_openmm.tasks.JournalMismatch`).
    With ``progress`` a tqdm bar counts the minimised snapshots (with ETA).
    """
    recipe = MinimizerRecipe(factory, platform, float(tolerance_kj_mol_nm), int(max_iterations))
    positions_angstrom = np.asarray(positions_angstrom, dtype=np.float64)
    steps = [int(step) for step in steps]
    if len(steps) != len(positions_angstrom):
        raise ValueError(f"{len(positions_angstrom)} snapshots but {len(steps)} steps")
    tasks = {str(k): {"recipe": recipe, "positions_angstrom": x} for k, x in enumerate(positions_angstrom)}
    results = run_tasks(minimize_task, tasks, journal, header=journal_header(positions_angstrom, steps, recipe),
                        scheduler=scheduler, workers=workers, progress=progress, description="minimising")
    return [
        MinimizedSnapshot(k, steps[k], float(r["energy_kj_mol"]), np.asarray(r["positions_angstrom"]), r["problem"],
                          float(r["seconds"]), float(r["cpu_seconds"]))
        for k, r in ((int(key), result) for key, result in results.items())
    ]


def heavy_atom_indices(structure: Structure) -> np.ndarray:
    """Indices of the non-hydrogen atoms (all atoms if there are fewer than 3 heavy ones)."""
    heavy = np.flatnonzero(structure.atomic_numbers > 1)
    return heavy if len(heavy) >= 3 else np.arange(structure.n_atoms)


def centered_frames(positions_angstrom: np.ndarray, atom_indices: Sequence[int] | np.ndarray | None = None):
    """The chosen atoms of frames (M, N, 3; Å) as a centred ``mdtraj.Trajectory`` (nm, a bare topology) for RMSDs."""
    import mdtraj

    xyz = np.asarray(positions_angstrom, dtype=np.float64)
    if xyz.ndim == 2:
        xyz = xyz[None]
    if atom_indices is not None:
        xyz = xyz[:, np.asarray(atom_indices)]
    topology = mdtraj.Topology()
    residue = topology.add_residue("MOL", topology.add_chain())
    for _ in range(xyz.shape[1]):
        topology.add_atom("X", mdtraj.element.carbon, residue)
    frames = mdtraj.Trajectory((xyz / ANGSTROM_PER_NM).astype(np.float32), topology)
    frames.center_coordinates()  # and precomputes the traces: whole trajectories are precentered in mdtraj.rmsd
    return frames


def nearest_rmsd_angstrom(
    queries_angstrom: np.ndarray,
    references_angstrom: np.ndarray,
    atom_indices: Sequence[int] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For each query frame, the RMSD (Å) after optimal superposition to the closest reference frame, and its index.

    Both arrays are (frames, atoms, 3) in Å with the same atoms in the same order; ``atom_indices`` chooses the atoms
    compared (e.g. :func:`heavy_atom_indices`). Used for the distance of minima to the training frames.
    """
    import mdtraj

    queries = centered_frames(queries_angstrom, atom_indices)
    references = centered_frames(references_angstrom, atom_indices)
    if queries.n_atoms != references.n_atoms:
        raise ValueError(f"queries have {queries.n_atoms} atoms but the references {references.n_atoms}")
    if references.n_frames == 0:
        raise ValueError("no reference frames to compare with")
    distances = np.empty(queries.n_frames)
    nearest = np.empty(queries.n_frames, dtype=np.int64)
    for k in range(queries.n_frames):
        rmsd = 10.0 * mdtraj.rmsd(references, queries, frame=k, precentered=True, parallel=False)
        nearest[k] = int(np.argmin(rmsd))
        distances[k] = float(rmsd[nearest[k]])
    return distances, nearest


def paired_rmsd_angstrom(
    first_angstrom: np.ndarray, second_angstrom: np.ndarray, atom_indices: Sequence[int] | np.ndarray | None = None
) -> np.ndarray:
    """RMSD (Å) after optimal superposition between frame k of ``first`` and frame k of ``second``, for every k."""
    import mdtraj

    first = centered_frames(first_angstrom, atom_indices)
    second = centered_frames(second_angstrom, atom_indices)
    if first.n_frames != second.n_frames:
        raise ValueError(f"{first.n_frames} frames to pair with {second.n_frames}")
    return np.array([10.0 * float(mdtraj.rmsd(first, second, frame=k, precentered=True, parallel=False)[k])
                     for k in range(first.n_frames)])


def deduplicate(
    snapshots: Sequence[MinimizedSnapshot],
    structure: Structure,
    *,
    rmsd_threshold_angstrom: float = 0.1,
    criteria: StabilityCriteria | None = None,
) -> tuple[list[Minimum], list[MinimizedSnapshot]]:
    """Distinct minima (lowest energy first) and the snapshots rejected (non-finite, a bond broken, or a new
    bond: two non-bonded atoms within covalent-bond distance, :meth:`StabilityChecker.check` with ``new_bonds``).

    Snapshots are taken in order of increasing energy; each joins the closest
    known minimum within ``rmsd_threshold_angstrom`` heavy-atom RMSD (after
    optimal superposition), or starts a new one. Each snapshot is compared
    with all accepted ones in one call of mdtraj's RMSD on centred coordinates
    computed once (about 2 ms for 5000 snapshots of 20 heavy atoms), so
    thousands of snapshots take seconds.
    """
    import mdtraj

    checker = StabilityChecker(structure, criteria)
    rejected, accepted = [], []
    for snapshot in snapshots:
        problem = snapshot.problem
        if problem is None:
            problem = checker.check(snapshot.positions_angstrom, snapshot.energy_kj_mol, new_bonds=True)
        if problem is not None:
            snapshot.problem = problem
            rejected.append(snapshot)
        else:
            accepted.append(snapshot)
    accepted.sort(key=lambda s: s.energy_kj_mol)
    if not accepted:
        return [], rejected
    frames = centered_frames(np.stack([s.positions_angstrom for s in accepted]), heavy_atom_indices(structure))
    minima: list[Minimum] = []
    representatives: list[int] = []  # the frame of each minimum
    for k, snapshot in enumerate(accepted):
        if representatives:
            # mdtraj.rmsd(target, reference, frame) aligns every target frame to reference[frame]. The whole
            # trajectory, not the representatives' slice: a slice keeps the whole trajectory's precomputed
            # traces (mdtraj 1.11), and centring a slice again runs an OpenMP loop that is slow on a busy machine.
            rmsd_angstrom = 10.0 * mdtraj.rmsd(frames, frames, frame=k, precentered=True, parallel=False)
            closest = int(np.argmin(rmsd_angstrom[representatives]))
            if rmsd_angstrom[representatives[closest]] < rmsd_threshold_angstrom:
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
    """Write ``minima.csv``, ``minima.pdb`` (one model per minimum), ``minima_energies.png`` and ``minima.json``,
    and ``rejected.pdb`` (one model per rejected structure with finite coordinates, in the order given; written
    only when there is one): the structures on which the model failed, for labelling in active learning."""
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
    _write_models(paths["minima.pdb"], topology, [minimum.positions_angstrom for minimum in minima])
    failed = [s.positions_angstrom for s in rejected if np.all(np.isfinite(s.positions_angstrom))]
    if failed:
        paths["rejected.pdb"] = directory / "rejected.pdb"
        _write_models(paths["rejected.pdb"], topology, failed)
    else:  # none from an earlier call either
        (directory / "rejected.pdb").unlink(missing_ok=True)
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
                   rejected_reasons=[r.problem for r in rejected][:20], rejected_structures_written=len(failed),
                   lowest_energy_kj_mol=lowest if minima else None)
    paths["minima.json"].write_text(json.dumps(summary, indent=2) + "\n")
    return paths


def _write_models(path: Path, topology: app.Topology, positions_angstrom: Sequence[np.ndarray]) -> None:
    """A multi-model PDB file: one model per array of positions (Å)."""
    with open(path, "w") as handle:
        app.PDBFile.writeHeader(topology, handle)
        for number, positions in enumerate(positions_angstrom, start=1):
            app.PDBFile.writeModel(topology, positions * unit.angstrom, handle, modelIndex=number, keepIds=True)
        app.PDBFile.writeFooter(topology, handle)
