"""Checkpoints and --resume: a run interrupted at any moment and resumed equals an uninterrupted one.

LangevinMiddleIntegrator on the Reference platform is deterministic given the
seed, and the binary checkpoint restores its random number state, so the
comparison is exact (frame by frame, row by row).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import openmm as mm
import pytest
from md_support import PROTOCOLS, REPOSITORY

from so3krates_openmm.cli.langevin_nvt import main as langevin_nvt_main
from so3krates_openmm.data.structures import read_structure
from so3krates_openmm.data.trajectory import read_dcd
from so3krates_openmm.md.checkpoint import read_checkpoint
from so3krates_openmm.md.reporters import (
    OutputReplacedError,
    read_csv_log,
    read_velocities,
)
from so3krates_openmm.md.runner import RunConfig, run_md
from so3krates_openmm.md.simulation import SimulationSettings, model_system

EXACT_COLUMNS = ("step", "time_ps", "potential_energy_kJ/mol")
# OpenMM recomputes the kinetic energy of a leapfrog-type integrator from cached forces; after a
# checkpoint load they are summed afresh, which moves the last bits (seen: 3e-14 relative) although
# positions, velocities and potential energies stay bitwise identical.
ROUNDED_COLUMNS = ("kinetic_energy_kJ/mol", "temperature_K")


def assert_same_log(path_a: Path, path_b: Path) -> None:
    log_a, log_b = read_csv_log(path_a), read_csv_log(path_b)
    for column in EXACT_COLUMNS:
        np.testing.assert_array_equal(log_a[column], log_b[column], err_msg=column)
    for column in ROUNDED_COLUMNS:
        np.testing.assert_allclose(log_a[column], log_b[column], rtol=1e-12, atol=0, err_msg=column)


class Interrupted(Exception):
    pass


class InterruptAt:
    """Reporter that stops the run at ``step`` (after the run's own reporters wrote that step)."""

    def __init__(self, step: int):
        self.step = step

    def describeNextReport(self, simulation):
        remaining = self.step - simulation.currentStep
        return {"steps": remaining if remaining > 0 else 10**9, "include": [], "periodic": None}

    def report(self, simulation, state):
        raise Interrupted(f"simulated kill at step {simulation.currentStep}")


def run(structure, model, directory, *, resume=False, reporters=()):
    settings = SimulationSettings(platform="Reference", threads=1, seed=2024, temperature_K=300.0, timestep_fs=0.5)
    config = RunConfig(
        steps=400, output_dir=directory, log_interval=20, trajectory_interval=20, velocity_interval=10,
        checkpoint_interval=150, stability=None, progress=False, resume=resume, reporters=list(reporters),
        identity={"model": str(model)},
    )
    return run_md(structure, model_system(structure, model), settings, config)


def assert_same_outputs(reference: Path, other: Path) -> None:
    a, b = read_dcd(reference / "trajectory.dcd"), read_dcd(other / "trajectory.dcd")
    assert a.n_frames == b.n_frames
    np.testing.assert_array_equal(a.positions_angstrom, b.positions_angstrom)
    for path in (reference, other):  # the header's frame count matches the frames in the file
        with open(path / "trajectory.dcd", "rb") as handle:
            handle.seek(8)
            assert int.from_bytes(handle.read(4), "little") == a.n_frames
    assert_same_log(reference / "log.csv", other / "log.csv")
    np.testing.assert_array_equal(read_velocities(reference / "velocities.vel")[0],
                                  read_velocities(other / "velocities.vel")[0])
    # The files hold float32 positions and velocities; the final states are in full (double) precision.
    states = [mm.XmlSerializer.deserialize((path / "final_state.xml").read_text()) for path in (reference, other)]
    for name in ("getPositions", "getVelocities"):
        a, b = (getattr(state, name)(asNumpy=True)._value for state in states)
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, peptide_pdb, peptide_gentle_model):
    structure = read_structure(peptide_pdb)
    reference = run(structure, peptide_gentle_model, tmp_path / "reference")
    assert reference.final_step == 400

    broken = tmp_path / "broken"
    with pytest.raises(Interrupted):
        run(structure, peptide_gentle_model, broken, reporters=[InterruptAt(350)])
    checkpoint = read_checkpoint(broken / "checkpoint.zip")
    assert checkpoint.step == 300 and checkpoint.outputs["trajectory"]["frames"] == 15
    assert read_dcd(broken / "trajectory.dcd").n_frames == 17  # frames after the checkpoint exist ...
    with open(broken / "trajectory.dcd", "ab") as handle:  # ... and a torn frame from a kill mid-write
        handle.write(b"\x00" * 100)
    with open(broken / "log.csv", "a") as handle:
        handle.write("360,0.18,-3")

    resumed = run(structure, peptide_gentle_model, broken, resume=True)
    assert resumed.resumed_from_step == 300 and resumed.start_step == 300 and resumed.final_step == 400
    assert resumed.exact_resume is True and resumed.seed == 2024
    assert_same_outputs(tmp_path / "reference", broken)
    # A finished run resumed again does nothing and changes nothing.
    again = run(structure, peptide_gentle_model, broken, resume=True)
    assert again.start_step == again.final_step == 400
    assert_same_outputs(tmp_path / "reference", broken)


class ReplaceFileAt(InterruptAt):
    """Reporter that, at ``step``, rewrites ``path`` the way ``git stash``/``git checkout`` do:
    the same bytes in a new file renamed over the old one."""

    def __init__(self, step: int, path: Path):
        super().__init__(step)
        self.path = path

    def report(self, simulation, state):
        copy = self.path.with_name(self.path.name + ".new")
        copy.write_bytes(self.path.read_bytes())
        os.replace(copy, self.path)


def test_output_replaced_during_a_run_stops_it_before_the_next_checkpoint(tmp_path, peptide_pdb, peptide_gentle_model):
    structure = read_structure(peptide_pdb)
    run(structure, peptide_gentle_model, tmp_path / "reference")
    directory = tmp_path / "replaced"
    with pytest.raises(OutputReplacedError, match="trajectory.dcd was replaced by another program.*--resume"):
        run(structure, peptide_gentle_model, directory, reporters=[ReplaceFileAt(200, directory / "trajectory.dcd")])
    # The checkpoint before the replacement stays; records written to the replaced file since are not
    # counted as saved, so resuming from it leaves no hole.
    assert read_checkpoint(directory / "checkpoint.zip").step == 150
    resumed = run(structure, peptide_gentle_model, directory, resume=True)
    assert resumed.resumed_from_step == 150 and resumed.final_step == 400
    assert_same_outputs(tmp_path / "reference", directory)


def test_resume_refuses_changed_parameters_and_foreign_checkpoints(tmp_path, peptide_pdb, peptide_gentle_model):
    structure = read_structure(peptide_pdb)
    directory = tmp_path / "run"
    with pytest.raises(Interrupted):
        run(structure, peptide_gentle_model, directory, reporters=[InterruptAt(160)])
    settings = SimulationSettings(platform="Reference", threads=1, seed=2024, timestep_fs=1.0)
    config = RunConfig(steps=400, output_dir=directory, log_interval=20, trajectory_interval=20, velocity_interval=10,
                       stability=None, progress=False, resume=True, identity={"model": str(peptide_gentle_model)})
    with pytest.raises(ValueError, match=r"parameters changed \(.*timestep_fs: checkpoint 0.5, now 1.0"):
        run_md(structure, model_system(structure, peptide_gentle_model), settings, config)
    with pytest.raises(ValueError, match="resume and overwrite contradict"):
        run_md(structure, model_system(structure, peptide_gentle_model), settings,
               RunConfig(steps=400, output_dir=directory, resume=True, overwrite=True))
    (directory / "checkpoint.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="is not an MD run checkpoint"):
        run(structure, peptide_gentle_model, directory, resume=True)


def _frames_in_checkpoint(directory: Path) -> int:
    try:
        with zipfile.ZipFile(directory / "checkpoint.zip") as archive:
            return json.loads(archive.read("meta.json"))["outputs"]["trajectory"]["frames"]
    except (FileNotFoundError, KeyError, zipfile.BadZipFile):
        return -1


@pytest.mark.slow
def test_killed_process_resumes_without_lost_or_duplicated_frames(tmp_path, peptide_pdb, peptide_gentle_model):
    arguments = [
        "--structure", str(peptide_pdb), "--model", str(peptide_gentle_model), "--steps", "800",
        "--log-interval", "10", "--trajectory-interval", "10", "--checkpoint-interval", "200",
        "--platform", "Reference", "--threads", "1", "--seed", "99", "--no-minimize", "--no-stability-check",
        "--no-progress",
    ]
    assert langevin_nvt_main(arguments + ["--output", str(tmp_path / "reference")]) == 0

    killed = tmp_path / "killed"
    script = [sys.executable, str(PROTOCOLS / "langevin_nvt.py")] + arguments
    process = subprocess.Popen(script + ["--output", str(killed)], cwd=REPOSITORY,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while _frames_in_checkpoint(killed) < 20 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)  # somewhere after the first checkpoint, at no particular step
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert 0 < read_checkpoint(killed / "checkpoint.zip").step < 800

    resumed = subprocess.run(script + ["--output", str(killed), "--resume"], cwd=REPOSITORY, capture_output=True,
                             text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step" in resumed.stdout
    a, b = read_dcd(tmp_path / "reference" / "trajectory.dcd"), read_dcd(killed / "trajectory.dcd")
    assert a.n_frames == b.n_frames == 80
    np.testing.assert_array_equal(a.positions_angstrom, b.positions_angstrom)
    assert_same_log(tmp_path / "reference" / "log.csv", killed / "log.csv")
