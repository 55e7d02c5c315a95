"""Committee disagreement, the uncertainty reporter inside OpenMM, and diverse frame selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openmm as mm
import pytest
from conftest import ETHANOL_WATER_NUMBERS, ETHANOL_WATER_POSITIONS, randomise, small_config
from openmm import app, unit

from so3krates_openmm import SO3krates
from so3krates_openmm.data.selection import select_diverse
from so3krates_openmm.md.uncertainty import (
    CommitteeReporter,
    UncertaintyLimitExceeded,
    read_disagreement_csv,
)
from so3krates_openmm.model.committee import Committee, disagreement_of


def _members(k: int = 3, scale: float = 0.3) -> list[SO3krates]:
    return [randomise(SO3krates(small_config()), seed=seed, scale=scale).eval() for seed in range(k)]


def test_disagreement_formulas_on_known_predictions() -> None:
    # Two members, one frame, two atoms: member forces differ only on atom 1 by (2, 0, 0).
    energies = np.array([[1.0], [3.0]])
    forces = np.zeros((2, 1, 2, 3))
    forces[0, 0, 1] = [1.0, 0.0, 0.0]
    forces[1, 0, 1] = [3.0, 0.0, 0.0]
    result = disagreement_of(energies, forces, "kcal/mol")
    assert result.energy_std == pytest.approx([1.0])
    assert result.force_std_max == pytest.approx([1.0])  # |F - mean| = 1 for both members
    assert result.force_std_mean == pytest.approx([0.5])
    assert result.force_unit == "kcal/mol/Angstrom"


def test_identical_members_agree_and_different_members_do_not() -> None:
    same = Committee([randomise(SO3krates(small_config()), seed=1).eval() for _ in range(3)])
    different = Committee(_members())
    frames = ETHANOL_WATER_POSITIONS[None] + np.random.default_rng(0).normal(scale=0.05, size=(4, 12, 3))
    quiet = same.disagreement(ETHANOL_WATER_NUMBERS, frames)
    loud = different.disagreement(ETHANOL_WATER_NUMBERS, frames)
    assert quiet.force_std_max.shape == (4,)
    assert np.all(quiet.force_std_max < 1e-10) and np.all(quiet.energy_std < 1e-10)
    assert np.all(loud.force_std_max > 1e-3) and np.all(loud.force_std_max >= loud.force_std_mean)


def test_batched_prediction_equals_frame_by_frame() -> None:
    committee = Committee(_members(2))
    frames = ETHANOL_WATER_POSITIONS[None] + np.random.default_rng(1).normal(scale=0.05, size=(3, 12, 3))
    energies, forces = committee.predict(ETHANOL_WATER_NUMBERS, frames)
    for b in range(3):
        single_e, single_f = committee.predict(ETHANOL_WATER_NUMBERS, frames[b])
        np.testing.assert_allclose(energies[:, b], single_e[:, 0], rtol=1e-12)
        np.testing.assert_allclose(forces[:, b], single_f[:, 0], rtol=1e-10, atol=1e-12)


def test_committee_rejects_members_of_other_elements() -> None:
    other = randomise(SO3krates(small_config(elements=(1, 6, 8))), seed=4)
    with pytest.raises(ValueError, match="elements"):
        Committee([_members(1)[0], other])
    with pytest.raises(ValueError, match="at least 2"):
        Committee(_members(1))


def _simulation() -> app.Simulation:
    """Ethanol + water in vacuum with a harmonic restraint to the start: a cheap, stable System."""
    system = mm.System()
    for z in ETHANOL_WATER_NUMBERS:
        system.addParticle(1.0 if z == 1 else 12.0)
    restraint = mm.CustomExternalForce("0.5*k*((x-x0)^2+(y-y0)^2+(z-z0)^2)")
    restraint.addGlobalParameter("k", 2000.0)
    for name in ("x0", "y0", "z0"):
        restraint.addPerParticleParameter(name)
    for index, position in enumerate(ETHANOL_WATER_POSITIONS / 10.0):
        restraint.addParticle(index, list(position))
    system.addForce(restraint)
    topology = app.Topology()
    residue = topology.addResidue("MOL", topology.addChain())
    for z in ETHANOL_WATER_NUMBERS:
        element = app.Element.getByAtomicNumber(z)
        topology.addAtom(element.symbol, element, residue)
    integrator = mm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.5 * unit.femtosecond)
    simulation = app.Simulation(topology, system, integrator, mm.Platform.getPlatformByName("Reference"))
    simulation.context.setPositions(ETHANOL_WATER_POSITIONS / 10.0)
    simulation.context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    return simulation


def test_reporter_writes_saves_and_stops(tmp_path: Path) -> None:
    committee = Committee(_members(3))
    # Calibrate thresholds on the start: save everything above half of it, stop above twice.
    start = float(committee.disagreement(ETHANOL_WATER_NUMBERS, ETHANOL_WATER_POSITIONS).force_std_max[0])
    simulation = _simulation()
    reporter = CommitteeReporter(committee, ETHANOL_WATER_NUMBERS, tmp_path / "u.csv", 5,
                                 save_threshold=0.5 * start, stop_threshold=None)
    simulation.reporters.append(reporter)
    simulation.step(20)
    record = reporter.checkpoint_record()
    assert record["rows"] == 4 and record["frames"] == 4
    assert reporter.close() == tmp_path / "u.png" and (tmp_path / "u.png").stat().st_size > 0
    columns = read_disagreement_csv(tmp_path / "u.csv")
    np.testing.assert_array_equal(columns["step"], [5, 10, 15, 20])
    assert np.all(columns["saved"] == 1)
    from ase.io import read

    frames = read(tmp_path / "u.xyz", index=":")
    assert len(frames) == 4 and frames[0].info["step"] == 5
    # The saved frame is the state's frame: its disagreement is the one in the CSV.
    again = committee.disagreement(ETHANOL_WATER_NUMBERS, frames[2].positions).force_std_max[0]
    assert again == pytest.approx(columns[next(c for c in columns if c.startswith("force_std_max"))][2], rel=1e-6)

    # A low stop threshold stops the run at the first report, after saving that frame.
    simulation = _simulation()
    reporter = CommitteeReporter(committee, ETHANOL_WATER_NUMBERS, tmp_path / "stop.csv", 5,
                                 save_threshold=0.1 * start, stop_threshold=0.2 * start)
    simulation.reporters.append(reporter)
    with pytest.raises(UncertaintyLimitExceeded, match="step 5") as stop:
        simulation.step(20)
    assert stop.value.step == 5 and simulation.currentStep == 5
    assert reporter.frames_saved == 1
    reporter.close()

    # Nothing is saved below the save threshold.
    simulation = _simulation()
    reporter = CommitteeReporter(committee, ETHANOL_WATER_NUMBERS, tmp_path / "none.csv", 5, save_threshold=1e6)
    simulation.reporters.append(reporter)
    simulation.step(10)
    assert reporter.checkpoint_record()["frames"] == 0
    reporter.close()


def test_reporter_resumes_without_duplicates(tmp_path: Path) -> None:
    committee = Committee(_members(2))
    simulation = _simulation()
    reporter = CommitteeReporter(committee, ETHANOL_WATER_NUMBERS, tmp_path / "u.csv", 5, save_threshold=0.0)
    simulation.reporters.append(reporter)
    simulation.step(10)
    record = reporter.checkpoint_record()  # a checkpoint at step 10
    simulation.step(10)  # records of steps 15 and 20, then a "kill"
    reporter.close()
    resumed = CommitteeReporter(committee, ETHANOL_WATER_NUMBERS, tmp_path / "u.csv", 5, save_threshold=0.0,
                                resume_step=10)
    assert resumed.checkpoint_record() == record
    simulation = _simulation()
    simulation.currentStep = 10
    simulation.reporters.append(resumed)
    simulation.step(5)
    resumed.close()
    np.testing.assert_array_equal(read_disagreement_csv(tmp_path / "u.csv")["step"], [5, 10, 15])
    from ase.io import read

    assert [frame.info["step"] for frame in read(tmp_path / "u.xyz", index=":")] == [5, 10, 15]


def test_reporter_rejects_stop_below_save() -> None:
    with pytest.raises(ValueError, match="below save_threshold"):
        CommitteeReporter(Committee(_members(2)), ETHANOL_WATER_NUMBERS, "x.csv", 5, save_threshold=2.0,
                          stop_threshold=1.0)


def test_selection_prefers_high_scores_and_skips_near_copies() -> None:
    rng = np.random.default_rng(3)
    base = ETHANOL_WATER_POSITIONS
    # Frames 0-4: one excursion (near copies, highest scores); 5-9: distinct, lower scores.
    excursion = base + rng.normal(scale=0.01, size=(5, 12, 3))
    distinct = base + rng.normal(scale=0.5, size=(5, 12, 3))
    positions = np.concatenate([excursion, distinct])
    scores = np.array([10, 9.5, 9, 8.5, 8, 5, 4, 3, 2, 0.1])
    chosen = select_diverse(scores, positions, 4, threshold=1.0, min_rmsd_angstrom=0.2)
    assert chosen[0] == 0 and set(chosen[1:]) <= {5, 6, 7, 8}
    assert len(chosen) == 4
    # Without the diversity rule the excursion fills the batch.
    np.testing.assert_array_equal(select_diverse(scores, positions, 4, min_rmsd_angstrom=0.0), [0, 1, 2, 3])
    # The threshold leaves out frame 9; a time-separation rule alone also spreads the batch.
    assert 9 not in select_diverse(scores, positions, 10, threshold=1.0, min_rmsd_angstrom=0.0)
    np.testing.assert_array_equal(select_diverse(scores, positions, 3, min_rmsd_angstrom=0.0, min_separation=2),
                                  [0, 3, 6])


def test_selection_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="NaN"):
        select_diverse([1.0, np.nan], np.zeros((2, 3, 3)), 1)
    with pytest.raises(ValueError, match="frames of positions"):
        select_diverse([1.0, 2.0], np.zeros((3, 3, 3)), 1)
