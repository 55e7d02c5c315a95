"""Committee training: K fine-tuned members with different seeds and splits, resumable member by member."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import molecule

from so3krates_openmm.model.checkpoint import read_checkpoint
from so3krates_openmm.model.committee import Committee
from so3krates_openmm.training import config_from_dict, train
from so3krates_openmm.training.committee import member_directory, train_committee
from so3krates_openmm.training.synthetic import teacher_dataset

SMALL_MODEL = {"features": 16, "layers": 1, "heads": 2, "degrees": [1, 2], "radial_basis_size": 8, "cutoff": 4.0}
SPLIT = {"train_size": 30, "valid_size": 10, "test_size": 10, "batch_size": 5}


def quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def water_data():
    atoms = molecule("H2O")
    return teacher_dataset(atoms.numbers, atoms.positions, 50, displacement=0.1, force_rms=20.0,
                           shifts={1: -310.0, 8: -47100.0})


@pytest.fixture(scope="module")
def source(tmp_path_factory, water_data) -> Path:
    output = tmp_path_factory.mktemp("source") / "run"
    options = dict(data="<teacher>", output=str(output), lr=5e-3, max_epochs=2, dtype="float64", threads=1,
                   progress=False, **SPLIT, **SMALL_MODEL)
    train(config_from_dict(options), dataset=water_data, log=quiet)
    return output / "best_checkpoint.pt"


def test_members_differ_in_seed_and_split_and_resume(tmp_path: Path, source: Path, water_data) -> None:
    torch.manual_seed(0)
    options = dict(data="<teacher>", output=str(tmp_path / "committee"), init_from=str(source), lr=2e-3,
                   max_epochs=1, threads=1, progress=False, seed=10, **SPLIT)
    result = train_committee(config_from_dict(options), members=2, dataset=water_data, log=quiet)
    assert [m.output for m in result.members] == [member_directory(tmp_path / "committee", k) for k in (0, 1)]
    states = [read_checkpoint(m.output / "last_checkpoint.pt")["extra"]["training_state"] for m in result.members]
    assert [s["config"]["seed"] for s in states] == [10, 11]
    assert [m.test_report["seed"] for m in result.members] == [10, 11]
    committee = Committee.from_checkpoints(result.checkpoints)
    atoms = molecule("H2O")
    spread = committee.disagreement(atoms.numbers, atoms.positions[None] + 0.2)
    assert spread.force_std_max[0] > 0.0  # different splits and shuffling: the members disagree

    # Again with one more member: the two finished members are only re-read, the third trains.
    finished_files = [m.output / name for m in result.members
                      for name in ("best_checkpoint.pt", "test_report.json", "learning_curve.png", "metrics.csv",
                                   "training_config.json", "split.json")]
    stamps = [p.stat().st_mtime_ns for p in finished_files]
    again = train_committee(config_from_dict(options), members=3, dataset=water_data, log=quiet)
    assert [p.stat().st_mtime_ns for p in finished_files] == stamps  # a finished run's files are final
    assert again.members[2].test_report["seed"] == 12
    np.testing.assert_allclose(again.members[0].test_report["errors"]["force_mae"],
                               result.members[0].test_report["errors"]["force_mae"])


def test_committee_needs_a_checkpoint_and_two_members(tmp_path: Path, source: Path) -> None:
    options = dict(data="<teacher>", output=str(tmp_path / "c"), **SPLIT)
    with pytest.raises(ValueError, match="init_from"):
        train_committee(config_from_dict(options), members=2)
    with pytest.raises(ValueError, match="at least 2"):
        train_committee(config_from_dict({**options, "init_from": str(source)}), members=1)
