"""GFN2-xTB on task workers: re-optimisation of a small molecule, harmonic frequencies of water (finite differences
on a local cluster of 2 workers, resumed after a kill), checked against ASE's own finite-difference vibrations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from so3krates_openmm.data.reference import make_calculator
from so3krates_openmm.data.xtb import (
    OptimizationSettings,
    harmonic_frequencies,
    xtb_optimize,
    xtb_optimize_many,
    xtb_settings,
)

WATER_NUMBERS = [8, 1, 1]
#: A distorted water: O-H 1.05 and 0.92 Å, angle ~ 112 degrees.
DISTORTED_WATER = np.array([[0.0, 0.0, 0.0], [1.05, 0.0, 0.0], [-0.345, 0.853, 0.0]])


def test_reoptimisation_reaches_the_xtb_minimum_of_water_from_two_starts(tmp_path: Path) -> None:
    settings = xtb_settings()
    result = xtb_optimize(WATER_NUMBERS, DISTORTED_WATER, settings, OptimizationSettings(fmax_eV_per_angstrom=0.005))
    assert result["converged"] and result["max_force_eV_per_angstrom"] < 0.005 and result["steps"] > 3
    x = np.asarray(result["positions_angstrom"])
    bonds = np.linalg.norm(x[1:] - x[0], axis=1)
    angle = np.degrees(np.arccos(np.dot(x[1] - x[0], x[2] - x[0]) / bonds.prod()))
    assert np.allclose(bonds, bonds.mean(), atol=1e-3) and 0.94 < bonds.mean() < 0.98  # GFN2-xTB: ~0.96 Å
    assert 102 < angle < 110
    # The same minimum from another start, as tasks on two workers (journaled: the second call computes nothing).
    starts = {"distorted": DISTORTED_WATER, "stretched": DISTORTED_WATER * np.array([1.1, 0.95, 1.0])}
    journal = tmp_path / "optimisations.jsonl"
    many = xtb_optimize_many(WATER_NUMBERS, starts, journal, settings, OptimizationSettings(fmax_eV_per_angstrom=0.005),
                             workers=2, progress=False)
    assert many["distorted"]["energy_eV"] == pytest.approx(result["energy_eV"], abs=1e-8)
    assert many["stretched"]["energy_eV"] == pytest.approx(result["energy_eV"], abs=1e-5)
    assert xtb_optimize_many(WATER_NUMBERS, starts, journal, settings,
                             OptimizationSettings(fmax_eV_per_angstrom=0.005), workers=0, progress=False) == many
    with pytest.raises(ValueError, match="unknown optimizer 'Newton'"):
        OptimizationSettings(optimizer="Newton")


def test_harmonic_frequencies_of_water_on_two_workers_match_ase_and_resume(tmp_path: Path) -> None:
    from ase import Atoms
    from ase.vibrations import Vibrations

    settings = xtb_settings()
    minimum = np.asarray(xtb_optimize(WATER_NUMBERS, DISTORTED_WATER, settings,
                                      OptimizationSettings(fmax_eV_per_angstrom=1e-4))["positions_angstrom"])
    journal = tmp_path / "hessian.jsonl"
    analysis = harmonic_frequencies(WATER_NUMBERS, minimum, journal, settings, displacement_angstrom=0.005,
                                    workers=2, progress=False)
    assert analysis.single_points == 18 and len(analysis.frequencies_cm1) == 9
    bend, symmetric, antisymmetric = analysis.vibrational_frequencies_cm1
    # GFN2-xTB (tblite 0.8.0, this set-up): 1539.5, 3643.2, 3651.4 cm-1; experiment (harmonic): 1648, 3832, 3943.
    assert 1520 < bend < 1560 and 3620 < symmetric < antisymmetric < 3670
    assert np.all(np.abs(analysis.frequencies_cm1[:6]) < 100)  # translations and rotations
    np.testing.assert_allclose(analysis.hessian_eV_per_angstrom2, analysis.hessian_eV_per_angstrom2.T)
    # ASE's own finite-difference vibrations (same displacement, central differences) in this process.
    atoms = Atoms(numbers=WATER_NUMBERS, positions=minimum)
    atoms.calc = make_calculator(settings)
    vibrations = Vibrations(atoms, delta=0.005, nfree=2, name=str(tmp_path / "ase_vib"))
    vibrations.run()
    reference = np.sort(vibrations.get_frequencies().real)[-3:]
    np.testing.assert_allclose(analysis.vibrational_frequencies_cm1, reference, atol=0.5)
    # Killed after 7 single points (a torn 8th line): the same call computes only the other 11.
    lines = journal.read_text().splitlines()
    marked = json.loads(lines[1])
    marked["result"]["cpu_seconds"] = 1000.0  # a redone single point would lose this
    journal.write_text("\n".join([lines[0], json.dumps(marked), *lines[2:8]]) + "\n" + lines[8][:30])
    again = harmonic_frequencies(WATER_NUMBERS, minimum, journal, settings, displacement_angstrom=0.005,
                                 workers=2, progress=False)
    np.testing.assert_allclose(again.frequencies_cm1, analysis.frequencies_cm1, atol=1e-6)
    assert again.cpu_seconds >= 1000.0
    assert len(journal.read_text().splitlines()) == 19
    with pytest.raises(ValueError, match="displacement_angstrom"):
        harmonic_frequencies(WATER_NUMBERS, minimum, journal, settings, displacement_angstrom=0.0)


def test_harmonic_script_on_water(tmp_path: Path) -> None:
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "bench" / "harmonic" / "run.py"
    spec = importlib.util.spec_from_file_location("harmonic_run", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    xyz = tmp_path / "water.xyz"
    lines = [f"{symbol} {x} {y} {z}" for symbol, (x, y, z) in zip("OHH", DISTORTED_WATER, strict=True)]
    xyz.write_text("3\nwater\n" + "\n".join(lines) + "\n")
    spectrum = tmp_path / "spectrum.csv"
    spectrum.write_text("# velocity source: test\nwavenumber_cm-1,intensity\n0,0\n1600,1.0\n3700,0.5\n")
    output = tmp_path / "out"
    assert module.main(["--structure", str(xyz), "--work", str(tmp_path / "work"), "--output", str(output),
                        "--spectrum-csv", str(spectrum), "--workers", "2", "--no-progress"]) == 0
    summary = json.loads((output / "harmonic_frequencies.json").read_text())
    assert summary["single_points"] == 18 and summary["n_imaginary"] == 0
    np.testing.assert_allclose(summary["vibrational_frequencies_cm1"], [1539.5, 3643.3, 3651.5], atol=1.0)
    assert (output / "harmonic_vs_md.png").stat().st_size > 5_000
    assert (output / "harmonic_frequencies.csv").read_text().count("\n") == 4
