"""The active-learning loop end to end on water (GFN2-xTB labels, tiny committee, short MD), and its resume."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule

from so3krates_openmm import active_learning
from so3krates_openmm.active_learning import ActiveLearning, ActiveLearningSettings, LoopState, run_active_learning
from so3krates_openmm.data.formats import merge_datasets
from so3krates_openmm.data.labelling import LabelSettings, TrajectoryFrames, label_frames
from so3krates_openmm.data.structures import Structure, write_xyz
from so3krates_openmm.md.uncertainty import CommitteeReporter, read_disagreement_csv
from so3krates_openmm.training import config_from_dict, train

SMALL_MODEL = {"features": 16, "layers": 1, "heads": 2, "degrees": [1, 2], "radial_basis_size": 8, "cutoff": 4.0}


def quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> dict[str, Path]:
    """Water: a structure, 40 GFN2-xTB-labelled perturbed frames and a source model trained on them."""
    directory = tmp_path_factory.mktemp("al_start")
    atoms = molecule("H2O")
    structure = directory / "water.xyz"
    write_xyz(structure, Structure(atoms.numbers, atoms.positions))
    rng = np.random.default_rng(0)
    frames = TrajectoryFrames(atoms.numbers, atoms.positions[None] + rng.normal(scale=0.05, size=(40, 3, 3)), None,
                              "perturbed water")
    data = directory / "water_xtb.npz"
    label_frames(frames, data, LabelSettings(), progress=False, log=quiet)
    output = directory / "source"
    train(config_from_dict(dict(data=str(data), output=str(output), lr=5e-3, max_epochs=3, dtype="float64",
                                threads=1, progress=False, train_size=30, valid_size=5, test_size=5, batch_size=5,
                                **SMALL_MODEL)), log=quiet)
    return {"structure": structure, "data": data, "checkpoint": output / "best_checkpoint.pt"}


def settings_for(start: dict[str, Path], output: Path, **overrides) -> ActiveLearningSettings:
    values = dict(structure=str(start["structure"]), checkpoint=str(start["checkpoint"]), data=[str(start["data"])],
                  output=str(output), temperatures_K=[300.0, 500.0], iterations=2, members=2, md_ps=0.05,
                  evaluate_every=10, checkpoint_interval=40, frames_per_iteration=3, random_frames_per_iteration=2,
                  min_rmsd_angstrom=0.01, min_separation_steps=10, threads=1,
                  training={"max_epochs": 1, "lr": 1e-3, "progress": False, "train_size": 0.7, "valid_size": 0.15,
                            "batch_size": 5})
    values.update(overrides)
    return ActiveLearningSettings(**values)


def test_loop_runs_two_iterations_and_reports(tmp_path: Path, start: dict[str, Path],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    kernels_used = []

    def recording_model_system(structure, model_path, **options):
        kernels_used.append(options.get("kernels"))
        return model_system(structure, model_path, **options)

    model_system = active_learning.model_system
    monkeypatch.setattr(active_learning, "model_system", recording_model_system)
    summary = run_active_learning(settings_for(start, tmp_path / "loop", kernels="fused"), log=quiet)
    assert kernels_used == ["fused"] * 4  # the MD-driving member ran with the fused kernels at each T, iteration
    assert summary["iterations"] == 2 and not summary["converged"]
    assert summary["frames_labelled"] == 2 * (3 + 2)
    paths = LoopState(tmp_path / "loop")
    for i in (0, 1):
        report = json.loads((paths.iteration(i) / "report.json").read_text())
        assert report["frames_selected"] == 3 and report["frames_random"] == 2
        assert set(report["md_disagreement"]) == {"300", "500"}
        assert report["md_disagreement"]["300"]["frames"] == 10  # 100 steps, every 10
        for key in ("selected_energy_mae", "selected_force_mae", "md_energy_mae", "md_force_mae"):
            assert np.isfinite(report["before"][key]) and np.isfinite(report["after"][key])
        assert np.isfinite(report["after"]["test_force_mae"])
        assert -1.0 <= report["uncertainty_error_spearman"] <= 1.0
        assert (paths.iteration(i) / "report.png").stat().st_size > 0
    # Committee 2 members were fine-tuned from committee 1's, on data that grew by 5 frames per iteration.
    with np.load(paths.iteration(1) / "train_data.npz") as data:
        assert len(data["E"]) == 40 + 10
    assert all(p.exists() for p in paths.members(2, 2))
    # The MD stage saw the committee's disagreement: the selected frames are the most uncertain of the runs.
    with np.load(paths.iteration(0) / "selected.npz") as selected:
        top = np.max(np.concatenate([
            read_disagreement_csv(paths.md(0, t) / "uncertainty.csv")[next(
                k for k in read_disagreement_csv(paths.md(0, t) / "uncertainty.csv") if k.startswith("force_std_max"))]
            for t in (300.0, 500.0)]))
        assert selected["force_std_max"][0] == pytest.approx(top, rel=1e-12)
        assert list(selected["kind"]) == ["selected"] * 3 + ["random"] * 2


def test_loop_resumes_after_kills_between_and_inside_stages(tmp_path: Path, start: dict[str, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "loop"
    settings = settings_for(start, output, iterations=1)

    # A kill inside the MD stage: after the 7th committee evaluation at 300 K (a checkpoint at step 40 exists).
    calls = {"n": 0}
    original = CommitteeReporter.report

    def killed(self, simulation, state):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        original(self, simulation, state)

    monkeypatch.setattr(CommitteeReporter, "report", killed)
    with pytest.raises(KeyboardInterrupt):
        run_active_learning(settings, log=quiet)
    monkeypatch.setattr(CommitteeReporter, "report", original)
    paths = LoopState(output)
    assert not (paths.md(0, 300.0) / "run.json").exists()

    # A kill between stages: right when labelling starts.
    def kill_at_labelling(message: str) -> None:
        if "labelling" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_active_learning(settings, log=kill_at_labelling)
    steps = read_disagreement_csv(paths.md(0, 300.0) / "uncertainty.csv")["step"]
    np.testing.assert_array_equal(steps, np.arange(10, 101, 10))  # no record lost or duplicated
    selected_stamp = (paths.iteration(0) / "selected.npz").stat().st_mtime_ns
    md_stamp = (paths.md(0, 500.0) / "run.json").stat().st_mtime_ns

    # resumed with another kind of module (the same model) and the labels on 2 Dask workers
    # (how the MD is computed and how the frames are labelled may change on resume)
    summary = run_active_learning(settings_for(start, output, iterations=1, kernels="analytic", label_workers=2),
                                  log=quiet)
    assert summary["iterations"] == 1
    assert (paths.iteration(0) / "labelled.npz").is_file()
    assert not (paths.iteration(0) / "labelled.labels.jsonl").exists()  # the task journal goes once done
    assert (paths.iteration(0) / "selected.npz").stat().st_mtime_ns == selected_stamp  # not redone
    assert (paths.md(0, 500.0) / "run.json").stat().st_mtime_ns == md_stamp

    # Other settings on the same folder are refused, naming them.
    with pytest.raises(ValueError, match="md_ps"):
        run_active_learning(settings_for(start, output, iterations=1, md_ps=0.1), log=quiet)


def test_data_appended_on_resume_joins_the_next_merge_once(start: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "loop"
    ActiveLearning(settings_for(start, output), log=quiet)
    paths = LoopState(output)
    # as if committee 0 had been trained and iteration 0 merged (40 frames each)
    shutil.copy(start["data"], output / "train_data_00.npz")
    paths.iteration(0).mkdir()
    shutil.copy(start["data"], paths.iteration(0) / "train_data.npz")
    extra = tmp_path / "frames_from_a_long_run.npz"
    merge_datasets([start["data"], start["data"]], extra)  # 80 labelled frames from elsewhere
    messages = []
    loop = ActiveLearning(settings_for(start, output, data=[str(start["data"]), str(extra)]), log=messages.append)
    assert loop.added_data() == [{"file": str(extra), "merged_in_iteration": 1}]
    assert any("joins the training data in the merge of iteration 1" in m for m in messages)
    # resumed again with the same list: recorded once
    loop = ActiveLearning(settings_for(start, output, data=[str(start["data"]), str(extra)]), log=quiet)
    assert len(loop.added_data()) == 1
    merged = loop.merge(1, labelled=start["data"])  # previous 40 + 40 new labels + the 80 added
    with np.load(merged) as data:
        assert len(data["E"]) == 40 + 40 + 80
    # restored on a new machine without the merged files (bench/progress.py keeps none): committee 0's data is
    # merged again without the added file, which joins at iteration 1 only, as before
    (output / "train_data_00.npz").unlink()
    with np.load(loop.initial_data()) as data:
        assert len(data["E"]) == 40
    # data may only grow
    with pytest.raises(ValueError, match="only grow"):
        ActiveLearning(settings_for(start, output, data=[str(extra)]), log=quiet)


def test_settings_are_checked(start: dict[str, Path], tmp_path: Path) -> None:
    # training options given replace the default's keys one by one (the small fine-tuning lr stays)
    assert settings_for(start, tmp_path, training={"max_time": "2m"}).training == {
        "max_epochs": 20, "lr": 1e-4, "max_time": "2m"}
    with pytest.raises(ValueError, match="set by the loop"):
        settings_for(start, tmp_path, training={"seed": 3})
    with pytest.raises(ValueError, match="members"):
        settings_for(start, tmp_path, members=1)
    with pytest.raises(FileNotFoundError, match="training data"):
        run_active_learning(settings_for(start, tmp_path / "x", data=[str(tmp_path / "missing.npz")]), log=quiet)

    # A loop folder from before a setting existed resumes with that setting at its default; a changed one is refused.
    ActiveLearning(settings_for(start, tmp_path / "loop"), log=quiet)
    record = tmp_path / "loop" / "settings.json"
    saved = json.loads(record.read_text())
    record.write_text(json.dumps({k: v for k, v in saved.items() if k != "seed"}))
    ActiveLearning(settings_for(start, tmp_path / "loop"), log=quiet)
    record.write_text(json.dumps({**saved, "seed": 5}))
    with pytest.raises(ValueError, match="seed"):
        ActiveLearning(settings_for(start, tmp_path / "loop"), log=quiet)


def test_command_line_with_a_yaml_file_converges_and_names_bad_keys(tmp_path: Path, start: dict[str, Path],
                                                                    capsys: pytest.CaptureFixture) -> None:
    from so3krates_openmm.cli.active_learning import main

    config = tmp_path / "loop.yaml"
    # input files relative to the YAML file, as in bench/active_learning/buckyball_catcher/config.yaml
    relative = {name: os.path.relpath(start[name], tmp_path) for name in ("structure", "checkpoint", "data")}
    config.write_text(
        f"structure: {relative['structure']}\ncheckpoint: {relative['checkpoint']}\ndata: [{relative['data']}]\n"
        f"output: {tmp_path / 'loop'}\ntemperatures_K: [300]\nmembers: 2\nmd_ps: 0.05\nevaluate_every: 10\n"
        "threads: 1\ntraining: {max_epochs: 1, progress: false, train_size: 0.7, valid_size: 0.15, batch_size: 5}\n"
    )
    # A target far above any disagreement: the loop stops after the first MD stage, converged, nothing labelled.
    assert main(["--config", str(config), "--target-force-std", "1e9", "--no-process-tuning"]) == 0
    summary = json.loads((tmp_path / "loop" / "summary.json").read_text())
    assert summary["converged"] and summary["iterations"] == 0 and summary["frames_labelled"] == 0
    assert not (tmp_path / "loop" / "iteration_00" / "selected.npz").exists()
    capsys.readouterr()
    config.write_text(config.read_text() + "md_picoseconds: 1\n")
    assert main(["--config", str(config), "--no-process-tuning"]) == 2
    assert "md_picoseconds" in capsys.readouterr().err
