#!/usr/bin/env python
"""The same random-dihedral starts minimised with the model and with GFN2-xTB (issue 18).

    python bench/minima_large/reference_search.py --model runs/minima_large_round3/model_fused.pt \\
        --work runs/minima_large_round3 --torsion-seed 2 --starts 1000 --output bench/minima_large/round3

How many minima does each surface have, and does each start end in the same minimum on both? The starts are
those of ``run.py --torsion-starts`` with the same ``--torsion-seed``, and the model's minimisations share its
journals in ``--work`` (what run.py minimised is not minimised again, and the other way round); GFN2-xTB
(tblite, the data's settings, ASE BFGS to ``--xtb-fmax``) optimises the same starts in journals of its own.
On a 42-atom peptide with one thread an xTB optimisation from a random start costs about 1.6 times a model
minimisation, so the reference's own count is affordable. Writes ``reference_search.json`` and
``reference_search.png`` to ``--output``:

- per surface: distinct minima (heavy-atom RMSD threshold), their growth with the starts, the Chao1 estimate
  of the total (:func:`~so3krates_openmm.md.exploration.chao1_richness`) and the counts at other thresholds;
- per start: the heavy-atom RMSD between the model's and xTB's minimum and the fraction that end in the same
  minimum (below 0.25 Å; the two minimisers, OpenMM L-BFGS and ASE BFGS, can also part ways on one surface);
- a control (``--optimizer-control``): the first starts also optimised on the model with xTB's optimiser, so
  that the share of starts ending in the same minimum is known for two minimisers on one surface and for one
  minimiser on two surfaces;
- each distinct xTB minimum minimised again with the model (journals of their own): the share that stays
  (below 0.25 Å), i.e. is a minimum of the model as well, whatever the search found;
- GFN2-xTB's distinct minima as ``--work``/xtb_minima/minima.pdb (for ``so3krates-data label``: training data
  at the reference's own minima);
- between the two sets of distinct minima: the share of the model's minima that xTB also has, the share of
  xTB's that the model found (all, and those within 10 and 20 kJ/mol of xTB's lowest), and the Spearman
  correlation and MAE of the relative energies of the minima both have.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from so3krates_openmm.cli.common import add_minima_search_arguments, run_minima_search
from so3krates_openmm.data.structures import Structure, read_structure
from so3krates_openmm.data.xtb import OptimizationSettings, xtb_settings
from so3krates_openmm.files import write_atomically
from so3krates_openmm.md.conformers import random_torsion_conformers
from so3krates_openmm.md.exploration import (
    SAME_MINIMUM_RMSD_ANGSTROM,
    chao1_richness,
    compare_with_reference,
    match_minima,
    saturation_curve,
)
from so3krates_openmm.md.minima import (
    MinimizedSnapshot,
    Minimum,
    ModelSystemFactory,
    deduplicate,
    heavy_atom_indices,
    paired_rmsd_angstrom,
    write_minima,
)
from so3krates_openmm.md.plotting import pyplot, save_figure
from so3krates_openmm.md.protocols import pretrained_files
from so3krates_openmm.md.torsion_search import (
    minimize_starts_with_model,
    minimize_starts_with_model_ase,
    minimize_starts_with_xtb,
)

ROOT = Path(__file__).resolve().parents[2]
#: Heavy-atom RMSD thresholds (Å) at which both surfaces' minima are also counted.
THRESHOLDS_ANGSTROM = (0.05, 0.1, 0.25, 0.5)
#: xTB minima within these energies (kJ/mol) of xTB's lowest: the share of them the model found.
LOW_ENERGY_WINDOWS_KJ_MOL = (10.0, 20.0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    shipped = pretrained_files("ac_ala3_nhme")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_minima_search_arguments(parser, structure=shipped["structure"], model=shipped["model"],
                                work=ROOT / "runs" / "minima_large", output=Path(__file__).resolve().parent)
    parser.add_argument("--starts", type=int, default=500, help="random-dihedral starts")
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of the random order of the growth curves")
    parser.add_argument("--optimizer-control", type=int, default=100,
                        help="the first this many starts also optimised on the model with xTB's ASE optimiser (a "
                             "control: surfaces against minimisers; 0: none)")
    args = parser.parse_args(argv)
    for name in ("structure", "model"):
        if not getattr(args, name).exists():
            parser.error(f"--{name} {getattr(args, name)} does not exist")
    if args.starts < 2:
        parser.error(f"--starts must be at least 2, got {args.starts}")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_minima_search(run, parse_args(argv), argv)


def surface(found: list[MinimizedSnapshot], structure: Structure, args: argparse.Namespace
            ) -> tuple[list[Minimum], dict, tuple[np.ndarray, np.ndarray]]:
    """One surface's distinct minima (lowest first), its summary and its growth curve."""
    minima, rejected = deduplicate(found, structure, rmsd_threshold_angstrom=args.rmsd_threshold)
    n, counts = saturation_curve(minima, len(found), seed=args.sample_seed)
    energies = np.array([m.energy_kj_mol for m in minima])
    by_threshold = {f"{t:g}": len(minima) if t == args.rmsd_threshold
                    else len(deduplicate(found, structure, rmsd_threshold_angstrom=t)[0]) for t in THRESHOLDS_ANGSTROM}
    return minima, {
        "n_minima": len(minima),
        "n_rejected": len(rejected),
        "rejected_examples": sorted({str(s.problem).split(" (")[0] for s in rejected})[:5],
        "relative_energy_kj_mol": {"max": float(energies.max() - energies.min()),
                                   "quartiles": np.percentile(energies - energies.min(), [25, 50, 75]).round(3)
                                   .tolist()},
        "saturation": {"starts": n.tolist(), "minima": counts.tolist()},
        "estimated_total": chao1_richness(minima),
        "n_minima_by_rmsd_threshold_angstrom": by_threshold,
        "cpu_hours": float(np.nansum([s.cpu_seconds for s in found])) / 3600,
    }, (n, counts)


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    work, output = args.work.resolve(), args.output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    structure = read_structure(args.structure)
    heavy = heavy_atom_indices(structure)
    starts = random_torsion_conformers(structure, args.starts, seed=args.torsion_seed)

    def log(line: str) -> None:
        print(line, flush=True)

    log(f"1/4 {args.starts} random-dihedral starts (seed {args.torsion_seed}) minimised with the model")
    factory = ModelSystemFactory(str(args.structure.resolve()), str(args.model.resolve()))
    model_found = minimize_starts_with_model(
        starts, args.torsion_seed, factory, work / "minimised", workers=args.workers, scheduler=args.scheduler,
        platform=args.platform, tolerance_kj_mol_nm=args.minimize_tolerance, max_iterations=args.max_iterations,
        progress=progress, log=log)
    log(f"2/4 the same starts optimised with GFN2-xTB (BFGS to {args.xtb_fmax} eV/Å)")
    xtb_found = minimize_starts_with_xtb(
        structure, starts, args.torsion_seed, work / "minimised", xtb_settings(charge=args.charge),
        OptimizationSettings("BFGS", args.xtb_fmax, args.xtb_max_steps), workers=args.workers,
        scheduler=args.scheduler, progress=progress, log=log)

    control = args.optimizer_control and minimize_starts_with_model_ase(
        structure, starts[:args.optimizer_control], args.torsion_seed, factory, work / "minimised",
        OptimizationSettings("BFGS", args.xtb_fmax, args.xtb_max_steps), workers=args.workers,
        scheduler=args.scheduler, platform=args.platform, progress=progress, log=log)
    log("3/4 GFN2-xTB's minima minimised again with the model: are they minima of the model too?")
    xtb_on_model = minimize_starts_with_model(
        np.stack([s.positions_angstrom for s in xtb_found]), args.torsion_seed, factory, work / "minimised",
        workers=args.workers, scheduler=args.scheduler, platform=args.platform,
        tolerance_kj_mol_nm=args.minimize_tolerance, max_iterations=args.max_iterations, progress=progress, log=log,
        journal_prefix="model_from_xtb_")

    log("4/4 comparison")
    model_minima, model_summary, model_curve = surface(model_found, structure, args)
    xtb_minima, xtb_summary, xtb_curve = surface(xtb_found, structure, args)
    write_minima(work / "xtb_minima", xtb_minima, [s for s in xtb_found if s.problem is not None], structure,
                 {"random_dihedral_starts": args.starts, "torsion_seed": args.torsion_seed,
                  "rmsd_threshold_angstrom": args.rmsd_threshold, "reference": "GFN2-xTB"})
    # Each distinct xTB minimum (its lowest-energy start) against where the model's minimiser takes it.
    first_start = np.array([m.snapshots[0] for m in xtb_minima])
    kept = np.array([k for k in first_start if xtb_on_model[k].problem is None], dtype=int)
    moved = paired_rmsd_angstrom(np.stack([xtb_found[k].positions_angstrom for k in kept]),
                                 np.stack([xtb_on_model[k].positions_angstrom for k in kept]), heavy)
    # Start by start (deduplicate marked the rejected ones with their problem).
    both = np.array([k for k in range(args.starts) if model_found[k].problem is None and xtb_found[k].problem is None])
    per_start = paired_rmsd_angstrom(np.stack([model_found[k].positions_angstrom for k in both]),
                                     np.stack([xtb_found[k].positions_angstrom for k in both]), heavy)
    # The control: on the first starts, the model with xTB's optimiser against the model's L-BFGS and against xTB.
    optimizer_control = None
    if control:
        def same_start(first: list[MinimizedSnapshot], second: list[MinimizedSnapshot]) -> dict:
            pairs = [k for k in range(len(control)) if first[k].problem is None and second[k].problem is None]
            rmsd = paired_rmsd_angstrom(np.stack([first[k].positions_angstrom for k in pairs]),
                                        np.stack([second[k].positions_angstrom for k in pairs]), heavy)
            return {"n_compared": len(pairs),
                    "same_minimum_fraction": float(np.mean(rmsd < SAME_MINIMUM_RMSD_ANGSTROM)),
                    "median_rmsd_angstrom": float(np.median(rmsd))}

        optimizer_control = {
            "what": "the first n_starts starts also optimised on the model with ASE BFGS to --xtb-fmax (xTB's "
                    "optimiser): same minimum from the same start for each pair of optimisations",
            "n_starts": len(control),
            "model_lbfgs_vs_model_bfgs": same_start(model_found, control),
            "model_bfgs_vs_xtb_bfgs": same_start(control, xtb_found),
            "model_lbfgs_vs_xtb_bfgs": same_start(model_found, xtb_found),
        }
    # Set against set, and the energies of the minima both have.
    model_positions = np.stack([m.positions_angstrom for m in model_minima])
    xtb_positions = np.stack([m.positions_angstrom for m in xtb_minima])
    model_energies = np.array([m.energy_kj_mol for m in model_minima])
    xtb_energies = np.array([m.energy_kj_mol for m in xtb_minima])
    match = match_minima(model_positions, xtb_positions, heavy)
    found = np.asarray(match["first_nearest_angstrom"]) < SAME_MINIMUM_RMSD_ANGSTROM
    partner = np.asarray(match["first_nearest_index"])[found]
    energies = None if found.sum() < 2 else compare_with_reference(
        model_positions[found], model_energies[found], xtb_positions[partner], xtb_energies[partner], heavy)
    xtb_relative = xtb_energies - xtb_energies.min()
    recovered = np.asarray(match["second_nearest_angstrom"]) < SAME_MINIMUM_RMSD_ANGSTROM
    summary = {
        "command": "python bench/minima_large/reference_search.py "
                   + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "model": str(args.model), "structure": str(args.structure),
        "reference": "GFN2-xTB (tblite via ASE, the training data's settings), geometry by ASE BFGS",
        "n_starts": args.starts, "torsion_seed": args.torsion_seed,
        "rmsd_threshold_angstrom": args.rmsd_threshold, "same_minimum_rmsd_angstrom": SAME_MINIMUM_RMSD_ANGSTROM,
        "model_surface": model_summary,
        "xtb_surface": xtb_summary,
        "per_start": {
            "n_compared": len(both),
            "same_minimum_fraction": float(np.mean(per_start < SAME_MINIMUM_RMSD_ANGSTROM)),
            "median_rmsd_angstrom": float(np.median(per_start)),
            "rmsd_quartiles_angstrom": np.percentile(per_start, [25, 50, 75]).round(4).tolist(),
        },
        "optimizer_control": optimizer_control,
        "xtb_minima_on_model": {
            "what": "each distinct GFN2-xTB minimum minimised with the model: the share that stays within "
                    "same_minimum_rmsd_angstrom (a minimum of the model too) and how far they move",
            "n_minimised": len(kept),
            "stay_fraction": float(np.mean(moved < SAME_MINIMUM_RMSD_ANGSTROM)),
            "median_rmsd_angstrom": float(np.median(moved)),
            "rmsd_quartiles_angstrom": np.percentile(moved, [25, 50, 75]).round(4).tolist(),
        },
        "sets": {
            "model_minima_found_by_xtb": match["first_found_in_second"],
            "xtb_minima_found_by_model": match["second_found_in_first"],
            "xtb_minima_found_by_model_within_kj_mol": {
                f"{window:g}": {"n_xtb_minima": int(np.sum(xtb_relative <= window)),
                                "found_by_model": float(np.mean(recovered[xtb_relative <= window]))}
                for window in LOW_ENERGY_WINDOWS_KJ_MOL},
            "n_shared": int(found.sum()),
            "shared_energy_spearman": None if energies is None else energies["energy_spearman"],
            "shared_relative_energy_mae_kj_mol": None if energies is None else energies["relative_energy_mae_kj_mol"],
        },
    }
    plot(model_curve, xtb_curve, model_summary, xtb_summary, per_start,
         (model_energies[found], xtb_energies[partner], energies), output / "reference_search.png")
    write_atomically(output / "reference_search.json", json.dumps(summary, indent=1) + "\n")
    log(f"model: {len(model_minima)} minima (Chao1 {model_summary['estimated_total']['chao1']:.0f}), GFN2-xTB: "
        f"{len(xtb_minima)} (Chao1 {xtb_summary['estimated_total']['chao1']:.0f}) from {args.starts} starts; same "
        f"minimum from the same start {summary['per_start']['same_minimum_fraction']:.2f}; xTB minima that are "
        f"minima of the model {summary['xtb_minima_on_model']['stay_fraction']:.2f}; "
        f"{output / 'reference_search.json'}")
    return 0


def plot(model_curve: tuple[np.ndarray, np.ndarray], xtb_curve: tuple[np.ndarray, np.ndarray], model_summary: dict,
         xtb_summary: dict, per_start: np.ndarray, shared: tuple[np.ndarray, np.ndarray, dict | None],
         path: Path) -> None:
    """Growth of both counts with their Chao1 estimates; per-start RMSD; ``shared``: the model's and xTB's
    energies (kJ/mol) of the minima both have, and their comparison."""
    plt = pyplot()
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15.0, 4.2))
    for (n, counts), summary, label, colour in ((model_curve, model_summary, "SO3krates", "tab:blue"),
                                                (xtb_curve, xtb_summary, "GFN2-xTB", "tab:red")):
        left.plot(n, counts, "o-", ms=2, color=colour, label=f"{label}: {summary['n_minima']} minima")
        left.axhline(summary["estimated_total"]["chao1"], color=colour, ls="--", lw=1,
                     label=f"{label}: Chao1 estimate {summary['estimated_total']['chao1']:.0f}")
    left.set_xlabel("random-dihedral starts (random order)")
    left.set_ylabel("distinct minima found")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    middle.hist(per_start, bins=40, color="tab:green", edgecolor="k", lw=0.5)
    middle.axvline(SAME_MINIMUM_RMSD_ANGSTROM, color="tab:red", ls="--", label="same minimum below")
    middle.set_xlabel("heavy-atom RMSD, SO3krates vs GFN2-xTB\nminimum of the same start (Å)")
    middle.set_ylabel("starts")
    middle.set_title(f"same minimum: {np.mean(per_start < SAME_MINIMUM_RMSD_ANGSTROM):.2f} of {len(per_start)}")
    middle.legend()
    model_kj_mol, xtb_kj_mol, energies = shared
    if energies is not None:
        model_relative, xtb_relative = model_kj_mol - model_kj_mol.min(), xtb_kj_mol - xtb_kj_mol.min()
        right.scatter(model_relative, xtb_relative, s=10)
        top = max(model_relative.max(), xtb_relative.max())
        right.plot([0, top], [0, top], "k:", lw=1)
        right.set_title(f"{len(model_relative)} minima both have: Spearman {energies['energy_spearman']:.2f}, "
                        f"MAE {energies['relative_energy_mae_kj_mol']:.1f} kJ/mol", fontsize=9)
    right.set_xlabel("SO3krates energy above the lowest\nshared minimum (kJ/mol)")
    right.set_ylabel("GFN2-xTB energy above the lowest\nshared minimum (kJ/mol)")
    save_figure(figure, path)


if __name__ == "__main__":
    from so3krates_openmm.runtime import configure_process

    # OMP_WAIT_POLICY=PASSIVE and Debian's OpenBLAS under tblite (2-5x faster xTB), also in the Dask workers
    configure_process(openblas=True, log=print)
    sys.exit(main())
