"""bench/progress.py: the closed files of long runs carried to a new machine through git, and resumed there."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule

from so3krates_openmm.md.protocols import LangevinNVTOptions
from so3krates_openmm.md.recipes import run_langevin_nvt
from so3krates_openmm.md.segments import read_segmented_trajectory, segment_directory, segmented_status
from so3krates_openmm.training import config_from_dict, train
from so3krates_openmm.training.committee import train_committee
from so3krates_openmm.training.synthetic import teacher_dataset
from so3krates_openmm.training.trainer import finished_run

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "progress.py"
SMALL_MODEL = {"features": 8, "layers": 1, "heads": 2, "degrees": [1], "radial_basis_size": 4, "cutoff": 4.0}
SPLIT = {"train_size": 20, "valid_size": 5, "test_size": 5, "batch_size": 5}


def quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def progress():
    spec = importlib.util.spec_from_file_location("progress", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def water_data():
    atoms = molecule("H2O")
    return teacher_dataset(atoms.numbers, atoms.positions, 30, displacement=0.1, force_rms=20.0,
                           shifts={1: -310.0, 8: -47100.0})


def test_a_saved_committee_is_restored_as_finished_and_not_trained_again(
        tmp_path: Path, progress, water_data) -> None:
    runs, store = tmp_path / "runs", tmp_path / "store"
    source = runs / "source"
    train(config_from_dict(dict(data="<teacher>", output=str(source), lr=5e-3, max_epochs=1, dtype="float64",
                                threads=1, progress=False, keep_best_checkpoints=True, **SPLIT, **SMALL_MODEL)),
          dataset=water_data, log=quiet)
    options = dict(data="<teacher>", output=str(runs / "loop" / "committee_00"), init_from=str(source /
                   "best_checkpoint.pt"), lr=2e-3, max_epochs=1, threads=1, progress=False, seed=3, **SPLIT)
    first = train_committee(config_from_dict(options), members=2, dataset=water_data, log=quiet)
    (runs / "loop" / "committee_00" / "member_1" / "test_report.json").unlink()  # member 1 "still training"

    assert progress.save(runs, store) == 0
    stored = {path.relative_to(store).as_posix() for path in store.rglob("*") if path.is_file()}
    assert "loop/committee_00/member_0/best_checkpoint.pt" in stored
    assert "source/best_checkpoints/epoch_0001.pt" in stored
    assert not any(name.endswith("last_checkpoint.pt") for name in stored)  # optimiser state stays behind
    assert not any(name.startswith("loop/committee_00/member_1/") for name in stored)
    assert progress.save(runs, store) == 0  # nothing new: nothing copied, no conflict

    shutil.rmtree(runs)  # the new machine
    assert progress.restore(runs, store) == len(stored)
    carried = finished_run(runs / "loop" / "committee_00" / "member_0")
    assert carried is not None and carried.stop_reason == first.members[0].stop_reason
    logs: list[str] = []
    again = train_committee(config_from_dict(options), members=2, dataset=water_data, log=logs.append)
    assert "finished" in logs[0] and "training" in logs[1]  # member 0 taken as it is, member 1 trains anew
    assert not (runs / "loop" / "committee_00" / "member_0" / "last_checkpoint.pt").exists()
    np.testing.assert_allclose(again.members[0].test_report["errors"]["force_mae"],
                               first.members[0].test_report["errors"]["force_mae"])
    assert again.members[1].test_report is not None

    # a closed file that changed afterwards is a conflict: named, the stored version kept
    checkpoint = runs / "loop" / "committee_00" / "member_0" / "best_checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes() + b"x")
    assert progress.save(runs, store) == 1
    assert (store / "loop" / "committee_00" / "member_0" / "best_checkpoint.pt").stat().st_size \
        == checkpoint.stat().st_size - 1


def test_a_segmented_run_continues_on_the_new_machine_after_its_closed_segments(
        tmp_path: Path, progress, peptide_pdb: Path, peptide_amber_xml: Path) -> None:
    runs, store = tmp_path / "runs", tmp_path / "store"
    output = runs / "nanosecond" / "run"

    def options(steps: int, **changes) -> LangevinNVTOptions:
        return LangevinNVTOptions(structure=peptide_pdb, model=peptide_amber_xml, output=output, steps=steps,
                                  segment_ps=0.01, seed=5, platform="Reference", threads=1, progress=False,
                                  log_interval=10, trajectory_interval=10, checkpoint_interval=10,
                                  stability_interval=10, **changes)

    run_langevin_nvt(options(40), log=quiet)
    assert progress.save(runs, store) == 0
    assert not any(path.name == "checkpoint.zip" for path in store.rglob("*"))
    stored_manifest = (store / "nanosecond" / "run" / "segments.json").read_text()
    shutil.rmtree(runs)
    progress.restore(runs, store)
    assert [segment.closed for segment in segmented_status(output).segments] == [True, True]

    result = run_langevin_nvt(options(60, resume=True), log=quiet)  # the run grows by a third segment
    assert result.stable
    status = segmented_status(output)
    assert [segment.closed for segment in status.segments] == [True, True, True] and status.completed
    _, times = read_segmented_trajectory(output)
    np.testing.assert_allclose(times, 0.005 * np.arange(1, 7))
    assert (segment_directory(output, 2) / "final_state.xml").is_file()
    assert progress.save(runs, store) == 0  # segments.json grew: replaced; segment 2 added
    assert (store / "nanosecond" / "run" / "segments.json").read_text() != stored_manifest
    assert (store / "nanosecond" / "run" / "segment_0002" / "trajectory.dcd").is_file()


def test_a_journal_is_stored_as_closed_chunks_and_joined_on_restore(tmp_path: Path, progress) -> None:
    runs, store = tmp_path / "runs", tmp_path / "store"
    journal = runs / "minima_large" / "minimised_snapshots.jsonl"
    journal.parent.mkdir(parents=True)
    header = json.dumps({"header": {"job": "minimise"}}) + "\n"
    lines = [json.dumps({"key": str(k), "result": [k, k + 0.5]}) + "\n" for k in range(6)]
    journal.write_text(header + "".join(lines[:3]))
    assert progress.save(runs, store) == 0
    with open(journal, "a") as handle:
        handle.write("".join(lines[3:]) + '{"key": "6", "resu')  # a line cut off by kill -9
    assert progress.save(runs, store) == 0
    chunks = sorted(path.name for path in (store / "minima_large" / "minimised_snapshots.jsonl.chunks").iterdir())
    assert chunks == ["00000000-00000004.jsonl.gz", "00000004-00000007.jsonl.gz"]  # each saved once, never again
    assert progress.save(runs, store) == 0 and len(list(journal.parent.iterdir())) == 1

    shutil.rmtree(runs)
    progress.restore(runs, store)
    assert journal.read_text() == header + "".join(lines)  # whole lines only: the torn one runs again

    journal.write_text(json.dumps({"header": {"job": "another"}}) + "\n" + "".join(lines))
    assert progress.save(runs, store) == 1  # another job's journal: a conflict, nothing stored


def test_finished_exploration_runs_are_saved_beside_their_journal(tmp_path: Path, progress) -> None:
    runs, store = tmp_path / "runs", tmp_path / "store"
    md = runs / "minima_large" / "md"
    for name, files in (("500K_seed1", ("run.json", "trajectory.dcd", "checkpoint.zip")),
                        ("700K_seed1", ("trajectory.dcd", "checkpoint.zip"))):  # the second still running
        (md / name).mkdir(parents=True)
        for file in files:
            (md / name / file).write_text(file)
    (md / "md_runs.jsonl").write_text(json.dumps({"header": {}}) + "\n")
    assert progress.save(runs, store) == 0
    saved = sorted(path.relative_to(store / "minima_large" / "md").as_posix() for path in store.rglob("*")
                   if path.is_file())
    assert saved == ["500K_seed1/run.json", "500K_seed1/trajectory.dcd",
                     "md_runs.jsonl.chunks/00000000-00000001.jsonl.gz"]
