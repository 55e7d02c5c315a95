"""Training options: paper defaults, YAML files, flags over files, and clear rejections."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from so3krates_openmm.cli.train import main as train_main
from so3krates_openmm.cli.train import parse_config
from so3krates_openmm.data.dataset import DataError, MolecularDataset
from so3krates_openmm.training import (
    ConfigError,
    TrainingConfig,
    TrainingError,
    config_from_dict,
    train,
)
from so3krates_openmm.training.config import paper_batch_size, parse_duration

TINY_MODEL = {"features": 8, "layers": 1, "heads": 2, "degrees": [1, 2], "radial_basis_size": 4, "cutoff": 3.0}


def tiny_dataset(n_frames: int = 12) -> MolecularDataset:
    rng = np.random.default_rng(0)
    numbers = np.array([8, 1, 1])
    positions = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]) + 0.05 * rng.standard_normal(
        (n_frames, 3, 3)
    )
    return MolecularDataset(numbers, positions, rng.standard_normal(n_frames), rng.standard_normal((n_frames, 3, 3)),
                            "kcal/mol", {"source": "<tiny water>"})


def test_defaults_are_the_papers_recipe():
    config = TrainingConfig(data="x.npz").validate()
    assert (config.features, config.layers, config.heads, list(config.degrees)) == (132, 3, 4, [1, 2, 3])
    assert (config.radial_basis_size, config.cutoff, config.cutoff_function, config.dtype) == (
        32, 5.0, "cosine", "float32"
    )
    assert (config.lr, config.energy_weight, config.force_weight) == (1e-3, 0.01, 0.99)
    assert (config.lr_decay, config.lr_decay_steps, config.min_lr) == (0.7, 1e5, 1e-5)
    assert [config.resolved_batch_size(n) for n in (499, 500, 999, 1000, 9999, 10000)] == [1, 5, 5, 10, 10, 100]
    assert [paper_batch_size(n) for n in (1, 200)] == [1, 1]


def test_yaml_files_and_flags_override(tmp_path: Path):
    (tmp_path / "run.yaml").write_text("data: [a.npz]\ntrain-size: 500\nvalid_size: 50\nbatch_size: 4\n"
                                       "degrees: [1, 2]\nlr: 1\nmax_time: 2h\n")
    from_yaml = parse_config(["--config", str(tmp_path / "run.yaml")])
    assert (from_yaml.train_size, from_yaml.valid_size, from_yaml.batch_size, from_yaml.degrees) == (500, 50, 4, [1, 2])
    assert isinstance(from_yaml.lr, float) and from_yaml.lr == 1.0 and from_yaml.max_time_seconds == 7200
    assert from_yaml.is_given("train_size") and not from_yaml.is_given("features")
    overridden = parse_config(
        ["--config", str(tmp_path / "run.yaml"), "--train-size", "0.25", "--batch-size", "8",
         "--degrees", "1", "2", "3", "--no-progress", "--clip-grad", "null", "--max-time", "30m"]
    )
    assert overridden.train_size == 0.25 and overridden.batch_size == 8 and overridden.degrees == [1, 2, 3]
    assert overridden.progress is False and overridden.clip_grad is None and overridden.max_time_seconds == 1800
    assert overridden.valid_size == 50  # kept from the file
    assert parse_config(["--data", "a.npz", "--energy-scale", "2.5"]).energy_scale == 2.5
    assert parse_config(["--data", "a.npz", "--max-time", "90"]).max_time_seconds == 90
    assert config_from_dict({"data": "a.npz", "max_time": 7200}).max_time_seconds == 7200  # seconds in a file
    assert parse_config(["--data", "a.npz", "--energy-scale", "none"]).energy_scale == "none"
    assert parse_config(["--data", "a.npz", "--test-size", "null", "--train-size", "3"]).test_size is None
    # the old spellings get a message naming the new one
    (tmp_path / "run.toml").write_text('data = "a.npz"\n')
    with pytest.raises(ConfigError, match="TOML config files are no longer read; write the same keys as YAML"):
        parse_config(["--config", str(tmp_path / "run.toml")])
    for flag in ("--clip-grad", "--checkpoint-interval"):
        with pytest.raises(ConfigError, match="write null for no value"):
            parse_config(["--data", "a.npz", flag, "none"])
    with pytest.raises(ConfigError, match=r"separate several values by spaces on the command line \(--degrees 1 2 3\)"):
        parse_config(["--data", "a.npz", "--degrees", "1,2"])
    (tmp_path / "one.yaml").write_text("data: a.npz\n")
    with pytest.raises(ConfigError, match=r"has a single value in a file: write it as a list"):
        parse_config(["--config", str(tmp_path / "one.yaml")])


@pytest.mark.parametrize(
    "values, message",
    [
        ({"data": "a", "max_epoch": 3}, "unknown key 'max_epoch'; did you mean 'max_epochs'"),
        ({"data": "a", "batchsize": 3}, "did you mean 'batch_size'"),
        ({"data": "a", "features": "big"}, "option 'features': expected int"),
        ({"data": "a", "layers": True}, "option 'layers': expected int"),
        ({"data": "a", "lr": "fast"}, "option 'lr': expected float"),
        ({"data": "a", "degrees": 2}, "a list option (data, degrees) has a single value"),
        ({"data": "a", "features": 30}, "divisible by heads"),
        ({"data": "a", "train_size": 1.5}, "fraction must be in (0, 1]"),
        ({"data": "a", "train_size": 0}, "'train_size' must be a positive number of frames"),
        ({"data": "a", "train_size": None}, "--train-size null trains on all frames but"),
        ({"data": "a", "max_time": "two hours"}, "cannot read the duration"),
        ({"data": "a", "energy_unit": "furlongs"}, "unknown energy unit"),
        ({"data": "a", "cutoff_function": "step"}, "cutoff_function must be one of"),
        ({"data": "a", "device": "tpu"}, "'device' must be"),
        ({"data": "a", "min_lr": 0.1}, "'min_lr'"),
        ({}, "no data file"),
    ],
)
def test_bad_options_are_rejected_with_clear_messages(values, message):
    with pytest.raises(ConfigError) as error:
        config_from_dict(values, "my.yaml")
    assert message in str(error.value)
    assert str(error.value).startswith("my.yaml")


def test_bad_config_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        parse_config(["--config", str(tmp_path / "missing.yaml")])
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="Unexpected config"):
        parse_config(["--config", str(tmp_path / "list.yaml")])
    (tmp_path / "typo.yaml").write_text("data: [a.npz]\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'learning_rate'"):
        parse_config(["--config", str(tmp_path / "typo.yaml")])
    (tmp_path / "typo.yaml").write_text("data: [a.npz]\nbatchsize: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'batchsize'; did you mean 'batch_size'"):
        parse_config(["--config", str(tmp_path / "typo.yaml")])


@pytest.mark.parametrize("text, seconds", [("2h", 7200), ("30m", 1800), ("1h30m", 5400), ("1.5h", 5400), ("90s", 90),
                                           ("90", 90), ("1d", 86400)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "h", "2 hours", "1h30", "-5m", "0s"])
def test_bad_durations(text):
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_split_larger_than_the_data_is_rejected(tmp_path: Path):
    config = config_from_dict(
        dict(data="<memory>", train_size=10, valid_size=5, output=str(tmp_path / "run"), **TINY_MODEL)
    )
    with pytest.raises(DataError, match="exceed the 12 frames"):
        train(config, dataset=tiny_dataset(12), log=lambda message: None)


def test_overlapping_atoms_in_the_data_are_rejected(tmp_path: Path):
    dataset = tiny_dataset(12)
    dataset.positions_flat[3 * 7 + 1] = dataset.positions_flat[3 * 7]  # frame 7: an H on the O
    config = config_from_dict(
        dict(data="<memory>", train_size=6, valid_size=3, output=str(tmp_path / "run"), **TINY_MODEL)
    )
    with pytest.raises(TrainingError, match="on top of each other"):
        train(config, dataset=dataset, log=lambda message: None)


def test_cli_reports_a_missing_data_file(tmp_path: Path, capsys):
    assert train_main(["--data", str(tmp_path / "nothing.npz"), "--output", str(tmp_path / "run")]) == 2
    assert "nothing.npz' does not exist" in capsys.readouterr().err
    assert train_main(["--data", "x.npz", "--max-epohcs", "3"]) == 2
    assert "did you mean --max-epochs?" in capsys.readouterr().err


def test_cli_reports_bad_data_files(tmp_path: Path, capsys):
    bad = tmp_path / "no_forces.npz"
    np.savez(bad, R=np.zeros((3, 2, 3)), E=np.zeros(3), z=np.array([1, 1]))
    assert train_main(["--data", str(bad), "--output", str(tmp_path / "run")]) == 2
    message = capsys.readouterr().err
    assert "no_forces.npz" in message and "missing key" in message and "'F'" in message


def test_help_lists_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        train_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "cutoff radius in Å (type: float, default: 5.0)" in text
    assert "number of SO3krates layers T (type: int, default: 3)" in text
    for flag in ("--data", "--energy-unit", "--train-size", "--valid-size", "--test-size", "--seed", "--features",
                 "--layers", "--heads", "--degrees", "--cutoff", "--cutoff-function", "--dtype", "--batch-size",
                 "--max-epochs", "--max-time", "--lr", "--energy-weight", "--force-weight", "--lr-decay",
                 "--lr-decay-steps", "--clip-grad", "--ema-decay", "--patience", "--output", "--resume", "--device",
                 "--threads", "--config", "--init-from"):
        assert flag in text, flag


def test_several_data_files_are_concatenated(tmp_path: Path, capsys):
    from so3krates_openmm.data.formats import save_npz

    first = save_npz(tiny_dataset(8), tmp_path / "first.npz")
    second = save_npz(tiny_dataset(6).converted("eV"), tmp_path / "second.npz")
    config = parse_config(["--data", str(first), str(second), "--train-size", "10", "--valid-size", "2",
                           "--max-epochs", "1", "--batch-size", "5", "--output", str(tmp_path / "run"),
                           "--no-progress",
                           *[f"--{key.replace('_', '-')}={value}"
                             for key, value in TINY_MODEL.items() if key != "degrees"],
                           "--degrees", "1", "2"])
    assert config.data == [str(first), str(second)] and config.degrees == [1, 2]
    result = train(config)
    output = capsys.readouterr().out
    assert "first.npz + " in output and "14 frames" in output and "energies in kcal/mol" in output
    assert result.test_report["structures"] == 2


def test_old_module_spelling_names_the_new_one():
    completed = subprocess.run([sys.executable, "-m", "so3krates_openmm.training", "--data", "x.npz"],
                               capture_output=True, text=True, timeout=120, check=False,
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert completed.returncode == 2 and "python -m so3krates_openmm.cli.train" in completed.stderr
