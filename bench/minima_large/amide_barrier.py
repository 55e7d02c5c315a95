"""The amide (peptide bond) rotation barrier of a model against GFN2-xTB: relaxed scans of each omega (issue 18).

    OMP_NUM_THREADS=1 python bench/minima_large/amide_barrier.py --model runs/minima_large_round7/model_fused.pt
    # -> bench/minima_large/round7/amide_barrier.json and amide_barrier.png (about 6 minutes on one core)

Round 7's MD crossed peptide bonds between cis and trans within 100 ps at 700 and 900 K, which the reference's
barrier (about 80 kJ/mol) would make rare. This measures the barrier on both surfaces the same way: each peptide
bond's omega (X-C-N-Y, :func:`~so3krates_openmm.md.conformers.peptide_bond_torsions`) of the relaxed structure is
turned in steps of ``--step-deg`` from trans to cis and back, and at each step the structure is relaxed with omega
held fixed (ASE ``FixInternals``, BFGS to ``--fmax``), each step starting from the previous one. A relaxed scan
can jump where another coordinate switches abruptly, so the two directions can differ; the
barrier reported is the lower of the two directions' highest points, above the trans end (``barrier_kj_mol``),
and above the cis end (``cis_barrier_kj_mol``). About a minute per bond for GFN2-xTB on one core; with
tblite's OpenMP threads beside the model's (no ``OMP_NUM_THREADS=1``) it ran many times slower here.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from so3krates_openmm.data.reference import make_calculator
from so3krates_openmm.data.structures import Structure, read_structure
from so3krates_openmm.data.xtb import OptimizationSettings, optimize_with_ase, xtb_settings
from so3krates_openmm.files import write_atomically
from so3krates_openmm.md.conformers import TorsionDriver, dihedral_deg, peptide_bond_torsions
from so3krates_openmm.md.minima import MinimizerRecipe, ModelSystemFactory
from so3krates_openmm.md.plotting import pyplot, save_figure
from so3krates_openmm.md.protocols import pretrained_files
from so3krates_openmm.md.torsion_search import ContextCalculator
from so3krates_openmm.units import energy_conversion

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True,
                        help="exported model (.pt) or a serialised OpenMM System (.xml) of the structure")
    parser.add_argument("--structure", type=Path, default=pretrained_files("ac_ala3_nhme")["structure"],
                        help="PDB of the peptide (default: the shipped Ac-Ala3-NHMe)")
    parser.add_argument("--bonds", type=int, nargs="+", default=None,
                        help="peptide bonds to scan, counted from 0 at the N-terminal cap (default: all)")
    parser.add_argument("--step-deg", type=float, default=10.0, help="omega step of the scan (degrees)")
    parser.add_argument("--fmax", type=float, default=0.02, help="relaxation's largest force at each step (eV/Å)")
    parser.add_argument("--no-reference", action="store_true", help="scan the model only, without GFN2-xTB")
    parser.add_argument("--platform", default="CPU", help="OpenMM platform of the model (CPU, CUDA, Reference)")
    parser.add_argument("-o", "--output", type=Path, default=HERE / "round7" / "amide_barrier.json",
                        help="summary JSON; the figure goes beside it as .png")
    return parser.parse_args(argv)


def relaxed_scan(structure: Structure, positions_angstrom: np.ndarray, quadruplet: np.ndarray, calculator,
                 angles_deg: np.ndarray, fmax_eV_per_angstrom: float) -> tuple[np.ndarray, np.ndarray]:
    """Energies (kJ/mol) and relaxed positions (Å) along ``angles_deg`` of the dihedral ``quadruplet``.

    Each step turns the atoms on the dihedral's far side (rigidly, from the previous step's relaxed structure) to
    the next angle, then relaxes everything on ``calculator`` (an ASE calculator) with that dihedral held fixed.
    """
    from ase import Atoms
    from ase.constraints import FixInternals
    from ase.optimize import BFGS

    driver = TorsionDriver(structure, np.asarray(quadruplet).reshape(1, 4))
    atoms = Atoms(numbers=structure.atomic_numbers, positions=np.asarray(positions_angstrom, dtype=np.float64))
    atoms.calc = calculator
    indices = [int(i) for i in quadruplet]
    kj_mol_per_ev = energy_conversion("eV", "kJ/mol")
    energies, positions = [], []
    for angle in np.asarray(angles_deg, dtype=np.float64):
        atoms.set_constraint()
        atoms.set_positions(driver.set_dihedrals(atoms.get_positions(), [angle]))
        atoms.set_constraint(FixInternals(dihedrals_deg=[[atoms.get_dihedral(*indices), indices]]))
        BFGS(atoms, logfile=None).run(fmax=fmax_eV_per_angstrom, steps=1000)
        energies.append(atoms.get_potential_energy() * kj_mol_per_ev)
        positions.append(atoms.get_positions())
    return np.array(energies), np.array(positions)


def bond_scan(structure: Structure, start_angstrom: np.ndarray, quadruplet: np.ndarray, calculator,
              step_deg: float, fmax: float) -> dict:
    """One peptide bond scanned from trans to cis and back on ``calculator`` (module docstring): angles and
    energies (kJ/mol above the trans start) of both directions, and the barriers."""
    start_deg = dihedral_deg(start_angstrom, quadruplet)
    if abs(start_deg) < 90.0:
        raise ValueError(f"peptide bond {quadruplet.tolist()} is cis ({start_deg:.0f} degrees) in the relaxed "
                         "structure: the scan starts from trans")
    # From the trans start (near +-180) towards 0 the short way, then back.
    forward = np.sign(start_deg) * np.arange(abs(start_deg), -1e-9, -step_deg)
    forward = np.append(forward, 0.0) if forward[-1] != 0.0 else forward
    energies_forward, positions = relaxed_scan(structure, start_angstrom, quadruplet, calculator, forward, fmax)
    backward = forward[::-1]
    energies_backward, _ = relaxed_scan(structure, positions[-1], quadruplet, calculator, backward, fmax)
    trans = energies_forward[0]
    cis = min(energies_forward[-1], energies_backward[0])
    highest = min(energies_forward.max(), energies_backward.max())
    return {
        "quadruplet": [int(i) for i in quadruplet],
        "trans_to_cis": {"omega_deg": forward.tolist(), "energy_kj_mol": (energies_forward - trans).tolist()},
        "cis_to_trans": {"omega_deg": backward.tolist(), "energy_kj_mol": (energies_backward - trans).tolist()},
        "barrier_kj_mol": float(highest - trans),
        "cis_barrier_kj_mol": float(highest - cis),
        "cis_minus_trans_kj_mol": float(cis - trans),
    }


def plot(results: dict, path: Path) -> None:
    """Energy against omega for each bond: both directions, model and reference."""
    bonds = sorted({key for method in results.values() for key in method})
    figure, axes = pyplot().subplots(1, len(bonds), figsize=(3.6 * len(bonds), 3.4), sharey=True, squeeze=False)
    for axis, bond in zip(axes[0], bonds, strict=True):
        for (method, scans), colour in zip(results.items(), ("tab:blue", "tab:orange"), strict=False):
            scan = scans[bond]
            for direction, style in (("trans_to_cis", "-o"), ("cis_to_trans", "--")):
                axis.plot(np.abs(scan[direction]["omega_deg"]), scan[direction]["energy_kj_mol"], style, ms=3,
                          color=colour, label=f"{method}" if direction == "trans_to_cis" else None)
        axis.set_title(f"peptide bond {bond}", fontsize=9)
        axis.set_xlabel("|omega| (degrees)")
        axis.invert_xaxis()
        axis.grid(alpha=0.3)
    axes[0, 0].set_ylabel("energy above trans (kJ/mol)")
    axes[0, 0].legend(fontsize=8, title="solid: trans to cis", title_fontsize=7)
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    structure = read_structure(args.structure)
    omega = peptide_bond_torsions(structure)
    bonds = list(range(len(omega))) if args.bonds is None else args.bonds
    if not all(0 <= bond < len(omega) for bond in bonds):
        raise SystemExit(f"--bonds {bonds}: {args.structure} has peptide bonds 0 to {len(omega) - 1}")
    if not args.step_deg > 0:
        raise SystemExit(f"--step-deg must be > 0, got {args.step_deg}")
    calculators = {"SO3krates": ContextCalculator(MinimizerRecipe(
        ModelSystemFactory(str(args.structure.resolve()), str(args.model.resolve())), args.platform).build().context)}
    if not args.no_reference:
        calculators["GFN2-xTB"] = make_calculator(replace(xtb_settings(), scf_guess="previous"))
    results: dict[str, dict[str, dict]] = {}
    for method, calculator in calculators.items():
        start = np.array(optimize_with_ase(structure.atomic_numbers, structure.positions_angstrom, calculator,
                                           OptimizationSettings(fmax_eV_per_angstrom=args.fmax))["positions_angstrom"])
        results[method] = {}
        for bond in bonds:
            results[method][str(bond)] = scan = bond_scan(structure, start, omega[bond], calculator, args.step_deg,
                                                          args.fmax)
            print(f"{method:9s} bond {bond}: barrier {scan['barrier_kj_mol']:.1f} kJ/mol from trans, "
                  f"{scan['cis_barrier_kj_mol']:.1f} from cis; cis - trans {scan['cis_minus_trans_kj_mol']:.1f}",
                  flush=True)
    summary = {"model": str(args.model), "structure": str(args.structure), "step_deg": args.step_deg,
               "fmax_eV_per_angstrom": args.fmax,
               "means": "relaxed scans of omega (module docstring of bench/minima_large/amide_barrier.py); energies "
                        "in kJ/mol above the trans end; the barrier is the lower of the two directions' highest "
                        "points",
               "scans": results}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(args.output, json.dumps(summary, indent=1) + "\n")
    plot(results, args.output.with_suffix(".png"))
    print(f"wrote {args.output} and {args.output.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
