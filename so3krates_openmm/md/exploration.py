"""Minima exploration at scale: several high-temperature runs, thousands of minima, checked against a reference.

The pieces of ``bench/minima_large/run.py`` (the paper's exploration of Ac-Ala3-NHMe):

1. :func:`run_explorations`: Langevin runs at raised temperatures with several seeds
   (:class:`ExplorationRun`), one Dask task each (:func:`so3krates_openmm.tasks.run_tasks`;
   a killed run resumes from its MD checkpoint, a finished one is never rerun).
2. :func:`collect_snapshots`: their frames after an equilibration, one array.
3. Minimisation and deduplication: :func:`so3krates_openmm.md.minima.minimize_snapshots`
   and :func:`~so3krates_openmm.md.minima.deduplicate`.
4. :func:`saturation_curve`: distinct minima against the number of snapshots (does it saturate?).
5. :func:`compare_with_reference`: the model's minima against the same minima re-optimised
   with the reference (GFN2-xTB, :func:`so3krates_openmm.data.xtb.xtb_optimize_many`): RMSD,
   the fraction that stays the same minimum, the Spearman correlation of the relative energies.
6. :func:`~so3krates_openmm.md.minima.nearest_rmsd_angstrom`: each minimum's distance to the
   nearest training frame (minima beyond the data).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from so3krates_openmm.data.trajectory import read_dcd
from so3krates_openmm.md.minima import Minimum, nearest_rmsd_angstrom, paired_rmsd_angstrom
from so3krates_openmm.md.protocols import LangevinNVTOptions
from so3krates_openmm.tasks import run_tasks

#: RMSD (Å, heavy atoms) below which a re-optimised minimum counts as the same minimum.
SAME_MINIMUM_RMSD_ANGSTROM = 0.25


@dataclass(frozen=True)
class ExplorationRun:
    """One high-temperature Langevin run: its temperature (K), seed, which of its snapshots are minimised
    (every ``stride``-th: at 700 K neighbouring snapshots 0.1 ps apart mostly fall into the same minimum), and the
    amide isomer it starts in (:func:`~so3krates_openmm.md.conformers.amide_isomer`: one letter per peptide bond,
    ``t`` trans or ``c`` cis; ``None``: the structure as given). With the reference's amide barrier (about
    80 kJ/mol) a run stays in the isomer it starts in; a model with a lower barrier can leave it at 700 K and above
    (``bench/minima_large/amide_barrier.py``)."""

    temperature_K: float
    seed: int
    stride: int = 1
    isomer: str | None = None

    @property
    def name(self) -> str:
        """The run's folder and journal name (the stride is not part of it: it does not change the MD)."""
        return f"{self.temperature_K:g}K_seed{self.seed}" + (f"_{self.isomer}" if self.isomer else "")

    @classmethod
    def parse(cls, text: str) -> ExplorationRun:
        """``"500:1"`` -> 500 K, seed 1, every snapshot; ``"700:4:5"`` -> 700 K, seed 4, every fifth snapshot;
        ``"700:4:5:cttt"`` -> the same, started with the first peptide bond cis."""
        try:
            temperature, seed, *rest = text.split(":")
            if len(rest) > 2 or (len(rest) == 2 and (not rest[1] or set(rest[1]) - set("ct"))):
                raise ValueError
            run = cls(float(temperature), int(seed), int(rest[0]) if rest else 1, rest[1] if len(rest) == 2 else None)
        except ValueError:
            raise ValueError(f"a run is TEMPERATURE_K:SEED[:STRIDE[:ISOMER]], e.g. 500:1, 700:4:5 or 700:4:5:cttt "
                             f"(ISOMER: t or c for each peptide bond), got {text!r}") from None
        if not run.temperature_K > 0 or run.seed < 1 or run.stride < 1:
            raise ValueError(f"a run needs a positive temperature, a seed >= 1 and a stride >= 1, got {text!r}")
        return run


def md_run_task(options: LangevinNVTOptions) -> dict:
    """One Langevin run (resumed from its checkpoint if there is one) as a task: whether it stayed stable, its
    seed and the CPU seconds of this session."""
    from so3krates_openmm.md.recipes import run_langevin_nvt

    started = time.process_time()
    result = run_langevin_nvt(options, log=lambda message: None)
    return {"stable": bool(result.stable), "seed": result.seed, "cpu_seconds": time.process_time() - started}


def start_structure(structure: Path, run: ExplorationRun, run_dir: Path) -> Path:
    """The structure ``run`` starts from: ``structure`` itself, or for a run with an isomer, ``run_dir/start.pdb``
    (written once: :func:`~so3krates_openmm.md.conformers.amide_isomer` with the run's seed)."""
    if run.isomer is None:
        return Path(structure).resolve()
    from so3krates_openmm.data.builders import write_pdb
    from so3krates_openmm.data.structures import read_structure
    from so3krates_openmm.files import write_atomically
    from so3krates_openmm.md.conformers import amide_isomer

    path = Path(run_dir).resolve() / "start.pdb"
    if not path.exists():
        base = read_structure(structure)
        start = replace(base, positions_angstrom=amide_isomer(base, run.isomer, seed=run.seed))
        write_atomically(path, lambda temporary: write_pdb(start, temporary))
    return path


def run_explorations(
    runs: Sequence[ExplorationRun],
    structure: Path,
    model: Path,
    output_dir: Path,
    *,
    steps: int,
    snapshot_interval: int,
    timestep_fs: float = 0.5,
    hydrogen_mass_amu: float | None = None,
    friction_per_ps: float = 1.0,
    platform: str = "CPU",
    workers: int = 2,
    scheduler: str | None = None,
    progress: bool = True,
) -> dict[str, dict]:
    """Run every exploration run in ``output_dir/<run name>`` as one task each; results by run name.

    Each run keeps a frame every ``snapshot_interval`` steps and a checkpoint every
    ``10 * snapshot_interval`` steps, with one thread (a worker is one core).
    ``hydrogen_mass_amu`` repartitions hydrogen masses (a longer ``timestep_fs``; the sampled
    configurations are those of the real masses).
    """
    if len({run.name for run in runs}) != len(runs):
        raise ValueError(f"the same run twice in {[run.name for run in runs]}")
    tasks = {}
    for run in runs:
        tasks[run.name] = LangevinNVTOptions(
            system=None, structure=start_structure(structure, run, Path(output_dir) / run.name),
            model=Path(model).resolve(), platform=platform,
            threads=1, seed=run.seed, temperature=run.temperature_K, timestep_fs=timestep_fs,
            hydrogen_mass=hydrogen_mass_amu, steps=steps,
            friction=friction_per_ps, output=Path(output_dir).resolve() / run.name,
            trajectory_interval=snapshot_interval, log_interval=snapshot_interval,
            checkpoint_interval=10 * snapshot_interval, resume=True, progress=False,
        )
    from so3krates_openmm.export import model_identity
    from so3krates_openmm.model.checkpoint import file_sha256

    # files by content: a journal carried to another machine continues with the model exported again there
    header = {"job": "exploration MD runs", "structure_sha256": file_sha256(structure),
              "model": model_identity(model), "steps": steps, "snapshot_interval": snapshot_interval,
              "timestep_fs": timestep_fs, "hydrogen_mass_amu": hydrogen_mass_amu, "friction_per_ps": friction_per_ps,
              "platform": platform}
    return run_tasks(md_run_task, tasks, Path(output_dir) / "md_runs.jsonl", header=header, scheduler=scheduler,
                     workers=workers, progress=progress, description="MD runs")


@dataclass
class Snapshots:
    """Frames of several runs: positions (M, N, 3; Å), the MD step of each, and the run each comes from."""

    positions_angstrom: np.ndarray
    steps: np.ndarray
    runs: list[str]


def collect_snapshots(output_dir: Path, runs: Sequence[ExplorationRun], skip_ps: float = 0.0) -> Snapshots:
    """The frames of every run's ``trajectory.dcd`` after ``skip_ps`` ps (every ``run.stride``-th), in run order."""
    positions, steps, names = [], [], []
    for run in runs:
        trajectory = read_dcd(Path(output_dir) / run.name / "trajectory.dcd").after(skip_ps)
        positions.append(trajectory.positions_angstrom[::run.stride])
        steps.append(trajectory.steps[::run.stride])
        names += [run.name] * len(steps[-1])
    if not names:
        raise ValueError(f"no frames after {skip_ps} ps in the runs of {output_dir}")
    return Snapshots(np.concatenate(positions), np.concatenate(steps), names)


def saturation_curve(minima: Sequence[Minimum], n_snapshots: int, *, points: int = 40,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Distinct minima found among the first n snapshots, for ``points`` values of n up to ``n_snapshots``.

    The snapshots are taken in a random order (``seed``), each counted in the minimum it joined in the
    deduplication of all of them; a curve that flattens says that more snapshots add few new minima.
    Rejected snapshots count as snapshots but find no minimum.
    """
    label = np.full(n_snapshots, -1)
    for k, minimum in enumerate(minima):
        label[np.asarray(minimum.snapshots, dtype=int)] = k
    order = np.random.default_rng(seed).permutation(n_snapshots)
    found = np.zeros(len(minima), dtype=bool)
    counts = np.empty(n_snapshots, dtype=int)
    total = 0
    for position, snapshot in enumerate(order):
        k = label[snapshot]
        if k >= 0 and not found[k]:
            found[k] = True
            total += 1
        counts[position] = total
    n = np.unique(np.linspace(1, n_snapshots, min(points, n_snapshots)).round().astype(int))
    return n, counts[n - 1]


def chao1_richness(minima: Sequence[Minimum]) -> dict[str, float | int]:
    """How many minima the sampling would find with unlimited starts: the bias-corrected Chao1 estimator.

    ``n_observed + f1 (f1 - 1) / (2 (f2 + 1))`` with ``f1`` (``f2``) the minima that one (two) of the
    minimised structures reached (Chao, Biometrics 43, 783 (1987); Chao et al., Biometrics 61, 1054 (2005)).
    It is a lower bound and assumes independent samples: valid for random starts, not for the correlated
    snapshots of one MD run. Equal to ``n_observed`` when no minimum was reached only once (saturated).
    """
    hits = np.array([len(minimum.snapshots) for minimum in minima], dtype=int)
    f1, f2 = int(np.sum(hits == 1)), int(np.sum(hits == 2))
    return {"n_observed": len(hits), "singletons": f1, "doubletons": f2,
            "chao1": float(len(hits) + f1 * (f1 - 1) / (2.0 * (f2 + 1)))}


def compare_with_reference(
    model_positions_angstrom: np.ndarray,
    model_energies_kj_mol: np.ndarray,
    reference_positions_angstrom: np.ndarray,
    reference_energies_kj_mol: np.ndarray,
    atom_indices: Sequence[int] | np.ndarray | None = None,
    *,
    same_rmsd_angstrom: float = SAME_MINIMUM_RMSD_ANGSTROM,
) -> dict:
    """How well the reference reproduces the model's minima (each re-optimised from the model's minimum).

    Returns (JSON-ready): ``rmsd_angstrom`` per minimum (after superposition, over ``atom_indices``),
    ``same_minimum`` per minimum (RMSD below ``same_rmsd_angstrom``), ``same_minimum_fraction``,
    ``median_rmsd_angstrom``, ``energy_spearman`` (rank correlation of the model's and the reference's
    energies; relative energies have the same ranks), and the mean absolute difference of the energies
    relative to the lowest minimum of each (``relative_energy_mae_kj_mol``).
    """
    from scipy.stats import spearmanr

    model_energies = np.asarray(model_energies_kj_mol, dtype=np.float64)
    reference_energies = np.asarray(reference_energies_kj_mol, dtype=np.float64)
    if not len(model_energies) == len(reference_energies) == len(model_positions_angstrom) \
            == len(reference_positions_angstrom):
        raise ValueError("give one model and one reference energy and structure per minimum")
    if len(model_energies) < 2:
        raise ValueError(f"at least 2 minima are needed to compare relative energies, got {len(model_energies)}")
    rmsd = paired_rmsd_angstrom(model_positions_angstrom, reference_positions_angstrom, atom_indices)
    same = rmsd < same_rmsd_angstrom
    model_relative = model_energies - model_energies.min()
    reference_relative = reference_energies - reference_energies.min()
    return {
        "rmsd_angstrom": rmsd.tolist(),
        "same_minimum": same.tolist(),
        "same_minimum_fraction": float(same.mean()),
        "same_minimum_rmsd_angstrom": same_rmsd_angstrom,
        "median_rmsd_angstrom": float(np.median(rmsd)),
        "energy_spearman": float(spearmanr(model_energies, reference_energies).statistic),
        "relative_energy_mae_kj_mol": float(np.mean(np.abs(model_relative - reference_relative))),
    }


def match_minima(
    first_angstrom: np.ndarray,
    second_angstrom: np.ndarray,
    atom_indices: Sequence[int] | np.ndarray | None = None,
    *,
    same_rmsd_angstrom: float = SAME_MINIMUM_RMSD_ANGSTROM,
) -> dict:
    """Two sets of distinct minima (e.g. the model's and the reference's from the same starts) against each other.

    Returns (JSON-ready): for each minimum of ``first`` the RMSD (Å, after superposition over ``atom_indices``) to
    the closest of ``second`` and its index (``first_nearest_angstrom``, ``first_nearest_index``), the same for
    ``second`` (``second_nearest_angstrom``), and the fractions of each set that the other also has
    (``first_found_in_second``, ``second_found_in_first``: closest within ``same_rmsd_angstrom``).
    """
    first_distance, first_index = nearest_rmsd_angstrom(first_angstrom, second_angstrom, atom_indices)
    second_distance, _ = nearest_rmsd_angstrom(second_angstrom, first_angstrom, atom_indices)
    return {
        "first_nearest_angstrom": first_distance.tolist(), "first_nearest_index": first_index.tolist(),
        "second_nearest_angstrom": second_distance.tolist(),
        "first_found_in_second": float(np.mean(first_distance < same_rmsd_angstrom)),
        "second_found_in_first": float(np.mean(second_distance < same_rmsd_angstrom)),
        "same_rmsd_angstrom": same_rmsd_angstrom,
    }
