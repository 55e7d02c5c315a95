"""GFN2-xTB harmonic frequencies of a minimum (default: the shipped buckyball catcher), for comparison with the
band positions of the MD power spectrum (issue 18, item 3).

1. The structure is re-optimised with GFN2-xTB (tblite, the data's settings; ASE BFGS to ``--fmax``).
2. The Hessian by central finite differences of the forces: 6N single points as Dask tasks (a local
   cluster of ``--workers`` processes, or ``--scheduler``), journaled: the same command after a kill
   redoes no finished single point.
3. Frequencies (cm⁻¹; imaginary ones negative) to ``--output``/harmonic_frequencies.json and .csv and a
   stick spectrum with the VACF power spectrum of an MD run (``--spectrum-csv``, from
   ``so3krates-md-spectrum``) when given.

    python bench/harmonic/run.py --workers 2          # catcher: ~900 single points, ~0.5 s each with OpenBLAS
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from so3krates_openmm.data.structures import read_structure
from so3krates_openmm.data.xtb import OptimizationSettings, harmonic_frequencies, xtb_optimize_many, xtb_settings
from so3krates_openmm.md.plotting import pyplot, save_figure
from so3krates_openmm.md.protocols import pretrained_files

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
    parser.add_argument("--spectrum-csv", type=Path, help="spectrum.csv of so3krates-md-spectrum to plot against")
    parser.add_argument("--workers", type=int, default=2, help="processes of the local Dask cluster")
    parser.add_argument("--scheduler", help="Dask scheduler address instead of a local cluster")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "harmonic", help="journals (not committed)")
    parser.add_argument("--output", type=Path, default=HERE / "buckyball_catcher", help="results and figure")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if not args.structure.is_file():
        parser.error(f"--structure {args.structure} does not exist")
    if args.spectrum_csv is not None and not args.spectrum_csv.is_file():
        parser.error(f"--spectrum-csv {args.spectrum_csv} does not exist")
    return args


def plot(frequencies_cm1: np.ndarray, spectrum_csv: Path | None, path: Path) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(8.0, 4.0))
    real = frequencies_cm1[frequencies_cm1 > 0]
    axis.vlines(real, 0.0, 1.0, color="tab:red", lw=0.6, label=f"GFN2-xTB harmonic ({len(real)} modes)")
    if spectrum_csv is not None:
        rows = [line for line in spectrum_csv.read_text().splitlines() if line and not line.startswith("#")]
        wavenumber, intensity = np.array([[float(v) for v in row.split(",")] for row in rows[1:]]).T  # after header
        axis.plot(wavenumber, intensity / intensity.max(), color="tab:blue", lw=1.0, label="MD power spectrum (VACF)")
    axis.set_xlim(0, max(3500.0, float(real.max(initial=0.0)) + 150.0))
    axis.set_xlabel("wavenumber (cm⁻¹)")
    axis.set_ylabel("intensity (normalised)")
    axis.legend(loc="upper left")
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
    (output / "harmonic_frequencies.csv").write_text(
        "mode,wavenumber_cm-1\n" + "".join(f"{k},{f:.3f}\n" for k, f in enumerate(vibrational)))
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
    (output / "harmonic_frequencies.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(vibrational, args.spectrum_csv, output / "harmonic_vs_md.png")
    print(f"{len(vibrational)} vibrational frequencies {vibrational.min():.1f}-{vibrational.max():.1f} cm-1 "
          f"({summary['n_imaginary']} imaginary); {output / 'harmonic_frequencies.json'}")
    return 0


if __name__ == "__main__":
    from so3krates_openmm.runtime import configure_process

    configure_process(openblas=True, log=print)  # Debian's OpenBLAS under tblite, inherited by the workers
    sys.exit(main())
