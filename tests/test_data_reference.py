"""GFN2-xTB reference data generator: labels, schedule, resume after kill -9, settings checks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from so3krates_openmm.data.dataset import DataError
from so3krates_openmm.data.formats import load_dataset, load_npz
from so3krates_openmm.data.reference import (
    SamplingSettings,
    generate_reference_data,
    make_calculator,
    partial_path_for,
    read_partial,
)
from so3krates_openmm.data.structures import Structure
from so3krates_openmm.units import energy_conversion

REPOSITORY = Path(__file__).resolve().parents[1]
WATER = Structure([8, 1, 1], [[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]], source="water")
WATER_XYZ = "3\nwater\nO 0 0 0.1173\nH 0 0.7572 -0.4692\nH 0 -0.7572 -0.4692\n"


def small_settings(**changes) -> SamplingSettings:
    values = dict(temperatures_K=[300.0, 600.0], frames_per_temperature=4, stride=3, equilibration_steps=4,
                  seed=11, checkpoint_every=3)
    values.update(changes)
    return SamplingSettings(**values)


def test_frames_carry_gfn2_labels_in_kcal_per_mol(tmp_path):
    settings = small_settings()
    output = tmp_path / "water.npz"
    data = generate_reference_data(WATER, output, settings, progress=False, log=lambda m: None)
    assert len(data) == 8 and data.energy_unit == "kcal/mol"
    assert not partial_path_for(output).exists(), "the partial file is removed once the run is complete"
    loaded = load_npz(output)
    np.testing.assert_array_equal(loaded.energies, data.energies)
    assert "GFN2-xTB" in loaded.metadata["theory"]
    recorded = loaded.metadata["settings"]
    assert recorded["temperatures_K"] == [300.0, 600.0] and recorded["seed"] == 11 and recorded["stride"] == 3
    assert loaded.metadata["timing"]["md_steps"] == settings.total_steps == 2 * (4 + 4 * 3)
    # One xTB call per step, plus a from-scratch recomputation at the checkpoint frames 3 and 6.
    assert loaded.metadata["timing"]["force_calls"] == settings.total_steps + 2

    # Every label is GFN2-xTB evaluated on the frame's own positions (eV -> kcal/mol).
    from ase import Atoms

    to_kcal = energy_conversion("eV", "kcal/mol")
    for index in (0, 2, 5, 7):
        atoms = Atoms(numbers=[8, 1, 1], positions=data[index].positions)
        atoms.calc = make_calculator(settings)
        energy, forces = atoms.get_potential_energy() * to_kcal, atoms.get_forces() * to_kcal
        if index in (2, 5):  # checkpoint frames: computed from scratch, like this fresh calculator
            assert data[index].energy == energy
            np.testing.assert_array_equal(data[index].forces, forces)
        else:  # SCF started from the previous step: equal to the SCF convergence (~1e-4 kcal/(mol Å))
            assert data[index].energy == pytest.approx(energy, rel=1e-9)
            np.testing.assert_allclose(data[index].forces, forces, rtol=0, atol=2e-3)
            assert np.abs(forces).max() > 1.0
    # Frames are distinct MD configurations, not copies.
    assert np.all(np.abs(np.diff(data.energies)) > 0)
    assert np.abs(data[1].positions - data[0].positions).max() > 1e-3

    # The same command again finds the finished file and does nothing; other settings are refused.
    again = generate_reference_data(WATER, output, settings, progress=False, log=lambda m: None)
    np.testing.assert_array_equal(again.energies, data.energies)
    with pytest.raises(DataError, match="already exists"):
        generate_reference_data(WATER, output, small_settings(seed=12), progress=False, log=lambda m: None)


def test_progress_bar_goes_to_stderr(tmp_path, capsys):
    output = tmp_path / "water.npz"
    assert generate_reference_data(WATER, output, small_settings(), stop_after_frames=1, progress=True,
                                   log=lambda m: None) is None
    assert "frame" in capsys.readouterr().err


@pytest.mark.parametrize("scf_guess", ["previous", "fresh"])
def test_stopped_run_resumes_to_the_same_frames_and_checks_settings(tmp_path, scf_guess):
    settings = small_settings(scf_guess=scf_guess)
    full = generate_reference_data(WATER, tmp_path / "full.npz", settings, progress=False, log=lambda m: None)

    output = tmp_path / "parts.npz"
    assert generate_reference_data(WATER, output, settings, stop_after_frames=3, progress=False,
                                   log=lambda m: None) is None
    partial = partial_path_for(output)
    assert partial.exists() and not output.exists()
    assert len(load_npz(partial)) == 3, "the partial file is an MD22-layout data set of the frames so far"
    _, _, state, _ = read_partial(partial)
    assert (state.temperature_index, state.step_in_temperature) == (0, 4 + 3 * 3)

    with pytest.raises(DataError, match="seed: 11 .partial file. != 12"):
        generate_reference_data(WATER, output, small_settings(seed=12, scf_guess=scf_guess), progress=False,
                                log=lambda m: None)
    with pytest.raises(DataError, match="resume it"):
        generate_reference_data(WATER, output, settings, resume=False, progress=False, log=lambda m: None)
    moved = Structure(WATER.atomic_numbers, WATER.positions_angstrom + 0.01, source="moved")
    with pytest.raises(DataError, match="structure_sha256"):
        generate_reference_data(moved, output, settings, progress=False, log=lambda m: None)

    # Continue across the temperature change in two more pieces.
    assert generate_reference_data(WATER, output, settings, stop_after_frames=3, progress=False,
                                   log=lambda m: None) is None
    resumed = generate_reference_data(WATER, output, settings, resume=True, progress=False, log=lambda m: None)
    assert len(resumed) == len(full) == 8
    np.testing.assert_allclose(resumed.positions_flat, full.positions_flat, rtol=0, atol=1e-12)
    np.testing.assert_allclose(resumed.energies, full.energies, rtol=1e-13)
    np.testing.assert_allclose(resumed.forces_flat, full.forces_flat, rtol=0, atol=1e-9)
    assert resumed.metadata["timing"]["sessions"] == 3
    with pytest.raises(DataError, match="nothing to resume"):
        generate_reference_data(WATER, tmp_path / "none.npz", settings, resume=True, progress=False)


def test_extended_xyz_output_and_restart(tmp_path):
    settings = small_settings(temperatures_K=[400.0], frames_per_temperature=5, checkpoint_every=2)
    output = tmp_path / "water.xyz"
    generate_reference_data(WATER, output, settings, stop_after_frames=1, progress=False, log=lambda m: None)
    assert len(load_npz(partial_path_for(output))) == 2, "stops at the first checkpoint after 1 new frame"
    data = generate_reference_data(WATER, output, settings, restart=True, progress=False, log=lambda m: None)
    back = load_dataset(output)
    assert back.energy_unit == "eV" and len(back) == 5
    np.testing.assert_allclose(back.energies, data.energies, rtol=1e-12)


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match="temperatures_K must be positive"):
        SamplingSettings(temperatures_K=[-5.0], frames_per_temperature=2)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        SamplingSettings(temperatures_K=[300.0], frames_per_temperature=2, stride=0)
    with pytest.raises(ValueError, match="timestep_fs"):
        SamplingSettings(temperatures_K=[300.0], frames_per_temperature=2, timestep_fs=20.0)
    with pytest.raises(DataError, match="must end in .npz"):
        generate_reference_data(WATER, "out.csv", small_settings(), progress=False)


def _cli(arguments: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    environment = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                       PYTHONPATH=str(REPOSITORY) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = "import sys; from so3krates_openmm.cli.data import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, "generate", *arguments], cwd=cwd, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_cli_run_killed_with_sigkill_resumes_to_exactly_the_uninterrupted_frames(tmp_path):
    (tmp_path / "water.xyz").write_text(WATER_XYZ)
    options = ["--structure", "water.xyz", "--temperatures", "300", "500", "--frames-per-temperature", "60",
               "--stride", "2", "--equilibration-steps", "4", "--checkpoint-every", "5", "--seed", "3",
               "--no-progress"]
    reference = _cli(options + ["-o", "full.npz"], tmp_path)
    victim = _cli(options + ["-o", "cut.npz"], tmp_path)
    partial = tmp_path / "cut.partial.npz"
    deadline = time.time() + 120
    while not partial.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert victim.poll() is None, f"the run ended before it could be killed: {victim.communicate()}"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert reference.wait(timeout=300) == 0, reference.communicate()
    frames_before = len(load_npz(partial))
    assert 0 < frames_before < 120

    resumed = _cli(["--resume", "-o", "cut.npz", "--no-progress"], tmp_path)
    _, log = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, log
    assert f"resuming from {partial}" in log or f"resuming from {partial.name}" in log
    with np.load(tmp_path / "full.npz") as a, np.load(tmp_path / "cut.npz") as b:
        for key in ("R", "E", "F", "z"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{key} differs after resume")
    assert not partial.exists()


def test_cli_reports_missing_options_and_resume_conflicts(tmp_path, capsys):
    from so3krates_openmm.cli.data import main as data_main

    assert data_main(["generate", "-o", str(tmp_path / "x.npz"), "--temperatures", "300"]) == 2
    assert "--structure" in capsys.readouterr().err
    assert data_main(["generate", "--resume", "-o", str(tmp_path / "x.npz")]) == 2
    assert "nothing to resume" in capsys.readouterr().err

    output = tmp_path / "w.npz"
    generate_reference_data(WATER, output, small_settings(), stop_after_frames=1, progress=False, log=lambda m: None)
    assert data_main(["generate", "--resume", "-o", str(output), "--seed", "99"]) == 2
    assert "seed=99 (partial file: 11)" in capsys.readouterr().err
    assert data_main(["generate", "--resume", "-o", str(output), "--no-progress"]) == 0
    assert len(load_npz(output)) == 8
    assert data_main(["info", str(output)]) == 0
    assert "8 frames, formula(s) H2O" in capsys.readouterr().out


def test_command_line_run_preloads_debian_openblas_when_installed(tmp_path):
    from so3krates_openmm.runtime import openblas_library

    environment = dict(os.environ, OMP_NUM_THREADS="1",
                       PYTHONPATH=str(REPOSITORY) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    environment.pop("LD_PRELOAD", None)
    environment.pop("SO3KRATES_OPENBLAS_PRELOAD", None)
    # data_main() without argv behaves as the console script: it may re-execute itself.
    environment.pop("OPENBLAS_NUM_THREADS", None)
    code = ("import os, sys; from so3krates_openmm.cli.data import main as data_main; "
            "print('LD_PRELOAD=' + os.environ.get('LD_PRELOAD', ''), file=sys.stderr); "
            "print('OPENBLAS_NUM_THREADS=' + os.environ.get('OPENBLAS_NUM_THREADS', ''), file=sys.stderr); "
            "sys.exit(data_main())")
    result = subprocess.run([sys.executable, "-c", code, "generate", "--resume", "-o", str(tmp_path / "none.npz")],
                            env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "nothing to resume" in result.stderr
    library = openblas_library()
    if library is None:
        assert "OpenBLAS (Debian libopenblas0-pthread) not found" in result.stderr
        assert result.stderr.count("LD_PRELOAD=") == 1, "no re-execution without the library"
    else:
        assert f"using OpenBLAS from {library}" in result.stderr
        assert f"LD_PRELOAD={library}" in result.stderr  # printed by the re-executed process
        # with one OpenBLAS thread: more would spin between PyTorch's BLAS calls in the same process
        assert "OPENBLAS_NUM_THREADS=1" in result.stderr
    # --no-openblas (and --no-process-tuning) keep the process as it is
    for flag in ("--no-openblas", "--no-process-tuning"):
        result = subprocess.run([sys.executable, "-c", code, "generate", "--resume", "-o", str(tmp_path / "none.npz"),
                                 flag], env=environment, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and result.stderr.count("LD_PRELOAD=") == 1 and "OpenBLAS" not in result.stderr
