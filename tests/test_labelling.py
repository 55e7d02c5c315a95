"""`so3krates-data label`: xTB labels for the frames of an existing trajectory, resume, selection and errors."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from so3krates_openmm.data import labelling
from so3krates_openmm.data.dataset import DataError
from so3krates_openmm.data.formats import load_npz
from so3krates_openmm.data.labelling import (
    LabelSettings,
    TrajectoryFrames,
    label_frames,
    read_frames,
)
from so3krates_openmm.data.reference import partial_path_for
from so3krates_openmm.units import energy_conversion

WATER_NUMBERS = [8, 1, 1]
WATER_POSITIONS = np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]])
WATER_XYZ = "3\nwater\nO 0 0 0.1173\nH 0 0.7572 -0.4692\nH 0 -0.7572 -0.4692\n"
N_FRAMES = 7


def quiet(message: str) -> None:
    pass


def water_frames(n: int = N_FRAMES, seed: int = 0) -> np.ndarray:
    """``n`` distinct distorted waters (Å)."""
    rng = np.random.default_rng(seed)
    return WATER_POSITIONS + rng.normal(scale=0.05, size=(n, 3, 3))


def write_dcd(path: Path, positions: np.ndarray, interval_steps: int = 50, dt_ps: float = 0.001) -> Path:
    """A DCD written by OpenMM's DCDFile (frame every ``interval_steps`` steps of ``dt_ps``)."""
    from openmm import app, unit

    topology = app.Topology()
    residue = topology.addResidue("HOH", topology.addChain())
    for z in WATER_NUMBERS:
        element = app.Element.getByAtomicNumber(z)
        topology.addAtom(element.symbol, element, residue)
    with open(path, "wb") as handle:
        dcd = app.DCDFile(handle, topology, dt_ps * unit.picosecond, interval_steps, interval_steps)
        for frame in positions:
            dcd.writeModel(frame * unit.angstrom)
    return path


@pytest.fixture
def water_dcd(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "water.xyz").write_text(WATER_XYZ)
    return write_dcd(tmp_path / "traj.dcd", water_frames()), tmp_path / "water.xyz"


def xtb(positions: np.ndarray, unit: str = "kcal/mol") -> tuple[float, np.ndarray]:
    """GFN2-xTB energy and forces from a new tblite calculator (the generator's set-up), in ``unit``."""
    from ase import Atoms
    from tblite.ase import TBLite

    atoms = Atoms(numbers=WATER_NUMBERS, positions=positions)
    atoms.calc = TBLite(method="GFN2-xTB", charge=0, multiplicity=1, electronic_temperature=300.0, accuracy=1.0,
                        verbosity=0)
    factor = energy_conversion("eV", unit)
    return atoms.get_potential_energy() * factor, atoms.get_forces() * factor


def test_labels_are_the_calculator_on_the_selected_dcd_frames(tmp_path, water_dcd):
    dcd, structure = water_dcd
    frames = read_frames(dcd, structure)
    assert frames.n_frames == N_FRAMES and frames.atomic_numbers.tolist() == WATER_NUMBERS
    np.testing.assert_allclose(frames.positions, water_frames(), atol=1e-5)  # DCD stores float32
    np.testing.assert_allclose(frames.times_ps, 0.05 * np.arange(1, N_FRAMES + 1), rtol=1e-6)

    output = tmp_path / "labelled.npz"
    data = label_frames(frames, output, LabelSettings(skip=1, stride=2), progress=False, log=quiet)
    assert not partial_path_for(output).exists()
    loaded = load_npz(output)
    assert loaded.energy_unit == "kcal/mol" and "GFN2-xTB" in loaded.metadata["theory"]
    assert loaded.metadata["frame_indices"] == [1, 3, 5]
    assert loaded.metadata["frame_times_ps"] == pytest.approx([0.1, 0.2, 0.3], rel=1e-6)
    assert loaded.metadata["settings"]["stride"] == 2 and loaded.metadata["settings"]["skip"] == 1
    np.testing.assert_array_equal(loaded.energies, data.energies)
    for k, index in enumerate([1, 3, 5]):
        energy, forces = xtb(frames.positions[index])
        np.testing.assert_array_equal(loaded[k].positions, frames.positions[index])
        assert loaded[k].energy == pytest.approx(energy, rel=1e-12)
        np.testing.assert_allclose(loaded[k].forces, forces, rtol=0, atol=1e-9)
        assert np.abs(forces).max() > 1.0

    # --skip-ps drops the frames less than that after the first one (DCD frame times); eV on request (eV/Å).
    in_ev = label_frames(frames, tmp_path / "ev.npz", LabelSettings(skip_ps=0.25, max_frames=2), energy_unit="eV",
                         progress=False, log=quiet)
    assert in_ev.metadata["frame_indices"] == [5, 6] and in_ev.energy_unit == "eV"
    energy, forces = xtb(frames.positions[5], "eV")
    assert in_ev[0].energy == pytest.approx(energy, rel=1e-12)
    np.testing.assert_allclose(in_ev[0].forces, forces, rtol=0, atol=1e-10)


def test_extended_xyz_and_npz_inputs(tmp_path):
    from ase import Atoms
    from ase.io import write

    positions = water_frames(3)
    write(tmp_path / "traj.xyz", [Atoms(numbers=WATER_NUMBERS, positions=p) for p in positions], format="extxyz")
    np.savez(tmp_path / "traj.npz", R=positions, z=np.array(WATER_NUMBERS))
    np.savez(tmp_path / "positions_only.npz", R=positions / 10.0, r_unit=np.array("nm"))
    (tmp_path / "water.xyz").write_text(WATER_XYZ)
    for frames in (read_frames(tmp_path / "traj.xyz"), read_frames(tmp_path / "traj.npz"),
                   read_frames(tmp_path / "positions_only.npz", tmp_path / "water.xyz")):
        assert frames.atomic_numbers.tolist() == WATER_NUMBERS and frames.times_ps is None
        np.testing.assert_allclose(frames.positions, positions, rtol=0, atol=1e-7)  # extxyz: 8 decimals
    frames = read_frames(tmp_path / "traj.xyz")
    data = label_frames(frames, tmp_path / "out.npz", LabelSettings(max_frames=1), progress=False, log=quiet)
    assert len(data) == 1 and data[0].energy == pytest.approx(xtb(frames.positions[0])[0], rel=1e-12)


def test_multi_model_pdb_input(tmp_path):
    """A multi-model PDB as the minima searches write it (CONECT records after the last model, which ASE would
    read as one more, empty frame)."""
    from openmm import app, unit

    from so3krates_openmm.data.builders import build_water

    positions = water_frames(3)
    topology = build_water(1).topology
    with open(tmp_path / "minima.pdb", "w") as handle:
        app.PDBFile.writeHeader(topology, handle)
        for model, x in enumerate(positions, start=1):
            app.PDBFile.writeModel(topology, x * unit.angstrom, handle, modelIndex=model)
        handle.write("CONECT    1    2    3\n")  # as written for the peptide's caps
        app.PDBFile.writeFooter(topology, handle)
    frames = read_frames(tmp_path / "minima.pdb")
    assert frames.atomic_numbers.tolist() == WATER_NUMBERS and frames.positions.shape == (3, 3, 3)
    np.testing.assert_allclose(frames.positions, positions, rtol=0, atol=6e-4)  # PDB: 3 decimals


def _ctrl_c() -> None:
    raise KeyboardInterrupt


def _sigterm() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def _instrument(monkeypatch, stop_at: int | None = None, interrupt=_ctrl_c) -> dict:
    """Count the xTB calculations; ``interrupt`` (Ctrl-C or SIGTERM) at the ``stop_at``-th one."""
    make = labelling.make_calculator
    counter = {"calls": 0}

    def instrumented(settings):
        calculator = make(settings)
        original = calculator.calculate

        def calculate(*args, **kwargs):
            counter["calls"] += 1
            if counter["calls"] == stop_at:
                interrupt()
            return original(*args, **kwargs)

        calculator.calculate = calculate
        return calculator

    monkeypatch.setattr(labelling, "make_calculator", instrumented)
    return counter


def _same_files(a: Path, b: Path) -> None:
    with np.load(a) as first, np.load(b) as second:
        assert sorted(first.files) == sorted(second.files)
        for key in ("R", "E", "F", "z", "e_unit", "theory", "name"):
            np.testing.assert_array_equal(first[key], second[key], err_msg=f"{key} differs after resume")
    meta_a, meta_b = load_npz(a).metadata, load_npz(b).metadata
    for key in ("settings", "frame_indices", "frame_times_ps", "theory", "origin"):
        assert meta_a[key] == meta_b[key], key


@pytest.mark.parametrize("interrupt", [_ctrl_c, _sigterm], ids=["ctrl_c", "sigterm"])
def test_interrupted_runs_resume_to_the_uninterrupted_file(tmp_path, water_dcd, monkeypatch, interrupt):
    dcd, structure = water_dcd
    frames = read_frames(dcd, structure)
    settings = LabelSettings(checkpoint_every=2, float32=True)
    full = tmp_path / "full.npz"
    label_frames(frames, full, settings, progress=False, log=quiet)

    # stopped at a checkpoint, then the same call continues
    cut = tmp_path / "cut.npz"
    assert label_frames(frames, cut, settings, stop_after_frames=1, progress=False, log=quiet) is None
    assert len(load_npz(partial_path_for(cut))) == 2
    messages = []
    assert len(label_frames(frames, cut, settings, progress=False, log=messages.append)) == N_FRAMES
    assert any("resuming" in m and "2 of 7" in m for m in messages)
    assert not partial_path_for(cut).exists()
    _same_files(full, cut)

    # Ctrl-C or SIGTERM in the middle of frame 4 (0-based 3): frames 0-2 are saved, none is redone
    ctrl_c = tmp_path / "ctrl_c.npz"
    with monkeypatch.context() as patch:
        _instrument(patch, stop_at=4, interrupt=interrupt)
        assert label_frames(frames, ctrl_c, LabelSettings(checkpoint_every=100, float32=True), progress=False,
                            log=messages.append) is None
    assert "interrupted: 3 of 7 frames" in messages[-1]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the SIGTERM handler is restored"
    assert len(load_npz(partial_path_for(ctrl_c))) == 3
    with monkeypatch.context() as patch:
        counter = _instrument(patch)
        label_frames(frames, ctrl_c, settings, progress=False, log=quiet)  # another checkpoint_every is fine
    assert counter["calls"] == N_FRAMES - 3, "only the frames not yet saved are computed"
    _same_files(full, ctrl_c)

    # done: the same command does nothing; other settings are refused naming the setting
    assert len(label_frames(frames, full, settings, progress=False, log=messages.append)) == N_FRAMES
    assert "nothing to do" in messages[-1]
    with pytest.raises(DataError, match=r"stride: 1 \(existing file\) != 2"):
        label_frames(frames, full, LabelSettings(stride=2, float32=True), progress=False, log=quiet)


def test_resume_with_other_settings_or_frames_is_refused(tmp_path, water_dcd):
    dcd, structure = water_dcd
    frames = read_frames(dcd, structure)
    output = tmp_path / "out.npz"
    label_frames(frames, output, LabelSettings(checkpoint_every=2), stop_after_frames=2, progress=False, log=quiet)
    with pytest.raises(DataError, match=r"charge: 0 \(partial file\) != 1 \(this run\)"):
        label_frames(frames, output, LabelSettings(checkpoint_every=2, charge=1, multiplicity=2), progress=False,
                     log=quiet)
    with pytest.raises(DataError, match=r"energy_unit: 'kcal/mol' \(partial file\) != 'eV'"):
        label_frames(frames, output, LabelSettings(checkpoint_every=2), energy_unit="eV", progress=False, log=quiet)
    other = TrajectoryFrames(frames.atomic_numbers, frames.positions + 0.01, frames.times_ps, frames.source)
    with pytest.raises(DataError, match="frames_sha256"):
        label_frames(other, output, LabelSettings(checkpoint_every=2), progress=False, log=quiet)
    assert len(load_npz(partial_path_for(output))) == 2, "a refused run leaves the partial file alone"
    data = label_frames(other, output, LabelSettings(max_frames=1), restart=True, progress=False, log=quiet)
    assert len(data) == 1 and not partial_path_for(output).exists()


def test_bad_input_is_reported(tmp_path, water_dcd):
    dcd, structure = water_dcd
    with pytest.raises(FileNotFoundError, match="missing.dcd"):
        read_frames(tmp_path / "missing.dcd", structure)
    with pytest.raises(DataError, match="holds no elements; give --structure"):
        read_frames(dcd)
    (tmp_path / "four.xyz").write_text(WATER_XYZ.replace("3\n", "4\n", 1) + "H 1 1 1\n")
    with pytest.raises(DataError, match="has 3 atoms per frame but .*four.xyz has 4"):
        read_frames(dcd, tmp_path / "four.xyz")
    (tmp_path / "hoo.xyz").write_text(WATER_XYZ.replace("H 0 -", "O 0 -"))
    np.savez(tmp_path / "water.npz", R=water_frames(2), z=np.array(WATER_NUMBERS))
    with pytest.raises(DataError, match="elements differ from those of .*hoo.xyz"):
        read_frames(tmp_path / "water.npz", tmp_path / "hoo.xyz")
    np.savez(tmp_path / "ghost.npz", R=water_frames(2), z=np.array([8, 1, 0]))
    with pytest.raises(DataError, match="unknown element"):
        read_frames(tmp_path / "ghost.npz")
    np.savez(tmp_path / "heavy.npz", R=water_frames(2), z=np.array([8, 1, 92]))
    with pytest.raises(DataError, match="Z=92 is beyond Rn"):
        read_frames(tmp_path / "heavy.npz")
    nan = water_frames(4)
    nan[2, 1, 0] = np.nan
    np.savez(tmp_path / "nan.npz", R=nan, z=np.array(WATER_NUMBERS))
    frames = read_frames(tmp_path / "nan.npz")
    with pytest.raises(DataError, match="frame 2 has NaN or infinite positions"):
        label_frames(frames, tmp_path / "out.npz", progress=False, log=quiet)
    assert len(label_frames(frames, tmp_path / "out.npz", LabelSettings(max_frames=2), progress=False, log=quiet)) == 2
    crushed = water_frames(4)
    crushed[3, 1] = crushed[3, 0]  # an H on the O: xTB refuses
    np.savez(tmp_path / "crushed.npz", R=crushed, z=np.array(WATER_NUMBERS))
    with pytest.raises(DataError, match="GFN2-xTB failed on frame 3 .*the 3 frames before it are in"):
        label_frames(read_frames(tmp_path / "crushed.npz"), tmp_path / "crushed_out.npz", progress=False, log=quiet)
    assert len(load_npz(tmp_path / "crushed_out.partial.npz")) == 3
    with pytest.raises(DataError, match="frame times are unknown"):
        label_frames(frames, tmp_path / "x.npz", LabelSettings(skip_ps=1.0), progress=False, log=quiet)
    with pytest.raises(DataError, match="no frame to label"):
        label_frames(frames, tmp_path / "x.npz", LabelSettings(skip=10), progress=False, log=quiet)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        LabelSettings(stride=0)


def test_command_line(tmp_path, water_dcd, capsys):
    from so3krates_openmm.cli.data import main as data_main

    dcd, structure = water_dcd
    output = tmp_path / "cli.npz"
    arguments = ["label", str(dcd), "--structure", str(structure), "--stride", "3", "-o", str(output),
                 "--no-progress"]
    assert data_main(arguments) == 0
    assert load_npz(output).metadata["frame_indices"] == [0, 3, 6]
    assert data_main(["merge", str(output), str(output), "-o", str(tmp_path / "merged.npz")]) == 0
    assert len(load_npz(tmp_path / "merged.npz")) == 6
    capsys.readouterr()
    assert data_main(["info", str(tmp_path / "merged.npz")]) == 0
    assert f"part cli.npz: 3 frames, labelled from {dcd}" in capsys.readouterr().out
    for wrong, message in (
        (["label", str(tmp_path / "nope.dcd"), "--structure", str(structure), "-o", str(output)], "does not exist"),
        (["label", str(dcd), "-o", str(tmp_path / "y.npz")], "give --structure"),
        (arguments[:5] + ["2"] + arguments[6:], "stride: 3 (existing file) != 2 (this run)"),
    ):
        assert data_main(wrong) == 2
        error = capsys.readouterr().err
        assert error.startswith("so3krates-data: error: ") and message in error and error.count("\n") == 1


def test_labels_on_two_dask_workers_resume_after_a_kill_and_equal_the_serial_run(tmp_path, water_dcd):
    import json

    from so3krates_openmm.cli.data import main as data_main
    from so3krates_openmm.data.labelling import label_journal_path

    dcd, structure = water_dcd
    frames = read_frames(dcd, structure)
    settings = LabelSettings(checkpoint_every=2)
    serial = tmp_path / "serial.npz"
    label_frames(frames, serial, settings, progress=False, log=quiet)
    # An earlier run in this process stopped after 2 frames (partial file); the rest goes to 2 workers.
    tasks = tmp_path / "tasks.npz"
    assert label_frames(frames, tasks, settings, stop_after_frames=1, progress=False, log=quiet) is None
    assert len(load_npz(partial_path_for(tasks))) == 2
    journal = label_journal_path(tasks)
    assert len(label_frames(frames, tasks, settings, progress=False, log=quiet, workers=2)) == N_FRAMES
    _same_files(serial, tasks)
    assert not journal.exists() and not partial_path_for(tasks).exists()

    # Killed while labelling with workers: the journal keeps 3 frames (and half of a 4th line); the same
    # command on the command line labels only the 4 others and writes the file of the serial run.
    cli = tmp_path / "cli.npz"
    arguments = ["label", str(dcd), "--structure", str(structure), "-o", str(cli), "--checkpoint-every", "2",
                 "--no-progress", "--workers", "2"]
    assert data_main(arguments) == 0
    _same_files(serial, cli)
    header = {"format": "so3krates-data label tasks/1", "settings": load_npz(cli).metadata["settings"]}
    lines = [json.dumps({"header": header})]
    for index in range(3):
        energy, forces = xtb(frames.positions[index], unit="eV")
        energy += 1.0 if index == 0 else 0.0  # marks frame 0: a frame redone would lose the mark
        lines.append(json.dumps({"key": str(index), "result": {"energy_eV": float(energy),
                                 "forces_eV_per_angstrom": forces.tolist(), "seconds": 0.0}}))
    cli.unlink()
    journal = label_journal_path(cli)
    journal.write_text("\n".join(lines) + '\n{"key": "3", "res')
    assert data_main(arguments) == 0
    assert not journal.exists()
    resumed, expected = load_npz(cli), load_npz(serial)
    np.testing.assert_array_equal(resumed.stacked()[3], expected.stacked()[3])
    np.testing.assert_allclose(resumed.energies - expected.energies,
                               [energy_conversion("eV", "kcal/mol")] + [0.0] * (N_FRAMES - 1), atol=1e-9)
    # A journal of other settings is refused with the setting named; stop_after_frames needs the serial labeller.
    label_journal_path(cli).write_text("\n".join(lines) + "\n")
    cli.unlink()
    with pytest.raises(DataError, match="stride"):
        label_frames(frames, cli, LabelSettings(stride=2), progress=False, log=quiet, workers=2)
    with pytest.raises(ValueError, match="stop_after_frames works with the labeller in this process only"):
        label_frames(frames, cli, settings, stop_after_frames=1, progress=False, log=quiet, workers=2)
