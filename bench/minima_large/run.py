"""Minima of Ac-Ala3-NHMe at the paper's scale, checked against GFN2-xTB (issue 18, items 1, 2 and 5).

Stages (each resumable: the same command after a kill redoes nothing that finished; long stages are
Dask tasks on a local cluster of ``--workers`` processes, or on the workers of ``--scheduler``):

1. Langevin MD at raised temperatures, several seeds (``--runs 500:1 700:1 ...``), one task per run,
   a snapshot every ``--snapshot-interval`` steps after ``--skip-ps``.
2. Every snapshot minimised with the model (or every STRIDE-th of a run given as ``700:4:STRIDE``;
   OpenMM L-BFGS, one task per snapshot), duplicates merged below ``--rmsd-threshold`` heavy-atom
   RMSD after superposition.
3. The growth of the number of distinct minima with the number of snapshots (saturation), also at
   other thresholds (:data:`THRESHOLDS_ANGSTROM`).
4. Each minimum's heavy-atom RMSD to the nearest frame of the training data (``--training-data``):
   minima farther than ``--beyond-training`` Å are conformations beyond the data.
5. A random sample of ``--sample`` minima re-optimised with GFN2-xTB (tblite, the data's settings,
   ASE BFGS): RMSD model vs xTB minimum, the fraction that stays the same minimum (RMSD < 0.25 Å),
   the Spearman correlation of the energies; the same for the minima beyond the training data
   (those of the random sample and ``--sample-beyond`` more).

With ``--torsion-starts N``, an independent check of the count: N starts with uniformly random backbone
dihedrals (:mod:`so3krates_openmm.md.conformers`), minimised like the snapshots
(:mod:`so3krates_openmm.md.torsion_search`: journals of 250 starts, so that more starts later minimise only
the new ones), merged with the MD's minima; the minima only they find, and ``--sample-torsion`` of those
re-optimised with GFN2-xTB, go to the summary's ``torsion_search`` and ``torsion_search.png``, with a Chao1
estimate of how many minima the random starts would reach without limit
(:func:`~so3krates_openmm.md.exploration.chao1_richness`). ``n_minima`` stays the MD's count.
``--cis-starts M`` adds M starts of the same kind whose peptide bonds are each turned to cis with chance
``--cis-probability`` (journals ``cis<P>_torsion_seed...``; all minima in ``minima_with_cis_torsion_search/``
instead of ``minima_with_torsion_search/``, those with a cis bond also in ``minima_with_cis_peptide_bonds/``): the
amide isomers, which MD from the all-trans structure does not reach. The search then counts
the minima of all N + M starts, also by their number of cis peptide bonds, and splits the xTB check by isomer.

Writes ``--output``/summary.json and PNGs (committed); the runs, journals and all minima (PDB, CSV)
go to ``--work``, with the structures rejected for a broken or a new bond (``rejected.pdb``, for labelling).
Tiny smoke run: see tests/test_minima_large.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import shutil
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from so3krates_openmm.cli.common import add_minima_search_arguments, run_minima_search
from so3krates_openmm.data.labelling import read_frames
from so3krates_openmm.data.structures import Structure, read_structure
from so3krates_openmm.data.xtb import OptimizationSettings, xtb_optimize_many, xtb_settings
from so3krates_openmm.files import write_atomically
from so3krates_openmm.md.conformers import (
    CLASH_DISTANCE_ANGSTROM,
    cis_peptide_bonds,
    isomer_code,
    peptide_bond_torsions,
    random_torsion_conformers,
)
from so3krates_openmm.md.exploration import (
    SAME_MINIMUM_RMSD_ANGSTROM,
    ExplorationRun,
    chao1_richness,
    collect_snapshots,
    compare_with_reference,
    run_explorations,
    saturation_curve,
)
from so3krates_openmm.md.minima import (
    MinimizedSnapshot,
    Minimum,
    ModelSystemFactory,
    deduplicate,
    heavy_atom_indices,
    minimize_snapshots,
    nearest_rmsd_angstrom,
    paired_rmsd_angstrom,
    write_minima,
)
from so3krates_openmm.md.plotting import pyplot, save_figure
from so3krates_openmm.md.protocols import pretrained_files
from so3krates_openmm.md.torsion_search import minimize_starts_with_model
from so3krates_openmm.tasks import JournalMismatch
from so3krates_openmm.units import energy_conversion

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DATASET_DIR = ROOT / "datasets" / "ac_ala3_nhme"
#: Heavy-atom RMSD thresholds (Å) at which the minima are also counted, beside ``--rmsd-threshold``.
THRESHOLDS_ANGSTROM = (0.05, 0.1, 0.25, 0.5)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    shipped = pretrained_files("ac_ala3_nhme")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_minima_search_arguments(parser, structure=shipped["structure"], model=shipped["model"],
                                work=ROOT / "runs" / "minima_large", output=HERE)
    parser.add_argument("--training-data", type=Path, nargs="+",
                        default=[DATASET_DIR / "dataset.npz", DATASET_DIR / "md_frames_round1.npz"],
                        help="the model's training data (.npz/extended XYZ): distance of each minimum to it")
    parser.add_argument("--runs", nargs="+", default=["500:1", "500:2", "500:3", "700:1", "700:2", "700:3"],
                        help="MD runs as TEMPERATURE_K:SEED, or TEMPERATURE_K:SEED:STRIDE to minimise only every "
                             "STRIDE-th snapshot of that run")
    parser.add_argument("--ps", type=float, default=100.0, help="simulated time per run, ps")
    parser.add_argument("--timestep-fs", type=float, default=0.5, help="MD time step, fs")
    parser.add_argument("--hydrogen-mass", type=float, default=None,
                        help="hydrogen mass repartitioning, amu (e.g. 3 with --timestep-fs 1, bench/timestep)")
    parser.add_argument("--friction", type=float, default=1.0, help="Langevin friction, 1/ps")
    parser.add_argument("--snapshot-interval", type=int, default=200, help="MD steps between snapshots")
    parser.add_argument("--skip-ps", type=float, default=5.0, help="equilibration dropped at the start of each run, ps")
    parser.add_argument("--beyond-training", type=float, default=0.5,
                        help="a minimum farther than this heavy-atom RMSD from every training frame is new, Å")
    parser.add_argument("--sample", type=int, default=60, help="minima re-optimised with GFN2-xTB")
    parser.add_argument("--sample-beyond", type=int, default=20,
                        help="further minima beyond the training data re-optimised with GFN2-xTB")
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of the random sample of minima")
    parser.add_argument("--torsion-starts", type=int, default=0,
                        help="also minimise this many starts with random backbone dihedrals (0: none)")
    parser.add_argument("--sample-torsion", type=int, default=20,
                        help="minima found only from random-torsion starts re-optimised with GFN2-xTB")
    parser.add_argument("--cis-starts", type=int, default=0,
                        help="further random-torsion starts with peptide bonds turned to cis (--cis-probability)")
    parser.add_argument("--cis-probability", type=float, default=0.5,
                        help="chance that each peptide bond of a --cis-starts start is turned to cis")
    args = parser.parse_args(argv)
    for name in ("structure", "model"):
        if not getattr(args, name).is_file():
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} does not exist")
    for path in args.training_data:
        if not path.is_file():
            parser.error(f"--training-data {path} does not exist")
    if args.sample_beyond < 0:
        parser.error(f"--sample-beyond must not be negative, got {args.sample_beyond}")
    for name in ("torsion_starts", "sample_torsion", "cis_starts"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative, got {getattr(args, name)}")
    if not 0.0 < args.cis_probability <= 1.0:
        parser.error(f"--cis-probability must lie in (0, 1], got {args.cis_probability}")
    if args.sample < 2:
        parser.error(f"--sample must be at least 2 (a rank correlation needs two minima), got {args.sample}")
    try:
        args.runs = [ExplorationRun.parse(text) for text in args.runs]
    except ValueError as error:
        parser.error(f"--runs: {error}")
    return args


def training_positions(paths: list[Path], numbers: np.ndarray) -> np.ndarray:
    """The frames (Å) of the training data files, checked to hold the structure's atoms in its order."""
    frames = []
    for path in paths:
        data = read_frames(path)
        if not np.array_equal(data.atomic_numbers, numbers):
            raise SystemExit(f"{path}: its atoms are not those of the structure (or in another order)")
        frames.append(data.positions)
    return np.concatenate(frames)


def structure_key(positions_angstrom: np.ndarray) -> str:
    """A short fingerprint of a structure (positions rounded to 1e-4 Å)."""
    rounded = np.round(np.asarray(positions_angstrom, dtype=np.float64), 4) + 0.0  # + 0.0: no negative zeros
    return hashlib.sha256(rounded.tobytes()).hexdigest()[:16]


def plot_saturation(n: np.ndarray, counts_by_threshold: dict[float, np.ndarray], chosen: float, path: Path) -> None:
    """Distinct minima against minimised snapshots, one curve per heavy-atom RMSD threshold (``chosen`` bold)."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5.6, 4.0))
    for threshold, counts in sorted(counts_by_threshold.items()):
        axis.plot(n, counts, "o-", ms=3 if threshold == chosen else 2, lw=2.0 if threshold == chosen else 0.8,
                  label=f"{threshold:g} Å" + (" (the count)" if threshold == chosen else ""))
    axis.set_xlabel("minimised snapshots (random order)")
    axis.set_ylabel("distinct minima found")
    axis.set_title("growth of the number of distinct minima")
    axis.legend(title="heavy-atom RMSD threshold", fontsize=7, title_fontsize=7)
    axis.grid(alpha=0.3)
    save_figure(figure, path)


def plot_validation(comparison: dict, model_kj_mol: np.ndarray, xtb_kj_mol: np.ndarray, beyond: np.ndarray,
                    path: Path) -> None:
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10.0, 4.0))
    rmsd = np.asarray(comparison["rmsd_angstrom"])
    left.hist(rmsd, bins=max(5, min(30, len(rmsd))), color="tab:blue", edgecolor="k", lw=0.5)
    left.axvline(SAME_MINIMUM_RMSD_ANGSTROM, color="tab:red", ls="--", label="same minimum below")
    left.set_xlabel("heavy-atom RMSD SO3krates vs GFN2-xTB minimum (Å)")
    left.set_ylabel("minima")
    left.legend()
    model_relative, xtb_relative = model_kj_mol - model_kj_mol.min(), xtb_kj_mol - xtb_kj_mol.min()
    right.scatter(model_relative[~beyond], xtb_relative[~beyond], s=14, label="near the training data")
    right.scatter(model_relative[beyond], xtb_relative[beyond], s=14, marker="s", label="beyond the training data")
    top = max(model_relative.max(), xtb_relative.max())
    right.plot([0, top], [0, top], "k:", lw=1)
    right.set_xlabel("SO3krates energy above the lowest sampled minimum (kJ/mol)")
    right.set_ylabel("GFN2-xTB energy above the lowest (kJ/mol)")
    right.set_title(f"Spearman {comparison['energy_spearman']:.2f}")
    right.legend()
    save_figure(figure, path)


def plot_training_distance(distance: np.ndarray, threshold: float, path: Path) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5.6, 4.0))
    axis.hist(distance, bins=40, color="tab:green", edgecolor="k", lw=0.5)
    axis.axvline(threshold, color="tab:red", ls="--")
    axis.set_xlabel("heavy-atom RMSD to the nearest training frame (Å)")
    axis.set_ylabel("distinct minima")
    axis.set_title(f"{int((distance > threshold).sum())} of {len(distance)} minima beyond {threshold} Å")
    save_figure(figure, path)


def torsion_search(found: list[MinimizedSnapshot], md_minimised: list[MinimizedSnapshot], md_minima: list[Minimum],
                   structure: Structure, rmsd_threshold: float, seed: int) -> dict:
    """The minima of the random-torsion starts: alone; those farther than ``rmsd_threshold`` (heavy-atom RMSD) from
    every MD minimum ("only"); the number of MD minima within it of one of theirs; and all snapshots merged (their
    ``index`` numbered after the MD's), with the rejected ones of both; the counts alone and merged at each of
    :data:`THRESHOLDS_ANGSTROM`; the growth curve and the Chao1 estimate; the number of cis peptide bonds of each of
    the minima and of the "only" ones; and the minimisations' CPU seconds."""
    minima, rejected = deduplicate(found, structure, rmsd_threshold_angstrom=rmsd_threshold)
    heavy = heavy_atom_indices(structure)
    torsion_positions = np.stack([m.positions_angstrom for m in minima])
    md_positions = np.stack([m.positions_angstrom for m in md_minima])
    to_md, _ = nearest_rmsd_angstrom(torsion_positions, md_positions, heavy)
    from_md, _ = nearest_rmsd_angstrom(md_positions, torsion_positions, heavy)
    every = md_minimised + [replace(s, index=len(md_minimised) + s.index) for s in found]
    merged, merged_rejected = deduplicate(every, structure, rmsd_threshold_angstrom=rmsd_threshold)
    by_threshold = {threshold: (len(deduplicate(found, structure, rmsd_threshold_angstrom=threshold)[0]),
                                len(deduplicate(every, structure, rmsd_threshold_angstrom=threshold)[0]))
                    for threshold in sorted(set(THRESHOLDS_ANGSTROM) - {rmsd_threshold})}
    by_threshold[rmsd_threshold] = (len(minima), len(merged))
    n, counts = saturation_curve(minima, len(found), seed=seed)
    omega = peptide_bond_torsions(structure)
    cis = cis_bond_counts(minima, omega)
    new = to_md >= rmsd_threshold
    return {
        "minima": minima, "rejected": rejected, "merged": merged, "merged_rejected": merged_rejected,
        "by_threshold": dict(sorted(by_threshold.items())),
        "cpu_seconds": float(np.nansum([s.cpu_seconds for s in found])),
        "only": [m for m, keep in zip(minima, new, strict=True) if keep],
        "cis": cis, "only_cis": cis[new],
        "found_again": int(np.sum(from_md < rmsd_threshold)),
        "n": n, "counts": counts, "richness": chao1_richness(minima),
    }


def plot_torsion_search(md_curve: tuple[np.ndarray, np.ndarray], search: dict, md_energies: np.ndarray,
                        path: Path) -> None:
    """Distinct minima against minimised structures (MD snapshots and random-torsion starts), and the energies of
    the MD's minima and of those only the starts found."""
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10.0, 4.0))
    left.plot(*md_curve, "o-", ms=2, label="MD snapshots (500-700 K)")
    left.plot(search["n"], search["counts"], "s-", ms=2, label="random backbone dihedrals")
    chao1 = search["richness"]["chao1"]
    left.axhline(chao1, color="tab:orange", ls="--", lw=1,
                 label="Chao1 estimate of their total")
    left.set_xlabel("minimised structures (random order)")
    left.set_ylabel("distinct minima found")
    left.set_ylim(0.0, 1.1 * max(left.get_ylim()[1], chao1))
    left.legend(loc="lower right")
    left.grid(alpha=0.3)
    only = np.array([m.energy_kj_mol for m in search["only"]])
    lowest = min(md_energies.min(), only.min() if len(only) else np.inf)
    bins = np.linspace(0.0, max(md_energies.max(), only.max() if len(only) else 0.0) - lowest, 40)
    right.hist(md_energies - lowest, bins=bins, alpha=0.6, label=f"MD's minima ({len(md_energies)})")
    with_cis = search["only_cis"] > 0
    if with_cis.any():  # the amide isomers apart: cis bonds cost energy, and MD never reaches them
        right.hist(only[~with_cis] - lowest, bins=bins, alpha=0.6,
                   label=f"only from random dihedrals, all trans ({int((~with_cis).sum())})")
        right.hist(only[with_cis] - lowest, bins=bins, alpha=0.6,
                   label=f"only from random dihedrals, cis peptide bonds ({int(with_cis.sum())})")
    else:
        right.hist(only - lowest, bins=bins, alpha=0.6, label=f"found only from random dihedrals ({len(only)})")
    right.set_xlabel("SO3krates energy above the lowest minimum (kJ/mol)")
    right.set_ylabel("distinct minima")
    right.set_ylim(top=1.3 * right.get_ylim()[1])  # room for the legend above the bars
    right.legend(fontsize=8)
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    return run_minima_search(run, parse_args(argv), argv)


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    """All five stages (module docstring), resuming what an earlier call finished."""
    work, output = args.work.resolve(), args.output.resolve()
    work.mkdir(parents=True, exist_ok=True)
    output.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    structure = read_structure(args.structure)
    heavy = heavy_atom_indices(structure)
    steps = round(args.ps * 1000.0 / args.timestep_fs)

    print(f"1/5 MD: {len(args.runs)} runs of {args.ps:g} ps ({steps} steps), a snapshot every {args.snapshot_interval} "
          f"steps", flush=True)
    md = run_explorations(args.runs, args.structure, args.model, work / "md", steps=steps,
                          snapshot_interval=args.snapshot_interval, timestep_fs=args.timestep_fs,
                          hydrogen_mass_amu=args.hydrogen_mass,
                          friction_per_ps=args.friction, platform=args.platform, workers=args.workers,
                          scheduler=args.scheduler, progress=progress)
    snapshots = collect_snapshots(work / "md", args.runs, args.skip_ps)
    n_snapshots = len(snapshots.runs)

    print(f"2/5 minimising {n_snapshots} snapshots", flush=True)
    factory = ModelSystemFactory(str(args.structure.resolve()), str(args.model.resolve()))
    minimised: list[MinimizedSnapshot] = []
    names = np.asarray(snapshots.runs)
    for run in args.runs:  # one journal per run: adding runs later minimises only theirs
        mine = np.flatnonzero(names == run.name)
        journal = work / "minimised" / f"{run.name}.jsonl"
        try:
            found = minimize_snapshots(
                snapshots.positions_angstrom[mine], snapshots.steps[mine], factory, journal,
                workers=args.workers, scheduler=args.scheduler, platform=args.platform,
                tolerance_kj_mol_nm=args.minimize_tolerance, max_iterations=args.max_iterations, progress=progress,
            )
        except JournalMismatch as error:
            raise SystemExit(
                f"{journal} holds minimisations of other snapshots or settings than run {run.name} gives now (its "
                f"stride, --skip-ps, --snapshot-interval, the model or the minimiser changed): give the run and the "
                f"options as before, or move the journal away to minimise again. ({str(error)[:300]} ...)") from None
        minimised += [replace(snapshot, index=int(mine[snapshot.index])) for snapshot in found]
    minima, rejected = deduplicate(minimised, structure, rmsd_threshold_angstrom=args.rmsd_threshold)
    if len(minima) < 2:
        raise SystemExit(f"only {len(minima)} distinct minima from {n_snapshots} snapshots: run longer or more runs")
    energies = np.array([m.energy_kj_mol for m in minima])
    minimisation_seconds = float(np.nansum([s.cpu_seconds for s in minimised]))
    # The amide isomers: how many minimised snapshots left the isomer their run started in (by MD crossing the
    # amide barrier, or in the minimiser); the minima by their number of cis peptide bonds.
    omega = peptide_bond_torsions(structure)
    started = {run.name: run.isomer or isomer_code(structure.positions_angstrom, omega) for run in args.runs}
    isomer_changed = sum(isomer_code(s.positions_angstrom, omega) != started[names[s.index]]
                         for s in minimised if s.problem is None)
    md_cis = cis_bond_counts(minima, omega)
    first_found = new_minima_by_run(minima, names, [run.name for run in args.runs])
    write_minima(work / "minima", minima, rejected, structure,
                 {"snapshots": n_snapshots, "rmsd_threshold_angstrom": args.rmsd_threshold})
    shutil.copyfile(work / "minima" / "minima_energies.png", output / "minima_energies.png")
    n, counts = saturation_curve(minima, n_snapshots, seed=args.sample_seed)
    # How the count depends on the threshold: variants of one conformer (e.g. other methyl rotamers) move the heavy
    # atoms by about 0.1 Å.
    counts_by_threshold = {args.rmsd_threshold: counts}
    for threshold in sorted(set(THRESHOLDS_ANGSTROM) - {args.rmsd_threshold}):
        others, _ = deduplicate(minimised, structure, rmsd_threshold_angstrom=threshold)
        counts_by_threshold[threshold] = saturation_curve(others, n_snapshots, seed=args.sample_seed)[1]
    plot_saturation(n, counts_by_threshold, args.rmsd_threshold, output / "saturation.png")
    search = None
    if args.torsion_starts or args.cis_starts:
        print(f"2/5 torsion search: minimising {args.torsion_starts} starts with random backbone dihedrals"
              + (f" and {args.cis_starts} with cis peptide bonds too" if args.cis_starts else ""), flush=True)
        found = []
        for count, cis_probability in ((args.torsion_starts, 0.0), (args.cis_starts, args.cis_probability)):
            if not count:
                continue
            starts = random_torsion_conformers(structure, count, seed=args.torsion_seed,
                                               cis_probability=cis_probability)
            found += [replace(snapshot, index=len(found) + snapshot.index, step=len(found) + snapshot.step)
                      for snapshot in minimize_starts_with_model(
                          starts, args.torsion_seed, factory, work / "minimised", workers=args.workers,
                          scheduler=args.scheduler, platform=args.platform,
                          tolerance_kj_mol_nm=args.minimize_tolerance, max_iterations=args.max_iterations,
                          progress=progress, log=lambda line: print(line, flush=True),
                          journal_prefix=f"cis{cis_probability:g}_" if cis_probability else "")]
        search = torsion_search(found, minimised, minima, structure, args.rmsd_threshold, args.sample_seed)
        folder = "minima_with_cis_torsion_search" if args.cis_starts else "minima_with_torsion_search"
        write_minima(work / folder, search["merged"], search["merged_rejected"], structure,
                     {"snapshots": n_snapshots, "random_torsion_starts": args.torsion_starts,
                      "random_torsion_starts_with_cis": args.cis_starts,
                      "rmsd_threshold_angstrom": args.rmsd_threshold})
        if args.cis_starts:  # apart too: the minima with a cis bond, which no all-trans search's labels hold
            write_minima(work / "minima_with_cis_peptide_bonds",
                         [m for m, bonds in zip(search["minima"], search["cis"], strict=True) if bonds], [],
                         structure, {"random_torsion_starts_with_cis": args.cis_starts,
                                     "rmsd_threshold_angstrom": args.rmsd_threshold})
        plot_torsion_search((n, counts), search, energies, output / "torsion_search.png")

    print(f"3/5 distance of {len(minima)} minima to the training data", flush=True)
    training = training_positions(args.training_data, structure.atomic_numbers)
    minima_positions = np.stack([m.positions_angstrom for m in minima])
    distance, _ = nearest_rmsd_angstrom(minima_positions, training, heavy)
    beyond = distance > args.beyond_training
    plot_training_distance(distance, args.beyond_training, output / "training_distance.png")
    if search is not None and search["only"]:
        only_positions = np.stack([m.positions_angstrom for m in search["only"]])
        only_energies = np.array([m.energy_kj_mol for m in search["only"]])
        only_distance, _ = nearest_rmsd_angstrom(only_positions, training, heavy)

    rng = np.random.default_rng(args.sample_seed)
    sample = np.sort(rng.choice(len(minima), min(args.sample, len(minima)), replace=False))
    # Further minima beyond the training data, so that those have enough reference checks of their own.
    others = np.setdiff1d(np.flatnonzero(beyond), sample)
    extra = np.sort(rng.choice(others, min(args.sample_beyond, len(others)), replace=False))
    chosen = np.union1d(sample, extra)
    torsion_sample = np.zeros(0, dtype=int)
    if search is not None and search["only"]:
        torsion_sample = np.sort(rng.choice(len(search["only"]), min(args.sample_torsion, len(search["only"])),
                                            replace=False))
    print(f"4/5 GFN2-xTB re-optimisation of {len(chosen) + len(torsion_sample)} minima ({len(sample)} at random, "
          f"{len(extra)} more beyond the training data, {len(torsion_sample)} found only from random dihedrals)",
          flush=True)
    # Keyed by the structure, not its rank: after more runs the ranks change, a minimum done stays done.
    to_optimise = [minima_positions[k] for k in chosen] + [only_positions[k] for k in torsion_sample]
    optimised = xtb_optimize_many(
        structure.atomic_numbers, {structure_key(x): x for x in to_optimise}, work / "xtb_reoptimised.jsonl",
        xtb_settings(charge=args.charge), OptimizationSettings("BFGS", args.xtb_fmax, args.xtb_max_steps),
        workers=args.workers, scheduler=args.scheduler, progress=progress,
    )
    xtb_kj_mol_per_ev = energy_conversion("eV", "kJ/mol")

    def compared(indices: np.ndarray, positions: np.ndarray, model_kj_mol: np.ndarray
                 ) -> tuple[np.ndarray, dict | None, np.ndarray, np.ndarray]:
        """The converged ones of ``indices`` (into ``positions`` and ``model_kj_mol``), their comparison with xTB
        (None for fewer than 2), the xTB energies (kJ/mol) and the RMSDs model vs xTB minimum (Å)."""
        done = np.array([k for k in indices if optimised[structure_key(positions[k])]["converged"]], dtype=int)
        results = [optimised[structure_key(positions[k])] for k in done]
        xtb_kj_mol = np.array([r["energy_eV"] for r in results]) * xtb_kj_mol_per_ev
        if not len(done):
            return done, None, xtb_kj_mol, np.zeros(0)
        xtb_positions = np.stack([np.asarray(r["positions_angstrom"]) for r in results])
        rmsd = paired_rmsd_angstrom(positions[done], xtb_positions, heavy)
        comparison = None if len(done) < 2 else compare_with_reference(
            positions[done], model_kj_mol[done], xtb_positions, xtb_kj_mol, heavy)
        return done, comparison, xtb_kj_mol, rmsd

    validated, comparison, xtb_kj_mol, _ = compared(sample, minima_positions, energies)
    if comparison is None:
        raise SystemExit(f"only {len(validated)} xTB re-optimisations converged: raise --xtb-max-steps")
    same = np.asarray(comparison["same_minimum"])
    plot_validation(comparison, energies[validated], xtb_kj_mol, beyond[validated], output / "validation.png")
    validated_beyond, comparison_beyond, _, rmsd_beyond = compared(chosen[beyond[chosen]], minima_positions,
                                                                   energies)

    print("5/5 summary", flush=True)
    md_seconds = float(sum(result["cpu_seconds"] for result in md.values()))
    xtb_seconds = float(sum(result["cpu_seconds"] for result in optimised.values()))
    torsion_summary = None
    if search is not None:
        torsion_summary = torsion_search_summary(args, search, energies)
        if search["only"]:

            def checked(indices: np.ndarray) -> dict:
                done, versus, _, rmsd = compared(indices, only_positions, only_energies)
                return {"n_validated": len(done),
                        "same_minimum_fraction": float(np.mean(rmsd < SAME_MINIMUM_RMSD_ANGSTROM)) if len(done)
                        else None,
                        "median_rmsd_angstrom": float(np.median(rmsd)) if len(done) else None,
                        "energy_spearman": None if versus is None else versus["energy_spearman"]}

            torsion_summary.update({"n_only_beyond_training": int((only_distance > args.beyond_training).sum()),
                                    **checked(torsion_sample)})
            if args.cis_starts:
                with_cis = search["only_cis"][torsion_sample] > 0
                torsion_summary["validated_by_isomer"] = {"all_trans": checked(torsion_sample[~with_cis]),
                                                          "with_cis": checked(torsion_sample[with_cis])}
                # What a cis bond costs on each surface: the relative energies' error by the number of cis bonds
                done, _, xtb_relative, _ = compared(torsion_sample, only_positions, only_energies)
                torsion_summary["energy_error_by_cis_peptide_bonds_kj_mol"] = energy_error_by_cis(
                    only_energies[done], xtb_relative, search["only_cis"][done])
    temperature = {run.name: run.temperature_K for run in args.runs}
    summary = {
        "command": "python bench/minima_large/run.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "model": str(args.model), "structure": str(args.structure),
        "reference": "GFN2-xTB (tblite via ASE, the training data's settings), geometry by ASE BFGS",
        "runs": [{"name": run.name, "temperature_K": run.temperature_K, "seed": run.seed, "stride": run.stride,
                  "isomer": started[run.name], "snapshots": int(np.sum(names == run.name)),
                  "new_minima": first_found[run.name], **md[run.name]}
                 for run in args.runs],
        "ps_per_run": args.ps, "timestep_fs": args.timestep_fs, "hydrogen_mass_amu": args.hydrogen_mass,
        "snapshot_interval_steps": args.snapshot_interval, "skip_ps": args.skip_ps,
        "n_snapshots": n_snapshots,
        "n_rejected_snapshots": len(rejected),
        "rmsd_threshold_angstrom": args.rmsd_threshold,
        "n_minima": len(minima),
        "n_minima_by_cis_peptide_bonds": count_by_cis(md_cis),
        "n_minima_by_temperature_K": minima_by_temperature(
            minima, np.array([temperature[str(name)] for name in names], dtype=float)),
        "n_minima_by_isomer": dict(sorted(Counter(isomer_code(m.positions_angstrom, omega) for m in minima).items())),
        "n_snapshots_changed_isomer": int(isomer_changed),
        "relative_energy_kj_mol": {
            "max": float(energies.max() - energies.min()),
            "quartiles": np.percentile(energies - energies.min(), [25, 50, 75]).round(3).tolist(),
        },
        "saturation": {"snapshots": n.tolist(), "minima": counts.tolist(),
                       "new_minima_per_100_snapshots_last_10_percent": _late_growth(n, counts)},
        "n_minima_by_rmsd_threshold_angstrom": {f"{t:g}": int(c[-1]) for t, c in sorted(counts_by_threshold.items())},
        "cpu_hours": {"md": md_seconds / 3600, "minimisation": minimisation_seconds / 3600,
                      "xtb_reoptimisation": xtb_seconds / 3600,
                      "note": "CPU time of the sessions that did the work (an MD run resumed after a kill counts "
                              "its last session only); one thread per task"},
        "minimisation_cpu_seconds_per_snapshot": minimisation_seconds / n_snapshots,
        "minimisation_wall_seconds_per_snapshot": float(np.nanmean([s.seconds for s in minimised])),
        "n_training_frames": len(training),
        "beyond_training_rmsd_angstrom": args.beyond_training,
        "n_beyond_training": int(beyond.sum()),
        "training_distance_angstrom": {"median": float(np.median(distance)), "max": float(distance.max())},
        "n_sampled": len(sample), "n_sampled_beyond_training_extra": len(extra),
        "n_validated": len(validated),
        "n_xtb_not_converged": int(sum(not optimised[structure_key(minima_positions[k])]["converged"] for k in chosen)),
        "same_minimum_fraction": comparison["same_minimum_fraction"],
        "same_minimum_rmsd_angstrom": SAME_MINIMUM_RMSD_ANGSTROM,
        "median_rmsd_angstrom": comparison["median_rmsd_angstrom"],
        "energy_spearman": comparison["energy_spearman"],
        "relative_energy_mae_kj_mol": comparison["relative_energy_mae_kj_mol"],
        "n_validated_beyond_training": len(validated_beyond),
        "same_minimum_fraction_beyond_training": float(np.mean(rmsd_beyond < SAME_MINIMUM_RMSD_ANGSTROM))
        if len(rmsd_beyond) else None,
        "median_rmsd_beyond_training_angstrom": float(np.median(rmsd_beyond)) if len(rmsd_beyond) else None,
        "energy_spearman_beyond_training": None if comparison_beyond is None else comparison_beyond["energy_spearman"],
        "same_minimum_fraction_by_cis_peptide_bonds": {
            "means": "fraction of the re-optimised random sample that stays the same minimum (and count) by number "
                     "of cis peptide bonds",
            **{str(k): [float(np.mean(same[md_cis[validated] == k])), int(np.sum(md_cis[validated] == k))]
               for k in np.unique(md_cis[validated])}},
        "energy_error_by_cis_peptide_bonds_kj_mol": energy_error_by_cis(energies[validated], xtb_kj_mol,
                                                                        md_cis[validated]),
        "validated": [{"minimum": int(k), "rmsd_angstrom": r, "same_minimum": bool(s),
                       "training_distance_angstrom": float(distance[k])}
                      for k, r, s in zip(validated, comparison["rmsd_angstrom"], same, strict=True)],
        "validated_beyond_training": [
            {"minimum": int(k), "rmsd_angstrom": float(r), "training_distance_angstrom": float(distance[k])}
            for k, r in zip(validated_beyond, rmsd_beyond, strict=True)],
        "torsion_search": torsion_summary,
    }
    write_atomically(output / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"{len(minima)} distinct minima from {n_snapshots} snapshots ({int(beyond.sum())} beyond the training "
          f"data); GFN2-xTB on {len(validated)}: same minimum {comparison['same_minimum_fraction']:.2f}, Spearman "
          f"{comparison['energy_spearman']:.2f}; {output / 'summary.json'}")
    return 0


def torsion_search_summary(args: argparse.Namespace, search: dict, md_energies: np.ndarray) -> dict:
    """The summary's ``torsion_search`` section (without the xTB check, added by the caller)."""
    only = np.array([m.energy_kj_mol for m in search["only"]])
    merged = np.array([m.energy_kj_mol for m in search["merged"]])
    merged_relative = np.array([m.energy_kj_mol for m in search["minima"]]) - merged.min()

    return {
        "what": "starts with uniformly random backbone dihedrals (phi, psi)"
                + (f", the last n_cis_starts of them with each peptide bond turned to cis with chance "
                   f"{args.cis_probability:g}" if args.cis_starts else "")
                + ", clashes drawn again, minimised like the snapshots and merged with the MD's minima at the same "
                "threshold",
        "n_starts": int(search["n"][-1]), "seed": args.torsion_seed,
        "n_cis_starts": args.cis_starts, "cis_probability": args.cis_probability if args.cis_starts else None,
        "n_minima_by_cis_peptide_bonds": count_by_cis(search["cis"]),
        "relative_energy_by_cis_peptide_bonds_kj_mol": {
            str(k): np.percentile(merged_relative[search["cis"] == k], [0, 25, 50, 75, 100]).round(3).tolist()
            for k in np.unique(search["cis"])},
        "relative_energy_by_cis_peptide_bonds_means": "min, quartiles, max above the lowest minimum found",
        "estimated_total_by_isomer": None if not args.cis_starts else {
            "all_trans": chao1_richness([m for m, n in zip(search["minima"], search["cis"], strict=True) if not n]),
            "with_cis": chao1_richness([m for m, n in zip(search["minima"], search["cis"], strict=True) if n])},
        "n_only_by_cis_peptide_bonds": count_by_cis(search["only_cis"]),
        "clash_distance_angstrom": CLASH_DISTANCE_ANGSTROM,
        "n_rejected": len(search["rejected"]),
        "n_minima": len(search["minima"]),
        "n_minima_with_md": len(search["merged"]),
        "n_minima_by_rmsd_threshold_angstrom": {str(t): n for t, (n, _) in search["by_threshold"].items()},
        "n_minima_with_md_by_rmsd_threshold_angstrom": {str(t): n for t, (_, n) in search["by_threshold"].items()},
        "n_only_torsion_search": len(search["only"]),
        "only_means": "farther than rmsd_threshold_angstrom heavy-atom RMSD from every MD minimum",
        "n_md_minima_found_again": search["found_again"],
        "lowest_minus_md_lowest_kj_mol": float(merged.min() - md_energies.min()),
        "only_relative_energy_kj_mol": None if not len(only) else {
            "min": float(only.min() - merged.min()),
            "quartiles": np.percentile(only - merged.min(), [25, 50, 75]).round(3).tolist()},
        "saturation": {"starts": search["n"].tolist(), "minima": search["counts"].tolist(),
                       "new_minima_per_100_starts_last_10_percent": _late_growth(search["n"], search["counts"]),
                       "estimated_total": {**search["richness"],
                                           "what": "bias-corrected Chao1 (a lower bound) of the minima these "
                                                   "random starts would reach without limit, from the minima "
                                                   "reached once (singletons) and twice (doubletons)"}},
        "minimisation_cpu_hours": search["cpu_seconds"] / 3600,
    }


def energy_error_by_cis(model_kj_mol: np.ndarray, xtb_kj_mol: np.ndarray, bonds: np.ndarray) -> dict:
    """SO3krates minus GFN2-xTB energy (kJ/mol) of re-optimised minima, each above the lowest of the sample: the
    median and the count by number of cis peptide bonds (``bonds``, one per minimum)."""
    error = (model_kj_mol - model_kj_mol.min()) - (xtb_kj_mol - xtb_kj_mol.min())
    return {"means": "SO3krates minus GFN2-xTB energy above the lowest of the re-optimised sample: median "
                     "(and count) by number of cis peptide bonds",
            **{str(k): [float(np.median(error[bonds == k])), int(np.sum(bonds == k))] for k in np.unique(bonds)}}


def cis_bond_counts(minima: list[Minimum], omega: np.ndarray) -> np.ndarray:
    """Each minimum's number of cis peptide bonds (``omega``: :func:`peptide_bond_torsions`)."""
    return np.array([cis_peptide_bonds(m.positions_angstrom, omega).sum() for m in minima], dtype=int)


def new_minima_by_run(minima: list[Minimum], runs: np.ndarray, order: list[str]) -> dict[str, int]:
    """How many minima each run reached first, the runs taken in ``order`` (the command's): does another seed or
    temperature still add minima? ``runs``: the run name of each snapshot (``Minimum.snapshots`` index it)."""
    rank = {name: k for k, name in enumerate(order)}
    first = Counter(min((str(runs[i]) for i in minimum.snapshots), key=rank.__getitem__) for minimum in minima)
    return {name: first.get(name, 0) for name in order}


def minima_by_temperature(minima: list[Minimum], temperatures_k: np.ndarray) -> dict[str, dict[str, int]]:
    """For each MD temperature: how many of the minima its snapshots reached, how many only its snapshots reached,
    and its number of snapshots; independent of the runs' order. ``temperatures_k``: the temperature (K) of the
    run of each snapshot (``Minimum.snapshots`` index it)."""
    temperatures_k = np.asarray(temperatures_k)
    reached = [set(temperatures_k[minimum.snapshots].tolist()) for minimum in minima]
    return {f"{t:g}": {"snapshots": int(np.sum(temperatures_k == t)),
                       "reached": sum(t in here for here in reached),
                       "only_here": sum(here == {t} for here in reached)}
            for t in np.unique(temperatures_k).tolist()}


def count_by_cis(bonds: np.ndarray) -> dict[str, int]:
    """How many of the structures have 0, 1, 2, ... cis peptide bonds (``bonds``: each one's number)."""
    return {str(k): int(n) for k, n in enumerate(np.bincount(np.asarray(bonds, dtype=int), minlength=1))}


def _late_growth(n: np.ndarray, counts: np.ndarray) -> float | None:
    """New minima per 100 snapshots over the last tenth of the snapshots (0: saturated)."""
    if len(n) < 2:
        return None
    start = int(np.searchsorted(n, 0.9 * n[-1]))
    start = min(start, len(n) - 2)
    return float(100.0 * (counts[-1] - counts[start]) / max(n[-1] - n[start], 1))


if __name__ == "__main__":
    from so3krates_openmm.runtime import configure_process

    # OMP_WAIT_POLICY=PASSIVE and Debian's OpenBLAS under tblite (2-5x faster xTB), also in the Dask workers,
    # which inherit the environment
    configure_process(openblas=True, log=print)
    sys.exit(main())
