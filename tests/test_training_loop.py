"""The training loop: it learns, writes its files, stops when it should, and resumes the same run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import molecule

from so3krates_openmm.data.dataset import MolecularDataset
from so3krates_openmm.model.checkpoint import load_model, read_checkpoint
from so3krates_openmm.training import Trainer, TrainingError, config_from_dict, train
from so3krates_openmm.training.reporting import METRIC_COLUMNS, read_metrics_csv
from so3krates_openmm.training.shifts import fit_energy_shifts
from so3krates_openmm.training.splits import read_split
from so3krates_openmm.training.synthetic import teacher_dataset
from so3krates_openmm.training.trainer import predicted_energies
from so3krates_openmm.units import energy_conversion

#: Student size for the tests (the teacher is F=16, T=1, degrees (1, 2), K=8, 4 Å).
SMALL_MODEL = {"features": 16, "layers": 1, "heads": 2, "degrees": [1, 2], "radial_basis_size": 8, "cutoff": 4.0}
SHIFTS = {1: -310.0, 6: -23750.0, 8: -47100.0}


def quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def ethanol_data() -> MolecularDataset:
    """200 frames of ethanol displaced by 0.1 Å, labelled by a random teacher (force RMS 20 kcal/mol/Å)."""
    ethanol = molecule("CH3CH2OH")
    return teacher_dataset(ethanol.numbers, ethanol.positions, 200, displacement=0.1, force_rms=20.0, shifts=SHIFTS)


def small_run(output: Path, **options) -> dict:
    values = dict(data="<teacher>", train_size=100, valid_size=50, test_size=50, batch_size=5, lr=5e-3,
                  output=str(output), threads=1, progress=False, patience=None, **SMALL_MODEL)
    values.update(options)
    return values


def test_training_cuts_the_force_error_several_fold(tmp_path: Path, ethanol_data: MolecularDataset):
    config = config_from_dict(small_run(tmp_path / "run", max_epochs=12))
    trainer = Trainer(config, dataset=ethanol_data, log=quiet)
    trainer.setup()
    before = trainer.evaluate(trainer.test_data, use_ema=False)
    result = trainer.run()
    after = result.test_report["errors"]
    assert before["force_mae"] > 8.0  # a random model is far off (force RMS of the data: 20 kcal/mol/Å)
    assert after["force_mae"] < before["force_mae"] / 5.0, (before["force_mae"], after["force_mae"])
    assert after["energy_mae"] < before["energy_mae"] / 5.0

    output = tmp_path / "run"
    rows = read_metrics_csv(output / "metrics.csv")
    assert [row["epoch"] for row in rows] == list(range(1, 13))
    assert list(rows[0]) == list(METRIC_COLUMNS)
    assert [row["step"] for row in rows] == [20 * epoch for epoch in range(1, 13)]
    assert (output / "learning_curve.png").stat().st_size > 10_000
    for name, part in zip(("train", "valid", "test"), trainer.split, strict=True):  # the split outlives the run
        np.testing.assert_array_equal(read_split(output / "split.json", name), part)
    report = json.loads((output / "test_report.json").read_text())
    factor = energy_conversion("kcal/mol", "meV")
    assert report["energy_unit"] == "kcal/mol" and report["structures"] == 50
    assert report["errors_meV"]["force_mae"] == pytest.approx(report["errors"]["force_mae"] * factor)
    assert set(report["errors"]["force_mae_per_element"]) == {"H", "C", "O"}
    # per-element MAEs average (weighted by atom counts 6 H, 2 C, 1 O) to the overall MAE
    per_element = report["errors"]["force_mae_per_element"]
    assert (6 * per_element["H"] + 2 * per_element["C"] + per_element["O"]) / 9 == pytest.approx(
        report["errors"]["force_mae"], rel=1e-9
    )


def test_best_checkpoint_holds_the_ema_weights_of_the_best_epoch(tmp_path: Path, ethanol_data: MolecularDataset):
    config = config_from_dict(small_run(tmp_path / "run", max_epochs=4, ema_decay=0.9, correct_energy_shifts=False))
    trainer = Trainer(config, dataset=ethanol_data, log=quiet)
    result = trainer.run()
    best_epoch = min(result.metrics, key=lambda row: row["valid_loss"])
    best = read_checkpoint(tmp_path / "run" / "best_checkpoint.pt")
    assert best["extra"]["training"]["epoch"] == best_epoch["epoch"]
    # the saved model reproduces the validation loss recorded for that epoch
    trainer.model.load_state_dict(load_model(tmp_path / "run" / "best_checkpoint.pt").state_dict())
    again = trainer.evaluate(trainer.valid_data, use_ema=False)
    assert again["loss"] == pytest.approx(best_epoch["valid_loss"], rel=1e-6)
    # the last checkpoint holds the raw weights, not the average
    last = read_checkpoint(tmp_path / "run" / "last_checkpoint.pt")
    assert not torch.equal(last["state_dict"]["embedding.weight"], best["state_dict"]["embedding.weight"])


def test_best_checkpoint_energy_shifts_are_corrected_after_training(tmp_path: Path, ethanol_data: MolecularDataset):
    """The same run with and without the final correction: only the shifts differ, forces are the same, and the
    corrected model's mean energy error on the training split is zero (one molecule: one common shift)."""
    runs = {flag: train(config_from_dict(small_run(tmp_path / str(flag), max_epochs=2, correct_energy_shifts=flag)),
                        dataset=ethanol_data, log=quiet) for flag in (False, True)}
    plain, corrected = (read_checkpoint(runs[flag].best_checkpoint) for flag in (False, True))
    for key, value in plain["state_dict"].items():
        if key != "energy_shifts":
            assert torch.equal(corrected["state_dict"][key], value), key
    record = corrected["extra"]["training"]["energy_shift_correction"]
    assert set(record["per_atom"]) == {"H", "C", "O"}
    assert record["train_energy_mae_after"] <= record["train_energy_mae_before"]
    assert "energy_shift_correction" not in plain["extra"]["training"]
    tests = {flag: runs[flag].test_report["errors"] for flag in runs}
    assert tests[True]["force_mae"] == pytest.approx(tests[False]["force_mae"], rel=1e-12)
    trainer = Trainer(config_from_dict(small_run(tmp_path / "check")), dataset=ethanol_data, log=quiet)
    trainer.setup()
    trainer.model.load_state_dict(corrected["state_dict"])
    residuals = trainer.train_data.energies.cpu().double().numpy() - predicted_energies(
        trainer.model, trainer.train_data, 16)
    assert abs(residuals.mean()) < 1e-6


def test_energy_shifts_fitted_by_least_squares_recover_known_shifts(tmp_path: Path):
    """Frames of three molecules; energies are exactly sum of per-element shifts -> recovered to 1e-8."""
    molecules = [molecule(name) for name in ("CH4", "H2O", "CH3CH2OH", "CO2", "H2CO")]
    rng = np.random.default_rng(1)
    numbers, positions, energies, forces = [], [], [], []
    for index in range(40):
        mol = molecules[index % len(molecules)]
        numbers.append(mol.numbers)
        positions.append(mol.positions + 0.02 * rng.standard_normal(mol.positions.shape))
        energies.append(sum(SHIFTS[int(z)] for z in mol.numbers) + 1e-9 * rng.standard_normal())
        forces.append(np.zeros_like(mol.positions))
    dataset = MolecularDataset(numbers, positions, np.array(energies), forces, "kcal/mol", {"source": "<shifts>"})
    config = config_from_dict(small_run(tmp_path / "run", train_size=30, valid_size=5, test_size=5, max_epochs=1,
                                        batch_size=10, energy_scale="none", correct_energy_shifts=False))
    trainer = Trainer(config, dataset=dataset, log=quiet)
    trainer.run()
    model = load_model(tmp_path / "run" / "best_checkpoint.pt")
    fitted = {int(z): float(model.energy_shifts[i]) for i, z in enumerate(model.config.elements)}
    for z, value in SHIFTS.items():
        assert fitted[z] == pytest.approx(value, rel=1e-10, abs=1e-7)
    assert model.energy_shifts.dtype == torch.float64


def test_resumed_run_continues_the_same_curve(tmp_path: Path, ethanol_data: MolecularDataset):
    """4 epochs at once == 2 epochs, stop, resume to 4: same metrics, same weights, no duplicated rows."""
    options = {"max_epochs": 4, "train_size": 40, "valid_size": 20, "test_size": 20, "batch_size": 4, "clip_grad": 1.0}
    straight = train(config_from_dict(small_run(tmp_path / "straight", **options)), dataset=ethanol_data, log=quiet)
    options["max_epochs"] = 2
    first = train(config_from_dict(small_run(tmp_path / "resumed", **options)), dataset=ethanol_data, log=quiet)
    assert first.epochs == 2 and "max-epochs" in first.stop_reason
    with pytest.raises(TrainingError, match="already holds a run"):
        train(config_from_dict(small_run(tmp_path / "resumed", **options)), dataset=ethanol_data, log=quiet)
    with pytest.raises(TrainingError, match=r"options differ .*lr: 0.005 -> 0.001"):
        train(config_from_dict(small_run(tmp_path / "resumed", **dict(options, lr=1e-3, resume=True))),
              dataset=ethanol_data, log=quiet)
    options.update(max_epochs=4, resume=True)
    other_data = teacher_dataset(molecule("CH3CH2OH").numbers, molecule("CH3CH2OH").positions, 200, seed=5)
    with pytest.raises(TrainingError, match="the data set differs"):
        train(config_from_dict(small_run(tmp_path / "resumed", **options)), dataset=other_data, log=quiet)
    resumed = train(config_from_dict(small_run(tmp_path / "resumed", **options)), dataset=ethanol_data, log=quiet)
    assert resumed.epochs == 4 and resumed.steps == straight.steps == 40

    rows_straight = read_metrics_csv(tmp_path / "straight" / "metrics.csv")
    rows_resumed = read_metrics_csv(tmp_path / "resumed" / "metrics.csv")
    assert [row["epoch"] for row in rows_resumed] == [1, 2, 3, 4]
    for a, b in zip(rows_straight, rows_resumed, strict=True):
        for column in METRIC_COLUMNS:
            if column != "time":
                assert a[column] == pytest.approx(b[column], rel=1e-12, abs=1e-15), column
    for name in ("last_checkpoint.pt", "best_checkpoint.pt"):
        weights_a = read_checkpoint(tmp_path / "straight" / name)["state_dict"]
        weights_b = read_checkpoint(tmp_path / "resumed" / name)["state_dict"]
        for key in weights_a:
            assert torch.equal(weights_a[key], weights_b[key]), (name, key)
    assert resumed.test_report["errors"] == straight.test_report["errors"]


def test_stop_criteria(tmp_path: Path, ethanol_data: MolecularDataset, monkeypatch: pytest.MonkeyPatch):
    base = {"train_size": 20, "valid_size": 10, "test_size": 10, "batch_size": 10, "max_epochs": 10}
    # no learning at all (lr 1e-30): the validation loss never improves after epoch 1
    frozen = train(config_from_dict(small_run(tmp_path / "patience", lr=1e-30, min_lr=0.0, patience=2, **base)),
                   dataset=ethanol_data, log=quiet)
    assert frozen.epochs == 3 and "patience" in frozen.stop_reason
    decayed = train(config_from_dict(small_run(tmp_path / "lr", lr_decay=0.1, lr_decay_steps=2.0, **base)),
                    dataset=ethanol_data, log=quiet)
    assert "learning rate" in decayed.stop_reason and decayed.epochs == 3  # 5e-3 * 0.1**(6/2) = 5e-6 < 1e-5
    # the target force MAE: the same run stops at the first epoch whose validation force MAE reaches it
    straight = train(config_from_dict(small_run(tmp_path / "straight", **{**base, "max_epochs": 4})),
                     dataset=ethanol_data, log=quiet)
    target = straight.metrics[1]["valid_force_mae"]
    first = next(row["epoch"] for row in straight.metrics if row["valid_force_mae"] <= target)
    targeted = train(config_from_dict(small_run(tmp_path / "target", target_force_mae=target, **base)),
                     dataset=ethanol_data, log=quiet)
    assert targeted.epochs == first and targeted.stop_reason.startswith("target_force_mae:")
    # the time budget stops within the first epoch, after its first step (2 batches of 10 an epoch);
    # a clock of one second per optimiser step makes this independent of the machine's speed
    from so3krates_openmm.training.trainer import Trainer

    monkeypatch.setattr(Trainer, "elapsed", property(lambda trainer: float(trainer.schedule.steps)))
    timed = train(config_from_dict(small_run(tmp_path / "time", max_time="0.5s", **base)),
                  dataset=ethanol_data, log=quiet)
    assert timed.epochs == 0 and timed.steps == 1 and timed.stop_reason.startswith("max_time: reached --max-time")
    assert [(row["epoch"], row["epoch_fraction"]) for row in timed.metrics] == [(1, 0.5)]
    assert timed.test_report["training"]["stop_reason"] == timed.stop_reason
    assert timed.test_report["epoch"] == 1 and timed.test_report["epoch_fraction"] == 0.5


def test_shifts_of_a_single_molecule_are_an_even_per_atom_share():
    """One composition determines only the sum of its shifts: the fit spreads the mean energy evenly per atom."""
    counts = np.array([[2.0, 6.0, 1.0]] * 5)
    energies = np.array([-900.0, -901.0, -899.5, -900.2, -900.3])
    shifts = fit_energy_shifts(counts, energies, [6, 1, 8])
    assert shifts[6] == pytest.approx(shifts[1]) == pytest.approx(shifts[8]) == pytest.approx(np.mean(energies) / 9)


def test_run_interrupted_mid_epoch_resumes_from_the_mid_epoch_checkpoint(
    tmp_path: Path, ethanol_data: MolecularDataset
):
    """A checkpoint after every step (tiny interval); the run dies in step 7 of 10 of epoch 2 and resumes there."""
    options = {
        "max_epochs": 2,
        "train_size": 40,
        "valid_size": 10,
        "test_size": 10,
        "batch_size": 8,
        "checkpoint_interval": "0.0001s",
    }
    straight = train(config_from_dict(small_run(tmp_path / "straight", **options)), dataset=ethanol_data, log=quiet)

    trainer = Trainer(config_from_dict(small_run(tmp_path / "broken", **options)), dataset=ethanol_data, log=quiet)
    trainer.setup()
    schedule_step = trainer.schedule.step

    def step_that_dies_in_step_7() -> None:
        if trainer.schedule.steps == 7:
            raise KeyboardInterrupt
        schedule_step()

    trainer.schedule.step = step_that_dies_in_step_7  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    state = read_checkpoint(tmp_path / "broken" / "last_checkpoint.pt")["extra"]["training_state"]
    assert state["epoch"] == 1 and state["epoch_in_progress"]["batches_done"] == 2 and state["step"] == 7

    messages: list[str] = []
    resumed = train(
        config_from_dict(small_run(tmp_path / "broken", resume=True, **options)),
        dataset=ethanol_data,
        log=messages.append,
    )
    assert any("in epoch 2 after 2 batches (step 7)" in message for message in messages)
    assert resumed.steps == straight.steps == 10
    for a, b in zip(straight.metrics, resumed.metrics, strict=True):
        for column in METRIC_COLUMNS:
            if column != "time":
                assert a[column] == pytest.approx(b[column], rel=1e-12, abs=1e-15), column
    weights_a = read_checkpoint(tmp_path / "straight" / "last_checkpoint.pt")["state_dict"]
    weights_b = read_checkpoint(tmp_path / "broken" / "last_checkpoint.pt")["state_dict"]
    assert all(torch.equal(weights_a[key], weights_b[key]) for key in weights_a)


def test_an_epoch_can_be_run_by_hand_after_setup(tmp_path: Path, ethanol_data: MolecularDataset):
    """The building blocks work outside ``run`` (as the throughput benchmark uses them)."""
    trainer = Trainer(
        config_from_dict(small_run(tmp_path / "run", train_size=10, valid_size=5, test_size=5)),
        dataset=ethanol_data,
        log=quiet,
    )
    trainer.setup()
    trainer.setup()  # idempotent
    loss = trainer.train_epoch(1)
    assert np.isfinite(loss) and loss > 0 and trainer.schedule.steps == 2


def test_time_budget_stops_within_an_epoch_and_a_larger_budget_continues_the_same_run(
    tmp_path: Path, ethanol_data: MolecularDataset
):
    """Budget reached in step 7 (epoch 2 of 5-batch epochs): stop, validate, checkpoint, report; resumed with a
    larger --max-time the run finishes epoch 2 and ends as an uninterrupted one."""
    options = {"max_epochs": 3, "train_size": 40, "valid_size": 10, "test_size": 10, "batch_size": 8, "max_time": "1h"}
    straight = train(config_from_dict(small_run(tmp_path / "straight", **options)), dataset=ethanol_data, log=quiet)

    trainer = Trainer(config_from_dict(small_run(tmp_path / "budget", **options)), dataset=ethanol_data, log=quiet)
    trainer.setup()
    schedule_step = trainer.schedule.step

    def step_that_uses_up_the_budget_in_step_7() -> None:
        schedule_step()
        if trainer.schedule.steps == 7:
            trainer.elapsed_before += 3600.0  # the clock, as if the step had taken an hour

    trainer.schedule.step = step_that_uses_up_the_budget_in_step_7  # type: ignore[method-assign]
    stopped = trainer.run()
    assert stopped.stop_reason == "max_time: reached --max-time 1h in epoch 2 after 2 of 5 batches"
    assert stopped.epochs == 1 and stopped.steps == 7
    output = tmp_path / "budget"
    rows = read_metrics_csv(output / "metrics.csv")
    assert [(row["epoch"], row["step"], row["epoch_fraction"]) for row in rows] == [(1, 5, 1.0), (2, 7, 0.4)]
    assert rows[1]["valid_loss"] == pytest.approx(trainer.evaluate(trainer.valid_data)["loss"], rel=1e-12)
    state = read_checkpoint(output / "last_checkpoint.pt")["extra"]["training_state"]
    assert state["epoch"] == 1 and state["step"] == 7 and state["stop_reason"] == stopped.stop_reason
    assert state["epoch_in_progress"]["batches_done"] == 2
    report = json.loads((output / "test_report.json").read_text())
    assert report["training"]["stop_reason"] == stopped.stop_reason and report["training"]["steps"] == 7

    messages: list[str] = []
    resumed = train(
        config_from_dict(small_run(output, resume=True, **dict(options, max_time="3h"))),
        dataset=ethanol_data,
        log=messages.append,
    )
    assert any("in epoch 2 after 2 batches (step 7)" in message for message in messages)
    assert resumed.steps == straight.steps == 15 and resumed.stop_reason.startswith("max_epochs")
    rows = read_metrics_csv(output / "metrics.csv")
    assert [row["epoch_fraction"] for row in rows] == [1.0, 1.0, 1.0]  # epoch 2's cut row was replaced
    for a, b in zip(straight.metrics, rows, strict=True):
        for column in METRIC_COLUMNS:
            if column != "time":
                assert b[column] == pytest.approx(a[column], rel=1e-12, abs=1e-15), (a["epoch"], column)
    for name in ("last_checkpoint.pt", "best_checkpoint.pt"):
        weights_a = read_checkpoint(tmp_path / "straight" / name)["state_dict"]
        weights_b = read_checkpoint(output / name)["state_dict"]
        assert all(torch.equal(weights_a[key], weights_b[key]) for key in weights_a), name
    assert resumed.test_report["errors"] == straight.test_report["errors"]


def test_split_file_gives_the_split_and_best_checkpoints_are_kept(tmp_path: Path, ethanol_data: MolecularDataset):
    order = np.random.default_rng(3).permutation(len(ethanol_data))
    chosen = {"train": order[:60].tolist(), "valid": order[60:80].tolist(), "test": order[80:95].tolist()}
    split_path = tmp_path / "split.json"
    split_path.write_text(json.dumps(chosen))
    values = small_run(tmp_path / "run", max_epochs=3, split_file=str(split_path), keep_best_checkpoints=True)
    for key in ("train_size", "valid_size", "test_size"):
        values.pop(key)
    result = Trainer(config_from_dict(values), dataset=ethanol_data, log=quiet).run()
    state = read_checkpoint(tmp_path / "run" / "last_checkpoint.pt")["extra"]["training_state"]
    assert {part: state["split"][part].tolist() for part in chosen} == chosen
    assert result.test_report["structures"] == 15
    best_epochs = [row["epoch"] for row in result.metrics
                   if row["valid_loss"] == min(r["valid_loss"] for r in result.metrics if r["epoch"] <= row["epoch"])]
    kept = sorted(path.name for path in (tmp_path / "run" / "best_checkpoints").iterdir())
    assert kept == [f"epoch_{epoch:04d}.pt" for epoch in best_epochs]
    last_kept = read_checkpoint(tmp_path / "run" / "best_checkpoints" / kept[-1])
    best = read_checkpoint(tmp_path / "run" / "best_checkpoint.pt")
    assert torch.equal(last_kept["state_dict"]["embedding.weight"], best["state_dict"]["embedding.weight"])
    assert last_kept["extra"]["training"]["valid"]["force_mae"] == pytest.approx(
        result.metrics[best_epochs[-1] - 1]["valid_force_mae"])


@pytest.mark.parametrize(("content", "message"), [
    ({"train": [0, 1], "valid": [1, 2]}, "share 1 frame"),
    ({"train": [0, 1], "valid": [500]}, "outside the data's 200 frames"),
    ({"train": [0, 1]}, "no 'valid' split"),
    ({"train": [0, 0], "valid": [2]}, "more than once"),
])
def test_a_bad_split_file_is_refused_naming_the_problem(tmp_path: Path, ethanol_data: MolecularDataset,
                                                        content: dict, message: str):
    split_path = tmp_path / "split.json"
    split_path.write_text(json.dumps(content))
    values = small_run(tmp_path / "run", max_epochs=1, split_file=str(split_path))
    for key in ("train_size", "valid_size", "test_size"):
        values.pop(key)
    with pytest.raises(TrainingError, match=message):
        Trainer(config_from_dict(values), dataset=ethanol_data, log=quiet).run()


def test_split_file_excludes_split_sizes(tmp_path: Path):
    from so3krates_openmm.training import ConfigError

    with pytest.raises(ConfigError, match="drop --train-size"):
        config_from_dict({"data": "x.npz", "split_file": "split.json", "train_size": 10})
