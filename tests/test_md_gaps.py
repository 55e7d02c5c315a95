"""Filling a gap in a run's records from a recomputation: the result equals the uninterrupted run."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from test_md_resume import assert_same_log

from so3krates_openmm.data.structures import read_structure
from so3krates_openmm.md.checkpoint import read_checkpoint
from so3krates_openmm.md.gaps import RecordMismatchError, fill_record_gaps
from so3krates_openmm.md.plotting import broken_at_gaps
from so3krates_openmm.md.runner import RunConfig, run_md
from so3krates_openmm.md.simulation import SimulationSettings, model_system
from so3krates_openmm.md.trajectory import dcd_layout, read_dcd

INTERVAL = 20


def run(structure, model, directory: Path, steps: int, *, resume: bool = False, seed: int = 11):
    settings = SimulationSettings(platform="Reference", threads=1, seed=seed, temperature_K=300.0, timestep_fs=0.5)
    config = RunConfig(steps=steps, output_dir=directory, log_interval=INTERVAL, trajectory_interval=INTERVAL,
                       checkpoint_interval=100, stability=None, progress=False, resume=resume,
                       identity={"model": str(model)})
    return run_md(structure, model_system(structure, model), settings, config)


def cut_records(directory: Path, first: int, last: int) -> None:
    """Remove the log rows and frames of steps ``first``..``last`` (as lost records), header kept consistent."""
    lines = (directory / "log.csv").read_text().splitlines()
    kept = [lines[0]] + [line for line in lines[1:] if not first <= int(line.split(",")[0]) <= last]
    (directory / "log.csv").write_text("\n".join(kept) + "\n")
    data = (directory / "trajectory.dcd").read_bytes()
    layout = dcd_layout(data)
    frames = [layout.frame_bytes(data, i) for i in range(layout.n_frames) if not first <= INTERVAL * (i + 1) <= last]
    header = bytearray(data[: layout.header_bytes])
    header[8:12] = struct.pack("<i", len(frames))
    (directory / "trajectory.dcd").write_bytes(bytes(header) + b"".join(frames))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, peptide_pdb, peptide_gentle_model):
    """An uninterrupted 400-step run and a recomputation of steps 100-300 from its checkpoint at 100."""
    base = tmp_path_factory.mktemp("gaps")
    structure = read_structure(peptide_pdb)
    run(structure, peptide_gentle_model, base / "reference", 400)
    early = base / "recomputed"
    run(structure, peptide_gentle_model, early, 100)
    assert read_checkpoint(early / "checkpoint.zip").step == 100
    result = run(structure, peptide_gentle_model, early, 300, resume=True)
    assert result.resumed_from_step == 100 and result.final_step == 300
    return base, structure, peptide_gentle_model


def holed_copy(base: Path, name: str) -> Path:
    directory = base / name
    shutil.copytree(base / "reference", directory)
    cut_records(directory, 140, 260)
    return directory


def test_filled_gap_equals_the_uninterrupted_run(runs):
    base, structure, model = runs
    holed = holed_copy(base, "holed")
    assert read_dcd(holed / "trajectory.dcd").n_frames == 20 - 7
    result = fill_record_gaps(holed, base / "recomputed")
    assert result.gaps == [(120, 280)] and result.log_rows_added == result.frames_added == 7
    assert result.recomputed_from_step == 100
    assert result.log_rows_compared == result.frames_compared == 3  # steps 120, 280, 300
    reference, filled = read_dcd(base / "reference" / "trajectory.dcd"), read_dcd(holed / "trajectory.dcd")
    np.testing.assert_array_equal(filled.positions_angstrom, reference.positions_angstrom)
    assert (holed / "trajectory.dcd").read_bytes() == (base / "reference" / "trajectory.dcd").read_bytes()
    assert_same_log(base / "reference" / "log.csv", holed / "log.csv")
    # The checkpoint knows the new sizes: resuming the finished run again keeps every record.
    again = run(structure, model, holed, 400, resume=True)
    assert again.start_step == again.final_step == 400
    assert (holed / "trajectory.dcd").read_bytes() == (base / "reference" / "trajectory.dcd").read_bytes()
    assert_same_log(base / "reference" / "log.csv", holed / "log.csv")


def test_a_recomputation_that_differs_or_falls_short_writes_nothing(runs, tmp_path):
    base, structure, model = runs
    holed = holed_copy(base, "holed_refused")
    before = {name: (holed / name).read_bytes() for name in ("log.csv", "trajectory.dcd", "checkpoint.zip")}

    tampered = tmp_path / "tampered"
    shutil.copytree(base / "recomputed", tampered)
    data = bytearray((tampered / "trajectory.dcd").read_bytes())
    layout = dcd_layout(bytes(data))
    data[layout.header_bytes + 5 * layout.frame_bytes_each + 10] ^= 1  # one bit of the frame at step 120
    (tampered / "trajectory.dcd").write_bytes(bytes(data))
    with pytest.raises(RecordMismatchError, match="trajectory frame at step 120 differs"):
        fill_record_gaps(holed, tampered)

    short = tmp_path / "short"
    run(structure, model, short, 100)
    run(structure, model, short, 260, resume=True)
    with pytest.raises(ValueError, match="no log row of its own at or after step 280.*--steps 280"):
        fill_record_gaps(holed, short)

    other_seed = tmp_path / "other_seed"
    run(structure, model, other_seed, 300, seed=12)
    with pytest.raises(ValueError, match="is not a recomputation.*seed: run 11, recomputation 12"):
        fill_record_gaps(holed, other_seed)

    with pytest.raises(ValueError, match="has no gap"):
        fill_record_gaps(base / "reference", base / "recomputed")
    in_progress = tmp_path / "in_progress"
    shutil.copytree(base / "recomputed", in_progress)
    (in_progress / "run.json").unlink()
    with pytest.raises(FileNotFoundError, match="still running or was killed"):
        fill_record_gaps(holed, in_progress)
    assert {name: (holed / name).read_bytes() for name in before} == before


def test_a_run_trajectory_with_a_gap_reads_with_the_right_frame_steps(runs):
    base, _, _ = runs
    holed = holed_copy(base, "holed_read")
    trajectory = read_dcd(holed / "trajectory.dcd")
    expected = [step for step in range(INTERVAL, 401, INTERVAL) if not 140 <= step <= 260]
    np.testing.assert_array_equal(trajectory.steps, expected)
    np.testing.assert_allclose(trajectory.times_ps, np.asarray(expected) * 0.5e-3, rtol=1e-6)
    assert trajectory.after(0.1).steps[0] == 280  # 0.1 ps after the first frame (10 fs), across the gap
    assert read_dcd(base / "reference" / "trajectory.dcd").frame_steps is None  # no gap: the header's steps


def test_plots_break_their_line_at_a_gap():
    times, values = broken_at_gaps(np.array([0.0, 1.0, 2.0, 9.0, 10.0]), np.arange(5.0))
    np.testing.assert_array_equal(np.isnan(times), [False, False, False, True, False, False])
    np.testing.assert_array_equal(values[~np.isnan(values)], np.arange(5.0))
