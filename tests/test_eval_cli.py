"""`so3krates-eval`: errors of a checkpoint on a data set, as the trainer's test report computes them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ETHANOL_WATER_NUMBERS, ETHANOL_WATER_POSITIONS

from so3krates_openmm.data.dataset import DataError, MolecularDataset
from so3krates_openmm.data.formats import save_npz
from so3krates_openmm.training.evaluation import evaluate_checkpoint
from so3krates_openmm.training.splits import read_split
from so3krates_openmm.units import energy_conversion

N_FRAMES = 5


@pytest.fixture
def data() -> MolecularDataset:
    """Five displaced ethanol+water frames with made-up reference energies (kcal/mol) and forces."""
    rng = np.random.default_rng(4)
    positions = ETHANOL_WATER_POSITIONS + rng.normal(scale=0.05, size=(N_FRAMES, len(ETHANOL_WATER_NUMBERS), 3))
    energies = rng.normal(-400.0, 5.0, size=N_FRAMES)
    forces = rng.normal(scale=20.0, size=positions.shape)
    return MolecularDataset(np.array(ETHANOL_WATER_NUMBERS), positions, energies, forces, "kcal/mol",
                            {"source": "test frames"})


def expected_errors(model, data: MolecularDataset, frames) -> dict:
    """The errors computed here from the model's own predictions, frame by frame (numpy)."""
    numbers = torch.as_tensor(data[0].atomic_numbers)
    energy_errors, force_errors = [], []
    for i in frames:
        energy, forces = model.energy_and_forces(numbers, torch.as_tensor(data[i].positions))
        energy_errors.append(float(energy[0]) - data[i].energy)
        force_errors.append(forces.detach().numpy() - data[i].forces)
    de, df = np.array(energy_errors), np.array(force_errors)
    per_element = {}
    for z, symbol in ((1, "H"), (6, "C"), (8, "O")):
        per_element[symbol] = np.abs(df[:, data[0].atomic_numbers == z]).mean()
    return {"energy_mae": np.abs(de).mean(), "energy_rmse": np.sqrt((de**2).mean()),
            "force_mae": np.abs(df).mean(), "force_rmse": np.sqrt((df**2).mean()),
            "force_mae_per_element": per_element}


def assert_errors(report_errors: dict, expected: dict, factor: float = 1.0) -> None:
    for key in ("energy_mae", "energy_rmse", "force_mae", "force_rmse"):
        assert report_errors[key] == pytest.approx(expected[key] * factor, rel=1e-9), key
    assert report_errors["force_mae_per_element"].keys() == expected["force_mae_per_element"].keys()
    for symbol, value in expected["force_mae_per_element"].items():
        assert report_errors["force_mae_per_element"][symbol] == pytest.approx(value * factor, rel=1e-9), symbol


def test_errors_are_those_of_the_model_predictions(small_model, checkpoint, data):
    report = evaluate_checkpoint(checkpoint, data, batch_size=2)
    expected = expected_errors(small_model, data, range(N_FRAMES))
    assert report["structures"] == N_FRAMES and report["frames"] == list(range(N_FRAMES))
    assert report["energy_unit"] == "kcal/mol" and report["force_unit"] == "kcal/mol/Angstrom"
    assert_errors(report["errors"], expected)
    assert_errors(report["errors_meV"], expected, energy_conversion("kcal/mol", "meV"))
    assert report["errors"]["energy_mae"] > 1.0, "a random model on made-up labels is far off"

    subset = evaluate_checkpoint(checkpoint, data, indices=[3, 1], batch_size=16)
    assert subset["structures"] == 2 and subset["frames"] == [3, 1]
    assert_errors(subset["errors"], expected_errors(small_model, data, [3, 1]))

    # Data in eV: converted for the kcal/mol model, errors reported in eV (and the same in meV).
    in_ev = evaluate_checkpoint(checkpoint, data.converted("eV"), batch_size=3)
    assert in_ev["energy_unit"] == "eV" and in_ev["model_energy_unit"] == "kcal/mol"
    assert_errors(in_ev["errors"], expected, energy_conversion("kcal/mol", "eV"))
    assert_errors(in_ev["errors_meV"], expected, energy_conversion("kcal/mol", "meV"))


def test_unknown_elements_and_bad_indices_are_refused(checkpoint, data):
    chlorine = MolecularDataset(np.array([6, 17, 1, 1, 1]), np.array([[[0, 0, 0], [1.8, 0, 0], [-0.4, 1, 0],
                                                                      [-0.4, -0.5, 0.9], [-0.4, -0.5, -0.9]]]),
                                [0.0], np.zeros((1, 5, 3)), "kcal/mol", {"source": "chloromethane.npz"})
    with pytest.raises(DataError, match=r"chloromethane.npz\) has element\(s\) Cl \(Z=17\) that the checkpoint"):
        evaluate_checkpoint(checkpoint, chlorine)
    with pytest.raises(DataError, match="out of range for a data set of 5 frames"):
        evaluate_checkpoint(checkpoint, data, indices=[0, 5])
    with pytest.raises(FileNotFoundError):
        evaluate_checkpoint(Path(checkpoint).with_name("missing.pt"), data)


def test_per_frame_errors_match_each_frame(tmp_path, small_model, checkpoint, data, capsys):
    from so3krates_openmm.cli.eval import main as eval_main

    data.metadata.update(frame_indices=[10, 20, 30, 40, 50], frame_times_ps=[1.0, 2.0, 3.0, 4.0, 5.0])
    report = evaluate_checkpoint(checkpoint, data, indices=[4, 0, 2], batch_size=2, per_frame=True)
    table = report["per_frame"]
    assert table["frame"] == [4, 0, 2] and table["source_frame"] == [50, 10, 30]
    assert table["time_ps"] == [5.0, 1.0, 3.0]
    numbers = torch.as_tensor(data[0].atomic_numbers)
    for row, i in enumerate([4, 0, 2]):
        energy, forces = small_model.energy_and_forces(numbers, torch.as_tensor(data[i].positions))
        difference = forces.detach().numpy() - data[i].forces
        assert table["energy_error"][row] == pytest.approx(float(energy[0]) - data[i].energy, rel=1e-9)
        assert table["force_mae"][row] == pytest.approx(np.abs(difference).mean(), rel=1e-9)
        assert table["force_max_error"][row] == pytest.approx(np.linalg.norm(difference, axis=1).max(), rel=1e-9)
    assert np.mean(np.abs(table["energy_error"])) == pytest.approx(report["errors"]["energy_mae"], rel=1e-9)

    path = save_npz(data, tmp_path / "data.npz")
    csv_path = tmp_path / "errors" / "per_frame.csv"
    assert eval_main([str(checkpoint), "--data", str(path), "--per-frame", str(csv_path)]) == 0
    assert f"wrote {csv_path.with_suffix('.png')}" in capsys.readouterr().out
    lines = csv_path.read_text().splitlines()
    assert lines[0] == ("frame,source_frame,time_ps,energy_error (kcal/mol),force_mae (kcal/mol/Angstrom),"
                        "force_max_error (kcal/mol/Angstrom)")
    assert len(lines) == 1 + N_FRAMES and lines[3].startswith("2,30,3,")
    assert csv_path.with_suffix(".png").stat().st_size > 10_000


def test_command_line(tmp_path, small_model, checkpoint, data, capsys):
    from so3krates_openmm.cli.eval import main as eval_main

    path = save_npz(data, tmp_path / "data.npz")
    output = tmp_path / "report.json"
    assert eval_main([str(checkpoint), "--data", str(path), "--indices", "1-3", "--batch-size", "2",
                      "--json", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "3 structures" in printed and "energy MAE" in printed and "force MAE per element" in printed
    report = json.loads(output.read_text())
    assert report["frames"] == [1, 2, 3] and report["data"] == str(path)
    assert_errors(report["errors"], expected_errors(small_model, data, [1, 2, 3]))

    (tmp_path / "split.json").write_text(json.dumps({"train": [0], "valid": [1], "test": [4, 2]}))
    assert read_split(tmp_path / "split.json").tolist() == [4, 2]
    assert eval_main([str(checkpoint), "--data", str(path), "--split-file", str(tmp_path / "split.json"),
                      "--split", "valid", "--json", str(output)]) == 0
    assert json.loads(output.read_text())["frames"] == [1]
    assert eval_main([str(checkpoint), "--data", str(path), "--max-frames", "2", "--json", str(output)]) == 0
    assert json.loads(output.read_text())["frames"] == [0, 1]
    capsys.readouterr()

    chlorine = tmp_path / "chlorine.npz"
    np.savez(chlorine, R=np.zeros((1, 2, 3)) + [[0, 0, 0], [1.8, 0, 0]], E=[0.0], F=np.zeros((1, 2, 3)),
             z=np.array([6, 17]))
    for arguments, message in (
        (["--data", str(chlorine)], "Cl (Z=17) that the checkpoint"),
        (["--data", str(tmp_path / "none.npz")], "does not exist"),
        (["--data", str(path), "--split-file", str(checkpoint)], "holds no training split"),
        (["--data", str(path), "--indices", "0-9"], "out of range"),
    ):
        assert eval_main([str(checkpoint), *arguments]) == 2
        error = capsys.readouterr().err
        assert error.startswith("so3krates-eval: error: ") and message in error and error.count("\n") == 1


@pytest.mark.artifacts
def test_shipped_checkpoint_on_frames_of_its_test_split():
    repository = Path(__file__).resolve().parents[1]
    shipped = repository / "so3krates_openmm" / "pretrained" / "ac_ala3_nhme"
    data_dir = repository / "datasets" / "ac_ala3_nhme"
    from so3krates_openmm.data.formats import load_npz

    # The shipped model was trained on dataset.npz followed by md_frames_round1.npz (its PROVENANCE.md).
    data = MolecularDataset.concatenate(
        [load_npz(data_dir / "dataset.npz"), load_npz(data_dir / "md_frames_round1.npz")]
    )
    test_split = read_split(data_dir / "training" / "split.json", "test")
    assert len(test_split) == 200 and test_split.max() < len(data) == 2550
    report = evaluate_checkpoint(shipped / "best_checkpoint.pt", data, test_split[:8])
    assert report["structures"] == 8 and report["epoch"] == 21
    assert set(report["errors"]["force_mae_per_element"]) == {"H", "C", "N", "O"}
    assert 0.2 < report["errors"]["force_mae"] < 1.5  # test_report.json: 0.687 kcal/mol/Å over 200 frames
