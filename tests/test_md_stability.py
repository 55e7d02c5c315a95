"""The stability monitor: bonds, collisions, NaN energies; last good state; stable fraction."""

from __future__ import annotations

import json

import numpy as np
import openmm as mm
import pytest
from openmm import unit

from so3krates_openmm.cli.langevin_nvt import main as langevin_nvt_main
from so3krates_openmm.data.structures import Structure, read_structure
from so3krates_openmm.data.trajectory import read_dcd
from so3krates_openmm.md.runner import RunConfig, run_md
from so3krates_openmm.md.simulation import SimulationSettings
from so3krates_openmm.md.stability import (
    StabilityChecker,
    StabilityCriteria,
    covalent_bonds,
)

REFERENCE = ["--platform", "Reference", "--threads", "1", "--no-progress"]


def test_monitor_fires_on_random_weights_and_keeps_last_good_state(tmp_path, peptide_pdb, peptide_random_model, capsys):
    output = tmp_path / "unstable"
    code = langevin_nvt_main([
        "--structure", str(peptide_pdb), "--model", str(peptide_random_model), "--steps", "2000",
        "--stability-interval", "2", "--trajectory-interval", "2", "--log-interval", "2", "--no-minimize",
        "--seed", "3", "--output", str(output), *REFERENCE,
    ])
    assert code == 1
    out = capsys.readouterr().out
    assert "UNSTABLE at step" in out and "stable fraction" in out
    report = json.loads((output / "stability.json").read_text())
    assert report["stable"] is False and report["bond_source"] == "topology" and report["n_bonds"] == 41
    assert report["failure_step"] == report["last_good_step"] + 2
    assert report["stable_fraction"] == pytest.approx(report["last_good_step"] / 2000)
    assert "stretched" in report["reason"] or "collided" in report["reason"]
    assert not (output / "final_state.xml").exists()
    run = json.loads((output / "run.json").read_text())
    assert run["final_step"] == report["failure_step"] and run["completed"] is False

    # The saved state is the one of the last passing check, and it passes; the next frame fails.
    structure = read_structure(peptide_pdb)
    state = mm.XmlSerializer.deserialize((output / "last_good_state.xml").read_text())
    positions = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    assert state.getVelocities(asNumpy=True).shape == (42, 3)
    checker = StabilityChecker(structure, StabilityCriteria())
    assert checker.check(np.asarray(positions), 0.0) is None
    frames = read_dcd(output / "trajectory.dcd")
    steps = frames.first_step + np.arange(frames.n_frames) * frames.steps_between_frames
    assert steps[-1] == report["failure_step"]
    if report["last_good_step"] > 0:
        good = frames.positions_angstrom[list(steps).index(report["last_good_step"])]
        np.testing.assert_allclose(good, positions, atol=1e-4)  # DCD stores float32
    assert checker.check(frames.positions_angstrom[-1], 0.0) is not None
    assert read_structure(output / "last_good.pdb").n_atoms == 42


def _pair_system(numbers, positions_angstrom, pair, energy: str) -> tuple[Structure, mm.System]:
    """Atoms with one CustomBondForce term between ``pair`` (r in nm, energy in kJ/mol)."""
    structure = Structure(numbers, positions_angstrom, source="toy")
    system = mm.System()
    for z in numbers:
        system.addParticle({1: 1.008, 6: 12.011}[z])
    force = mm.CustomBondForce(energy)
    force.addBond(*pair, [])
    system.addForce(force)
    return structure, system


C_H = ([6, 1], [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], (0, 1))
C_H_AND_DISTANT_H = ([6, 1, 1], [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [3.0, 0.0, 0.0]], (0, 2))


@pytest.mark.parametrize(
    "atoms, energy, reason",
    [
        (C_H, "5e4*(r-0.25)^2", "stretched"),  # the C-H bond's minimum is at 2.5x its starting length
        (C_H_AND_DISTANT_H, "5e4*(r-0.02)^2", "collided"),  # pulls the non-bonded C and H to 0.2 Å
        (C_H, "sqrt(0.105-r)", "potential energy is nan"),  # NaN once the bond exceeds 1.05 Å
    ],
)
def test_each_criterion_fires_with_a_clear_reason(tmp_path, atoms, energy, reason):
    structure, system = _pair_system(*atoms, energy)
    settings = SimulationSettings(platform="Reference", threads=1, seed=1, temperature_K=300.0, timestep_fs=0.5)
    config = RunConfig(steps=2000, output_dir=tmp_path, stability_interval=5, progress=False)
    result = run_md(structure, system, settings, config)
    assert result.stability is not None and not result.stability.stable
    assert reason in result.stability.reason
    assert 0 <= result.stability.last_good_step < result.stability.failure_step <= 2000
    assert (tmp_path / "last_good_state.xml").exists() and (tmp_path / "last_good.pdb").exists()


def test_stable_run_reports_fraction_one(tmp_path):
    structure, system = _pair_system(*C_H, "2e5*(r-0.1)^2")
    settings = SimulationSettings(platform="Reference", threads=1, seed=1, temperature_K=300.0, timestep_fs=0.5)
    config = RunConfig(steps=303, output_dir=tmp_path, stability_interval=50, progress=False)
    result = run_md(structure, system, settings, config)
    assert result.stability.stable and result.stability.stable_fraction == 1.0
    assert result.stability.last_good_step == 303  # checked at the end too, not only every 50 steps
    assert 1.0 < result.stability.max_bond_stretch < 1.5
    assert json.loads((tmp_path / "stability.json").read_text())["stable_fraction"] == 1.0


def test_bonds_from_covalent_radii_match_the_topology(peptide_pdb):
    structure = read_structure(peptide_pdb)
    from_topology, source = covalent_bonds(structure)
    assert source == "topology" and len(from_topology) == 41
    bare = Structure(structure.atomic_numbers, structure.positions_angstrom, source="no topology")
    guessed, source = covalent_bonds(bare)
    assert source == "covalent radii"
    assert {tuple(b) for b in guessed.tolist()} == {tuple(b) for b in from_topology.tolist()}


def test_criteria_are_validated():
    with pytest.raises(ValueError, match="bond_stretch_factor must be larger than 1"):
        StabilityCriteria(bond_stretch_factor=0.9)
    with pytest.raises(ValueError, match="collision_factor must be between 0 and 1"):
        StabilityCriteria(collision_factor=1.5)
    with pytest.raises(ValueError, match="new_bond_factor must be larger than 1"):
        StabilityCriteria(new_bond_factor=0.9)


def test_bonds_across_a_periodic_boundary_use_the_minimum_image():
    box = np.diag([10.0, 10.0, 10.0])
    structure = Structure([6, 1], [[9.6, 5.0, 5.0], [0.5, 5.0, 5.0]], box_angstrom=box, source="periodic C-H")
    bonds, source = covalent_bonds(structure)
    assert source == "covalent radii" and bonds.tolist() == [[0, 1]]  # 0.9 Å through the boundary
    checker = StabilityChecker(structure)
    assert checker.reference_lengths[0] == pytest.approx(0.9)
    assert checker.check(np.array([[9.9, 5.0, 5.0], [0.9, 5.0, 5.0]]), 0.0) is None  # 1.0 Å: fine
    assert "stretched" in checker.check(np.array([[9.0, 5.0, 5.0], [0.9, 5.0, 5.0]]), 0.0)  # 1.9 Å


def test_analysis_protocol_says_when_its_run_fell_apart(tmp_path, peptide_pdb, peptide_random_model, capsys):
    from so3krates_openmm.cli.ramachandran import main as ramachandran_main

    code = ramachandran_main([
        "--structure", str(peptide_pdb), "--model", str(peptide_random_model), "--steps", "400",
        "--trajectory-interval", "400", "--stability-interval", "2", "--no-minimize", "--seed", "3",
        "--output", str(tmp_path / "rama"), *REFERENCE,
    ])
    assert code == 1
    assert "unstable before its first frame" in capsys.readouterr().err
    assert not json.loads((tmp_path / "rama" / "stability.json").read_text())["stable"]
