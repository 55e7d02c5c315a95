"""Long runs as closed segments (``--segment-ps``): continuity, resume after a kill, growth, the monitor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from so3krates_openmm.data.structures import read_structure
from so3krates_openmm.md.protocols import LangevinNVTOptions
from so3krates_openmm.md.recipes import run_langevin_nvt
from so3krates_openmm.md.runner import OutputExistsError
from so3krates_openmm.md.segments import (
    read_segmented_trajectory,
    segment_directory,
    segmented_stability,
    segmented_status,
)
from so3krates_openmm.md.stability import covalent_bonds


def quiet(message: str) -> None:
    pass


def options(pdb: Path, system_xml: Path, output: Path, **changes) -> LangevinNVTOptions:
    """amber14 in vacuum (fast, stable): 0.5 fs steps, a segment of 20 steps, a frame every 10 steps."""
    values = dict(structure=pdb, model=system_xml, output=output, steps=60, segment_ps=0.01, seed=5,
                  platform="Reference", threads=1, progress=False, log_interval=10, trajectory_interval=10,
                  checkpoint_interval=10, stability_interval=10)
    values.update(changes)
    return LangevinNVTOptions(**values)


def test_segments_are_closed_runs_continuing_each_other(tmp_path: Path, peptide_pdb: Path, peptide_amber_xml: Path):
    output = tmp_path / "run"
    result = run_langevin_nvt(options(peptide_pdb, peptide_amber_xml, output), log=quiet)
    assert result.stable and result.seed == 5
    status = segmented_status(output)
    assert [segment.closed for segment in status.segments] == [True, True, True]
    assert status.completed and status.simulated_steps == 60 and status.simulated_ps == pytest.approx(0.03)
    seeds = [json.loads((segment_directory(output, k) / "run.json").read_text())["seed"] for k in range(3)]
    assert seeds == [5, 6, 7]
    positions, times = read_segmented_trajectory(output)
    np.testing.assert_allclose(times, 0.005 * np.arange(1, 7))
    # segment 1 starts where segment 0 ended: its first frame is 10 steps (a few hundredths of an Å) away
    final_0 = read_structure(segment_directory(output, 0) / "final.pdb").positions_angstrom
    assert np.abs(positions[2] - final_0).max() < 0.2
    assert np.abs(positions[2] - positions[0]).max() > 1e-3

    with pytest.raises(OutputExistsError, match="--resume"):
        run_langevin_nvt(options(peptide_pdb, peptide_amber_xml, output), log=quiet)
    with pytest.raises(ValueError, match="parameters changed"):
        run_langevin_nvt(options(peptide_pdb, peptide_amber_xml, output, temperature=400.0, resume=True), log=quiet)


def test_a_killed_segment_resumes_and_a_longer_run_adds_segments(
    tmp_path: Path, peptide_pdb: Path, peptide_amber_xml: Path
):
    reference = tmp_path / "reference"
    run_langevin_nvt(options(peptide_pdb, peptide_amber_xml, reference), log=quiet)
    output = tmp_path / "run"
    run_langevin_nvt(options(peptide_pdb, peptide_amber_xml, output, steps=40), log=quiet)
    # a kill after the second segment's checkpoint at step 10: its run.json and later output are not written
    (segment_directory(output, 1) / "run.json").unlink()
    status = segmented_status(output)
    assert [segment.closed for segment in status.segments] == [True, False] and not status.finished
    # a session's share: one more closed segment (the open one), then stop
    run_langevin_nvt(options(peptide_pdb, peptide_amber_xml, output, resume=True, max_segments=1), log=quiet)
    status = segmented_status(output)
    assert [segment.closed for segment in status.segments] == [True, True] and not status.finished
    # the closed segments, copied with the input files to another place, continue there
    moved = tmp_path / "elsewhere"
    shutil.copytree(output, moved / "run")
    shutil.copy(peptide_pdb, moved / "start.pdb")
    shutil.copy(peptide_amber_xml, moved / "system.xml")
    run_langevin_nvt(options(moved / "start.pdb", moved / "system.xml", moved / "run", resume=True), log=quiet)
    assert segmented_status(moved / "run").completed
    run_langevin_nvt(options(peptide_pdb, peptide_amber_xml, output, resume=True), log=quiet)
    status = segmented_status(output)
    assert status.completed and len(status.segments) == 3
    positions, times = read_segmented_trajectory(output)
    expected, expected_times = read_segmented_trajectory(reference)
    np.testing.assert_array_equal(times, expected_times)
    np.testing.assert_allclose(positions, expected, atol=1e-4)  # Reference platform: the same dynamics


def test_the_monitor_stops_the_run_and_the_coefficient_sits_beside_its_verdict(
    tmp_path: Path, peptide_pdb: Path, peptide_amber_xml: Path
):
    output = tmp_path / "run"
    # a bond stretched by 0.2 % counts as broken: the monitor stops the run in the first segment
    result = run_langevin_nvt(options(peptide_pdb, peptide_amber_xml, output, bond_stretch_factor=1.002),
                              log=quiet)
    assert not result.stable
    status = segmented_status(output)
    assert len(status.segments) == 1 and status.finished and not status.completed
    assert "stretched" in status.unstable.reason and status.stable_fraction < 1 / 3
    structure = read_structure(peptide_pdb)
    bonds, _ = covalent_bonds(structure)
    equilibrium = np.linalg.norm(structure.positions_angstrom[bonds[:, 1]] - structure.positions_angstrom[bonds[:, 0]],
                                 axis=1)
    verdict = segmented_stability(output, bonds, equilibrium)
    positions, times = read_segmented_trajectory(output)
    # no bond moved by 0.5 Å: Fu et al.'s coefficient is the time of the last frame over the 30 fs asked for
    assert verdict["finished"] and verdict["coefficient"] == pytest.approx(times[-1] / 0.03)
    assert verdict["coefficient"] < 1.0 and verdict["unstable_reason"] == status.unstable.reason
    # with a 0.001 Å tolerance the first frame already fails: coefficient 0
    assert segmented_stability(output, bonds, equilibrium, max_deviation_angstrom=1e-3)["coefficient"] == 0.0
