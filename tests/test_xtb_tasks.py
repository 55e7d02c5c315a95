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
    # kinetic shares: rows sum to 1, the two hydrogens alike, and they carry most of every mode (O is 16x heavier)
    shares = analysis.vibrational_atom_shares
    assert shares.shape == (3, 3)
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(shares[:, 1], shares[:, 2], atol=0.03)  # the stretches, 8 cm-1 apart, mix a little
    assert np.all(shares[:, 1:].sum(axis=1) > 0.85)
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
    output = tmp_path / "out"
    options = ["--structure", str(xyz), "--work", str(tmp_path / "work"), "--output", str(output), "--workers", "2",
               "--no-progress"]
    assert module.main(options) == 0
    summary = json.loads((output / "harmonic_frequencies.json").read_text())
    assert summary["single_points"] == 18 and summary["n_imaginary"] == 0 and summary["groups"] == {"H": 2, "O": 1}
    np.testing.assert_allclose(summary["vibrational_frequencies_cm1"], [1539.5, 3643.3, 3651.5], atol=1.0)
    assert (output / "harmonic_vs_md.png").stat().st_size > 5_000
    csv_lines = (output / "harmonic_frequencies.csv").read_text().splitlines()
    assert csv_lines[0] == "mode,wavenumber_cm-1,share_H,share_O" and len(csv_lines) == 4

    # "MD" that is exactly harmonic (every mode with the same kinetic energy, random phases): the bands are
    # found at the harmonic positions, the two stretches (8 cm-1 apart) as one band at this resolution.
    velocities = tmp_path / "velocities.vel"
    write_harmonic_velocities(velocities, tmp_path / "work" / "water_hessian.jsonl")
    assert module.main([*options, "--velocities", str(velocities)]) == 0
    comparison = json.loads((output / "spectrum_comparison.json").read_text())
    assert comparison["harmonic_peaks"] == comparison["matched"] == 2 and comparison["spectral_overlap"] > 0.95
    bend, stretch = comparison["bands"]
    assert abs(bend["shift_cm1"]) < 3 and abs(stretch["shift_cm1"]) < 3 and 3640 < stretch["md_cm1"] < 3655
    assert bend["assignment"] == "O-H bend, in-plane" and stretch["assignment"] == "O-H stretch"
    assert stretch["md_shares"]["H"] > 0.85 and stretch["harmonic_shares"]["H"] > 0.85
    with pytest.raises(SystemExit):  # a velocity file of another molecule
        module.main([*options, "--structure", str(write_methane(tmp_path)), "--velocities", str(velocities)])


def write_harmonic_velocities(path: Path, journal: Path) -> None:
    """20 ps of velocities every 1 fs of water moving in its GFN2-xTB normal modes (the script's Hessian)."""
    from ase import Atoms, units
    from ase.vibrations import VibrationsData
    from openmm import unit

    from so3krates_openmm.md.reporters import VelocityReporter

    minimum = np.asarray(json.loads(journal.read_text().splitlines()[0])["header"]["positions_angstrom"])
    analysis = harmonic_frequencies(WATER_NUMBERS, minimum, journal, xtb_settings(), workers=1, progress=False)
    atoms = Atoms(numbers=WATER_NUMBERS, positions=minimum)
    energies, modes = VibrationsData.from_2d(atoms, analysis.hessian_eV_per_angstrom2).get_energies_and_modes()
    order = np.argsort(np.abs(energies))[6:]
    angular_per_ps = 2 * np.pi * 2.99792458e-2 * (energies[order].real / units.invcm)
    times_ps = np.arange(20000) * 1e-3
    phases = np.random.default_rng(0).uniform(0, 2 * np.pi, len(order))
    velocities = np.einsum("tk,kni->tni", np.cos(np.outer(times_ps, angular_per_ps) + phases), modes[order])

    class State:
        def __init__(self, frame: np.ndarray) -> None:
            self.frame = frame

        def getVelocities(self, asNumpy: bool = True):  # noqa: N802 (OpenMM's name)
            return unit.Quantity(self.frame, unit.nanometer / unit.picosecond)

    reporter = VelocityReporter(path, interval=2, n_atoms=3, timestep_fs=0.5)
    for frame in velocities:
        reporter.report(None, State(frame))
    reporter.close()


def write_methane(directory: Path) -> Path:
    from ase.build import molecule
    from ase.io import write

    path = directory / "methane.xyz"
    write(path, molecule("CH4"))
    return path
