"""GFN2-xTB harmonic frequencies of a minimum (default: the shipped buckyball catcher), for comparison with the
band positions of the MD power spectrum (issue 18, item 3).

1. The structure is re-optimised with GFN2-xTB (tblite, the data's settings; ASE BFGS to ``--fmax``).
2. The Hessian by central finite differences of the forces: 6N single points as Dask tasks (a local
   cluster of ``--workers`` processes, or ``--scheduler``), journaled: the same command after a kill
   redoes no finished single point.
3. Frequencies (cm⁻¹; imaginary ones negative) and each mode's kinetic-energy shares of the atom groups
   (C60, catcher carbons, hydrogens; by element for other structures) to ``--output``/harmonic_frequencies.json
   and .csv.
4. With ``--velocities`` (``velocities.vel`` of a ``so3krates-md-spectrum`` run of the same molecule): the
   bands. The harmonic spectrum is put through the MD spectrum's own VACF transform (same lags, window and
   resolution; equipartition: every mode with the same weight), the MD spectrum is split into the groups'
   contributions (which atoms move in a band), the peaks of both are matched (``--match-window``, and the same
   atoms must carry both: ``--max-composition-distance``), and each
   band is assigned from its wavenumber and the groups that carry it. ``spectrum_comparison.json`` (bands,
   shifts, spectral overlap) and ``harmonic_vs_md.png``.

    python bench/harmonic/run.py --workers 2          # catcher: ~900 single points, ~0.5 s each with OpenBLAS
    python bench/harmonic/run.py --velocities runs/catcher_spectrum/velocities.vel   # bands (journals reused)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from so3krates_openmm.data.structures import Structure, read_structure
from so3krates_openmm.data.xtb import (
    HarmonicAnalysis,
    OptimizationSettings,
    harmonic_frequencies,
    xtb_optimize_many,
    xtb_settings,
)
from so3krates_openmm.elements import masses_dalton, symbol
from so3krates_openmm.files import write_atomically
from so3krates_openmm.md.catcher import identify_ball
from so3krates_openmm.md.plotting import pyplot, save_figure
from so3krates_openmm.md.protocols import pretrained_files
from so3krates_openmm.md.reporters import read_velocities, read_velocity_header
from so3krates_openmm.md.spectrum import (
    SPEED_OF_LIGHT_CM_PER_PS,
    group_spectra,
    harmonic_group_spectra,
    match_peaks,
    spectral_peaks,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--structure", type=Path, default=pretrained_files("buckyball_catcher")["structure"],
                        help="the minimum's starting structure (PDB/XYZ)")
    parser.add_argument("--charge", type=int, default=0, help="total charge, e")
    parser.add_argument("--fmax", type=float, default=0.002, help="xTB re-optimisation: largest force, eV/Å")
    parser.add_argument("--max-steps", type=int, default=3000, help="xTB re-optimisation: at most this many steps")
    parser.add_argument("--displacement", type=float, default=0.005, help="finite-difference displacement, Å")
    parser.add_argument("--velocities", type=Path,
                        help="velocities.vel of an MD spectrum run of the same molecule: compare the bands")
    parser.add_argument("--max-lag-ps", type=float, default=1.0,
                        help="longest VACF lag, ps (the spectrum protocol's; resolution about 1/(2 max lag))")
    parser.add_argument("--match-window", type=float, default=50.0,
                        help="largest distance, cm⁻¹, between a harmonic and an MD peak of the same band")
    parser.add_argument("--max-composition-distance", type=float, default=0.35,
                        help="largest total variation distance between the atom groups' shares of a harmonic and "
                             "an MD peak of the same band (0: identical, 1: disjoint)")
    parser.add_argument("--workers", type=int, default=2, help="processes of the local Dask cluster")
    parser.add_argument("--scheduler", help="Dask scheduler address instead of a local cluster")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "harmonic", help="journals (not committed)")
    parser.add_argument("--output", type=Path, default=HERE / "buckyball_catcher", help="results and figure")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if not args.structure.is_file():
        parser.error(f"--structure {args.structure} does not exist")
    if args.velocities is not None:
        try:
            header = read_velocity_header(args.velocities)
        except (OSError, ValueError) as error:
            parser.error(f"--velocities: {error}")
        n_atoms = read_structure(args.structure).n_atoms
        if header["n_atoms"] != n_atoms:
            parser.error(f"--velocities {args.velocities} has {header['n_atoms']} atoms, --structure {n_atoms}")
    return args


def atom_groups(structure: Structure) -> dict[str, np.ndarray]:
    """C60, catcher carbons and hydrogens of a buckyball catcher; one group per element otherwise."""
    numbers = np.asarray(structure.atomic_numbers)
    try:
        ball = identify_ball(structure).ball
    except ValueError:
        return {symbol(z): np.flatnonzero(numbers == z) for z in sorted(set(numbers.tolist()))}
    host = np.setdiff1d(np.arange(len(numbers)), ball)
    groups = {"C60": ball, "catcher C": host[numbers[host] == 6], "H": np.flatnonzero(numbers == 1)}
    other = np.setdiff1d(host, np.concatenate([groups["catcher C"], groups["H"]]))
    return {**groups, "other": other} if len(other) else groups


def assign(wavenumber_cm: float, shares: dict[str, float], heavy: str) -> str:
    """A band's name from its wavenumber and the groups that carry it (``shares``; group ``H`` the hydrogens),
    for molecules of hydrogens and one heavy element ``heavy`` (C for the catcher)."""
    if wavenumber_cm > 2600:
        return f"{heavy}-H stretch"
    if shares.get("H", 0.0) >= 0.35:
        return f"{heavy}-H bend, in-plane" if wavenumber_cm >= 1000 else f"{heavy}-H bend, out-of-plane"
    skeleton = {name: share for name, share in shares.items() if name != "H"}
    total = sum(skeleton.values()) or 1.0
    owner = max(skeleton, key=skeleton.get)
    where = owner if skeleton[owner] / total >= 0.65 else " + ".join(sorted(skeleton))
    if wavenumber_cm >= 1200:
        return f"{heavy}-{heavy} stretch ({where})"
    if wavenumber_cm < 150:
        return f"soft collective modes ({where})"
    return f"skeletal deformation ({where})"


def shares_at(wavenumber: np.ndarray, contributions: dict[str, np.ndarray], at_cm: float) -> dict[str, float]:
    """Each group's share of a spectrum at a wavenumber."""
    index = int(np.argmin(np.abs(wavenumber - at_cm)))
    values = {name: float(value[index]) for name, value in contributions.items()}
    total = sum(values.values()) or 1.0
    return {name: value / total for name, value in values.items()}


def compare_bands(analysis: HarmonicAnalysis, structure: Structure, groups: dict[str, np.ndarray],
                  velocities_path: Path, max_lag_ps: float, window_cm: float, max_composition_distance: float) -> dict:
    """The MD spectrum (by groups) against the harmonic one at the same resolution: bands, shifts, overlap."""
    velocities, interval_ps = read_velocities(velocities_path)
    masses = np.asarray(masses_dalton(structure.atomic_numbers))
    heavy_numbers = [int(z) for z in structure.atomic_numbers if z != 1]
    heavy = symbol(max(set(heavy_numbers), key=heavy_numbers.count)) if heavy_numbers else "X"
    wavenumber, md = group_spectra(velocities, interval_ps, masses, groups, max_lag_ps)
    shares = {name: analysis.vibrational_atom_shares[:, atoms].sum(axis=1) for name, atoms in groups.items()}
    _, harmonic = harmonic_group_spectra(analysis.vibrational_frequencies_cm1, shares, interval_ps, max_lag_ps)
    md_total, harmonic_total = sum(md.values()), sum(harmonic.values())
    inside = (wavenumber >= 50.0) & (wavenumber <= 3500.0)
    a, b = md_total[inside], harmonic_total[inside]
    overlap = float(a @ b / np.sqrt((a @ a) * (b @ b)))
    md_peaks, harmonic_peaks = spectral_peaks(wavenumber, md_total), spectral_peaks(wavenumber, harmonic_total)

    def same_atoms(harmonic_cm: float, md_cm: float) -> bool:
        """The groups carry both bands in similar proportions (total variation distance of the shares)."""
        ours, theirs = shares_at(wavenumber, harmonic, harmonic_cm), shares_at(wavenumber, md, md_cm)
        return 0.5 * sum(abs(ours[name] - theirs[name]) for name in groups) <= max_composition_distance

    bands = []
    for harmonic_cm, md_cm in match_peaks(harmonic_peaks, md_peaks, window_cm, same_atoms):
        harmonic_shares = shares_at(wavenumber, harmonic, harmonic_cm)
        band = {"harmonic_cm1": round(harmonic_cm, 1), "md_cm1": None if md_cm is None else round(md_cm, 1),
                "shift_cm1": None if md_cm is None else round(md_cm - harmonic_cm, 1),
                "harmonic_shares": {k: round(v, 3) for k, v in harmonic_shares.items()},
                "assignment": assign(harmonic_cm, harmonic_shares, heavy)}
        if md_cm is not None:
            band["md_shares"] = {k: round(v, 3) for k, v in shares_at(wavenumber, md, md_cm).items()}
        bands.append(band)
    matched = [band["shift_cm1"] for band in bands if band["shift_cm1"] is not None]
    matched_md = {band["md_cm1"] for band in bands}
    return {
        "velocities": str(velocities_path), "md_frames": int(len(velocities)),
        "md_frame_interval_fs": interval_ps * 1e3,
        "max_lag_ps": max_lag_ps, "resolution_cm1": 1.0 / (2.0 * max_lag_ps * SPEED_OF_LIGHT_CM_PER_PS),
        "match_window_cm1": window_cm, "max_composition_distance": max_composition_distance,
        "match_rule": "nearest peaks within the window, closest pairs first, each peak once, and only if the total "
                      "variation distance of the groups' shares at the two peaks is at most max_composition_distance",
        "groups": {name: int(len(atoms)) for name, atoms in groups.items()},
        "spectral_overlap": overlap,
        "overlap_definition": "cosine similarity of the two spectra (max 1) on 50-3500 cm-1",
        "harmonic_peaks": int(len(harmonic_peaks)), "md_peaks": int(len(md_peaks)), "matched": len(matched),
        "mean_abs_shift_cm1": float(np.mean(np.abs(matched))) if matched else None,
        "median_shift_cm1": float(np.median(matched)) if matched else None,
        "bands": bands,
        "md_peaks_without_harmonic_band": [round(float(p), 1) for p in md_peaks
                                           if round(float(p), 1) not in matched_md],
        "curves": {"wavenumber_cm1": wavenumber, "md": md, "harmonic": harmonic},
    }


def plot(frequencies_cm1: np.ndarray, comparison: dict | None, path: Path) -> None:
    """The MD spectrum by groups over the harmonic one at the same resolution (and the sticks), bands marked."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(10.0, 5.0))
    real = frequencies_cm1[frequencies_cm1 > 0]
    axis.vlines(real, -0.06, -0.01, color="tab:red", lw=0.5, label=f"GFN2-xTB harmonic modes ({len(real)})")
    if comparison is not None:
        curves = comparison["curves"]
        wavenumber = curves["wavenumber_cm1"]
        axis.stackplot(wavenumber, *curves["md"].values(), labels=[f"MD: {name}" for name in curves["md"]],
                       alpha=0.55)
        axis.plot(wavenumber, -sum(curves["harmonic"].values()), color="tab:red", lw=0.9,
                  label="GFN2-xTB harmonic, same resolution (mirrored)")
        for band in comparison["bands"]:
            if band["md_cm1"] is not None:
                axis.plot([band["harmonic_cm1"], band["md_cm1"]], [-0.08, 0.0], color="0.4", lw=0.5)
        axis.set_title(f"MD power spectrum against GFN2-xTB harmonic: {comparison['matched']} of "
                       f"{comparison['harmonic_peaks']} harmonic bands matched, mean |shift| "
                       f"{comparison['mean_abs_shift_cm1'] or 0:.0f} cm⁻¹, "
                       f"overlap {comparison['spectral_overlap']:.2f}",
                       fontsize=9)
    axis.axhline(0.0, color="0.2", lw=0.5)
    axis.set_xlim(0, max(3500.0, float(real.max(initial=0.0)) + 150.0))
    axis.set_xlabel("wavenumber (cm⁻¹)")
    axis.set_ylabel("intensity (normalised; harmonic below zero)")
    axis.legend(loc="upper left", fontsize=7)
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work, output = args.work.resolve(), args.output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    structure = read_structure(args.structure)
    settings = xtb_settings(charge=args.charge)
    progress = not args.no_progress
    name = args.structure.stem
    optimised = xtb_optimize_many(
        structure.atomic_numbers, {name: structure.positions_angstrom}, work / f"{name}_optimisation.jsonl", settings,
        OptimizationSettings("BFGS", args.fmax, args.max_steps), workers=1, scheduler=args.scheduler,
        progress=progress,
    )[name]
    if not optimised["converged"]:
        raise SystemExit(f"the xTB re-optimisation did not reach fmax {args.fmax} eV/Å in {args.max_steps} steps "
                         f"(largest force {optimised['max_force_eV_per_angstrom']:.4f}); raise --max-steps")
    minimum = np.asarray(optimised["positions_angstrom"])
    analysis = harmonic_frequencies(structure.atomic_numbers, minimum, work / f"{name}_hessian.jsonl", settings,
                                    displacement_angstrom=args.displacement, workers=args.workers,
                                    scheduler=args.scheduler, progress=progress)
    vibrational = analysis.vibrational_frequencies_cm1
    groups = atom_groups(structure)
    group_shares = np.stack([analysis.vibrational_atom_shares[:, atoms].sum(axis=1) for atoms in groups.values()], 1)
    (output / "harmonic_frequencies.csv").write_text(
        "mode,wavenumber_cm-1," + ",".join(f"share_{name.replace(' ', '_')}" for name in groups) + "\n"
        + "".join(f"{k},{f:.3f}," + ",".join(f"{v:.4f}" for v in row) + "\n"
                  for k, (f, row) in enumerate(zip(vibrational, group_shares, strict=True))))
    summary = {
        "structure": str(args.structure), "reference": "GFN2-xTB (tblite via ASE, the data's settings)",
        "re_optimisation": {key: optimised[key] for key in ("energy_eV", "max_force_eV_per_angstrom", "steps")},
        "displacement_angstrom": args.displacement, "single_points": analysis.single_points,
        "cpu_hours": (analysis.cpu_seconds + optimised["cpu_seconds"]) / 3600,
        "n_imaginary": int((vibrational < 0).sum()),
        "rigid_body_modes_cm1": np.round(analysis.frequencies_cm1[:len(analysis.frequencies_cm1) - len(vibrational)],
                                         2).tolist(),
        "vibrational_frequencies_cm1": np.round(vibrational, 3).tolist(),
    }
    summary["groups"] = {name: int(len(atoms)) for name, atoms in groups.items()}
    (output / "harmonic_frequencies.json").write_text(json.dumps(summary, indent=2) + "\n")
    comparison = None
    if args.velocities is not None:
        comparison = compare_bands(analysis, structure, groups, args.velocities, args.max_lag_ps, args.match_window,
                                   args.max_composition_distance)
        written = {key: value for key, value in comparison.items() if key != "curves"}
        write_atomically(output / "spectrum_comparison.json", json.dumps(written, indent=2) + "\n")
    plot(vibrational, comparison, output / "harmonic_vs_md.png")
    print(f"{len(vibrational)} vibrational frequencies {vibrational.min():.1f}-{vibrational.max():.1f} cm-1 "
          f"({summary['n_imaginary']} imaginary); {output / 'harmonic_frequencies.json'}")
    if comparison is not None:
        print(f"bands: {comparison['matched']} of {comparison['harmonic_peaks']} harmonic peaks matched within "
              f"{args.match_window:g} cm-1 by one of {comparison['md_peaks']} MD peaks, mean |shift| "
              f"{comparison['mean_abs_shift_cm1'] or 0:.1f} cm-1, median shift "
              f"{comparison['median_shift_cm1'] or 0:+.1f} cm-1, overlap {comparison['spectral_overlap']:.3f}; "
              f"{output / 'spectrum_comparison.json'}")
    return 0


if __name__ == "__main__":
    from so3krates_openmm.runtime import configure_process

    configure_process(openblas=True, log=print)  # Debian's OpenBLAS under tblite, inherited by the workers
    sys.exit(main())
