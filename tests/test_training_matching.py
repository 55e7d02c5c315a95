"""Two models at the same test error: the checkpoint-matching rule and the per-frame error table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule

from so3krates_openmm.data.dataset import MolecularDataset
from so3krates_openmm.training import Trainer, TrainingError, config_from_dict
from so3krates_openmm.training.evaluation import evaluate_checkpoint
from so3krates_openmm.training.matching import (
    error_statistics,
    match_force_errors,
    plot_error_histograms,
    run_checkpoints,
)
from so3krates_openmm.training.synthetic import teacher_dataset

SMALL = {"features": 16, "layers": 1, "heads": 2, "radial_basis_size": 8, "cutoff": 4.0}


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[dict[str, Path], MolecularDataset, list[int]]:
    """An invariant student trained 1 epoch and an equivariant one trained 6 epochs on one split file."""
    ethanol = molecule("CH3CH2OH")
    data = teacher_dataset(ethanol.numbers, ethanol.positions, 120, displacement=0.1, force_rms=20.0,
                           shifts={1: -310.0, 6: -23750.0, 8: -47100.0})
    root = tmp_path_factory.mktemp("pair")
    split = {"train": list(range(80)), "valid": list(range(80, 100)), "test": list(range(100, 120))}
    (root / "split.json").write_text(json.dumps(split))
    runs = {}
    for name, degrees, epochs in (("invariant", [], 1), ("equivariant", [1, 2], 6)):
        config = config_from_dict(dict(
            data="<teacher>", split_file=str(root / "split.json"), batch_size=5, lr=5e-3, threads=1,
            progress=False, patience=None, max_epochs=epochs, keep_best_checkpoints=True, degrees=degrees,
            output=str(root / name), **SMALL))
        Trainer(config, dataset=data, log=lambda message: None).run()
        runs[name] = root / name
    return runs, data, split["test"]


def test_the_less_accurate_run_is_the_reference_and_the_other_is_matched_by_the_rule(pair):
    runs, data, test = pair
    match = match_force_errors(runs, data, test, tolerance=0.5)
    assert match["reference"] == "invariant"
    checkpoints = run_checkpoints(runs["equivariant"])
    target = run_checkpoints(runs["invariant"])[-1]["valid_force_mae"]
    order = sorted(checkpoints, key=lambda entry: abs(entry["valid_force_mae"] - target))
    tried = match["candidates_tried"]
    assert [entry["checkpoint"] for entry in tried] == [entry["checkpoint"] for entry in order[:len(tried)]]
    reference_mae = evaluate_checkpoint(runs["invariant"] / "best_checkpoint.pt", data, test)["errors"]["force_mae"]
    assert match["models"]["invariant"]["test_force_mae"] == pytest.approx(reference_mae)
    for entry in tried:
        mae = evaluate_checkpoint(entry["checkpoint"], data, test)["errors"]["force_mae"]
        assert entry["relative_difference"] == pytest.approx(abs(mae - reference_mae) / reference_mae)
    if match["matched"]:  # the first candidate within the tolerance, none before it
        assert tried[-1]["relative_difference"] <= 0.5
        assert all(entry["relative_difference"] > 0.5 for entry in tried[:-1])
        assert match["models"]["equivariant"]["checkpoint"] == tried[-1]["checkpoint"]
    else:
        assert len(tried) == len(checkpoints)
    assert match["force_unit"] == "kcal/mol/Angstrom"


def test_an_impossible_tolerance_reports_the_closest_unmatched(pair):
    runs, data, test = pair
    match = match_force_errors(runs, data, test, tolerance=1e-9)
    assert not match["matched"]
    assert len(match["candidates_tried"]) == len(run_checkpoints(runs["equivariant"]))
    assert match["relative_difference"] == min(entry["relative_difference"] for entry in match["candidates_tried"])


def test_a_run_without_a_best_checkpoint_is_refused(tmp_path: Path):
    with pytest.raises(TrainingError, match="train it first"):
        run_checkpoints(tmp_path)


def test_error_table_and_histogram(tmp_path: Path):
    values = np.arange(1, 101, dtype=float)
    table = error_statistics(values)
    assert table["frames"] == 100 and table["mean"] == 50.5 and table["median"] == 50.5
    assert table["std"] == pytest.approx(np.sqrt((100**2 - 1) / 12)) and table["p95"] == pytest.approx(95.05)
    path = plot_error_histograms({"a": values, "b": values * 2}, tmp_path / "h.png", xlabel="force MAE")
    assert path.stat().st_size > 5000
    with pytest.raises(ValueError, match="no per-frame errors"):
        error_statistics([])
