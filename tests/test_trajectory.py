"""Reading DCD files as runs leave them: lost records (a gap in the log), a killed writer, no frame yet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from openmm import app, unit

from so3krates_openmm.data.structures import Structure
from so3krates_openmm.data.trajectory import read_dcd
from so3krates_openmm.md.plotting import broken_at_gaps

INTERVAL = 20
TIMESTEP_PS = 0.0005
N_ATOMS = 4


def positions_of(step: int) -> np.ndarray:
    """Positions (Å) that tell the frame of each step apart."""
    return np.arange(3 * N_ATOMS, dtype=float).reshape(N_ATOMS, 3) + 0.01 * step


def write_run(directory: Path, steps: list[int], box_nm: float | None = None) -> Path:
    """A run's ``trajectory.dcd`` and ``log.csv`` with records at ``steps`` only (OpenMM's writer)."""
    directory.mkdir(parents=True, exist_ok=True)
    topology = Structure([6] * N_ATOMS, positions_of(0)).openmm_topology()
    box = None if box_nm is None else np.eye(3) * box_nm * unit.nanometer
    topology.setPeriodicBoxVectors(box)
    with open(directory / "trajectory.dcd", "wb") as handle:
        dcd = app.DCDFile(handle, topology, TIMESTEP_PS * unit.picosecond, firstStep=INTERVAL, interval=INTERVAL)
        for step in steps:
            dcd.writeModel(positions_of(step) * unit.angstrom, periodicBoxVectors=box)
    rows = [f"{step},{step * TIMESTEP_PS},{-float(step)}" for step in steps]
    (directory / "log.csv").write_text("\n".join(["step,time_ps,potential_energy_kJ/mol", *rows]) + "\n")
    return directory / "trajectory.dcd"


def test_a_run_trajectory_with_a_gap_reads_with_the_right_frame_steps(tmp_path):
    all_steps = list(range(INTERVAL, 401, INTERVAL))
    kept = [step for step in all_steps if not 140 <= step <= 260]
    trajectory = read_dcd(write_run(tmp_path / "holed", kept))
    np.testing.assert_array_equal(trajectory.steps, kept)
    np.testing.assert_allclose(trajectory.times_ps, np.asarray(kept) * TIMESTEP_PS, rtol=1e-6)
    np.testing.assert_allclose(trajectory.positions_angstrom, [positions_of(step) for step in kept], atol=1e-5)
    assert trajectory.after(0.1).steps[0] == 280  # 0.1 ps after the first frame (10 fs), across the gap
    whole = read_dcd(write_run(tmp_path / "whole", all_steps))
    assert whole.frame_steps is None  # no gap: the header's steps
    np.testing.assert_array_equal(whole.steps, all_steps)


def test_a_killed_writer_and_a_trajectory_with_no_frame_yet(tmp_path):
    path = write_run(tmp_path / "run", [20, 40, 60], box_nm=2.5)
    complete = read_dcd(path)
    assert complete.n_frames == 3 and complete.first_step == 20 and complete.steps_between_frames == INTERVAL
    np.testing.assert_allclose(complete.unit_cells, [[25.0, 25.0, 25.0, 90.0, 90.0, 90.0]] * 3, rtol=1e-6)
    assert complete.frame_interval_ps == pytest.approx(INTERVAL * TIMESTEP_PS, rel=1e-6)
    data = path.read_bytes()
    frame_bytes = (len(data) - len(read_header_only(tmp_path))) // 3
    path.write_bytes(data[: -frame_bytes // 2])  # half of the last frame written
    cut = read_dcd(path)
    assert cut.n_frames == 2
    np.testing.assert_array_equal(cut.positions_angstrom, complete.positions_angstrom[:2])

    empty = read_dcd(write_run(tmp_path / "empty", []))
    assert empty.n_frames == 0 and empty.positions_angstrom.shape == (0, N_ATOMS, 3)

    (tmp_path / "junk.dcd").write_text("not a trajectory")
    with pytest.raises(ValueError, match="not a DCD file"):
        read_dcd(tmp_path / "junk.dcd")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_dcd(tmp_path / "missing.dcd")


def read_header_only(tmp_path: Path) -> bytes:
    """The bytes of a periodic DCD with no frame (its header)."""
    return write_run(tmp_path / "header_only", [], box_nm=2.5).read_bytes()


def test_reading_prints_nothing_to_standard_output(tmp_path, capfd):
    read_dcd(write_run(tmp_path / "run", [20, 40]))
    assert capfd.readouterr().out == ""


def test_plots_break_their_line_at_a_gap():
    times, values = broken_at_gaps(np.array([0.0, 1.0, 2.0, 9.0, 10.0]), np.arange(5.0))
    np.testing.assert_array_equal(np.isnan(times), [False, False, False, True, False, False])
    np.testing.assert_array_equal(values[~np.isnan(values)], np.arange(5.0))


def test_thinned_trajectory_fits_the_size_limit(tmp_path: Path):
    import mdtraj
    from openmm import app

    from so3krates_openmm.data.trajectory import save_thinned_trajectory

    topology = app.Topology()
    residue = topology.addResidue("MOL", topology.addChain())
    for index in range(30):
        topology.addAtom(f"C{index}", app.Element.getBySymbol("C"), residue)
    positions = np.random.default_rng(0).normal(scale=5.0, size=(400, 30, 3))
    times = 0.5 * np.arange(1, 401)
    path, stride = save_thinned_trajectory(topology, positions, times, tmp_path / "thin.dcd", max_bytes=150_000)
    assert path.stat().st_size <= 150_000 and stride == 2  # 400 frames of 30 x 3 float32 and record marks: 154 kB
    back = mdtraj.load(str(path), top=str(tmp_path / "thin_topology.pdb"))
    np.testing.assert_allclose(back.xyz * 10.0, positions[::2], atol=1e-3)
