"""bench/stability_study/train_pair.py end to end on a tiny molecule: the invariant model first, then the
equivariant one stops once it matches, then the match, export and error report."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import yaml
from ase.build import molecule
from ase.io import write

from so3krates_openmm.data.formats import save_npz
from so3krates_openmm.files import exclusive_lock
from so3krates_openmm.training.synthetic import teacher_dataset

STUDY = Path(__file__).resolve().parents[1] / "bench" / "stability_study"
TINY = {"features": 24, "layers": 1, "heads": 2, "radial_basis_size": 8, "cutoff": 4.0, "batch_size": 5,
        "lr": 5e-3, "patience": None}


def test_the_second_model_stops_at_the_first_ones_error_and_the_pair_is_matched(tmp_path: Path, monkeypatch,
                                                                                 capsys) -> None:
    ethanol = molecule("CH3CH2OH")
    data = teacher_dataset(ethanol.numbers, ethanol.positions, 120, displacement=0.1, force_rms=20.0,
                           shifts={1: -310.0, 6: -23750.0, 8: -47100.0})
    data.metadata = {"frames": 120, "settings": {"temperatures_K": [300.0, 500.0], "frames_per_temperature": 60}}
    data_file = save_npz(data, tmp_path / "ethanol.npz")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": list(range(80)), "valid": list(range(80, 100)),
                                 "test": list(range(100, 120))}))
    structure = tmp_path / "ethanol.xyz"
    write(structure, ethanol)
    extra = tmp_path / "tiny.yaml"
    extra.write_text(yaml.safe_dump(TINY))

    monkeypatch.syspath_prepend(str(STUDY))
    for name in ("study_common", "train_pair", "run_study"):
        sys.modules.pop(name, None)
    import study_common
    import train_pair

    control = tmp_path / "runs/dha/train_equivariant"  # the control model: here the equivariant run's best
    monkeypatch.setitem(study_common.MOLECULES, "dha", study_common.Molecule(
        "dha", (data_file,), split, structure, control / "best_checkpoint.pt", control / "test_report.json"))
    common = ["--molecule", "dha", "--config", str(extra), "--root", str(tmp_path / "runs"),
              "--bench-dir", str(tmp_path / "bench"), "--no-progress", "--no-process-tuning"]
    assert train_pair.main([*common, "--model", "invariant", "--max-epochs", "1"]) == 0
    assert "not matched yet" in capsys.readouterr().out
    invariant = json.loads((tmp_path / "runs/dha/train_invariant/test_report.json").read_text())
    assert invariant["training"]["stop_reason"].startswith("max_epochs")

    assert train_pair.main([*common, "--model", "equivariant", "--max-epochs", "30"]) == 0
    out = capsys.readouterr().out
    assert "stops when its validation force MAE reaches" in out
    run = tmp_path / "runs/dha/train_equivariant"
    report = json.loads((run / "test_report.json").read_text())
    assert report["training"]["stop_reason"].startswith("target_force_mae")
    reference = json.loads((tmp_path / "bench/dha/models.json").read_text())["models"]["invariant"]
    rows = (run / "metrics.csv").read_text().splitlines()
    last_valid_force_mae = float(rows[-1].split(",")[rows[0].split(",").index("valid_force_mae")])
    assert last_valid_force_mae <= 0.95 * reference["valid_force_mae"] + 1e-12
    assert report["epoch"] < 30  # stopped long before the budget

    models = json.loads((tmp_path / "bench/dha/models.json").read_text())
    assert models["models"]["invariant"]["role"] == "reference"
    for model in ("equivariant", "invariant"):
        assert (Path(__file__).resolve().parents[1] / models["models"][model]["model_pt"]).is_file()
    assert (tmp_path / "bench/dha/errors_histogram.png").stat().st_size > 5_000

    # the study's runs on the matched pair: one short run per model at 500 K, then the summary. First with the
    # invariant run held by another driver: this one leaves it alone; then that run alone.
    import run_study

    study = ["--molecules", "dha", "--temperatures", "500", "--runs", "1", "--ps", "0.05", "--segment-ps", "0.025",
             "--frame-interval", "10", "--checkpoint-interval", "50", "--status-interval", "1",
             "--root", str(tmp_path / "runs"), "--bench-dir", str(tmp_path / "bench")]
    capsys.readouterr()
    with exclusive_lock(tmp_path / "runs/dha/md/invariant/500K/run_0" / run_study.DRIVER_LOCK):
        assert run_study.main(study) == 0
    out = capsys.readouterr().out
    assert "1 run(s) left to the other driver(s) running them: dha invariant 500 K run 0" in out
    assert "dha equivariant 500 K run 0: completed" in out or "dha equivariant 500 K run 0: stopped" in out
    assert not (tmp_path / "runs/dha/md/invariant/500K/run_0/segments.json").exists()
    assert run_study.main(study) == 0
    out = capsys.readouterr().out
    assert "2 of 3 runs finished; 1 to run" in out and "dha invariant 500 K run 0:" in out
    summary = json.loads((tmp_path / "bench/summary.json").read_text())
    assert set(summary["dha"]) == {"equivariant", "invariant"}  # the schema; the control beside it
    controls = json.loads((tmp_path / "bench/control_summary.json").read_text())
    assert controls["dha"][study_common.CONTROL]["test_force_mae"] == report["errors"]["force_mae"]
    assert list(controls["dha"][study_common.CONTROL]["runs"]) == ["500"]
    assert 0.0 <= controls["dha"][study_common.CONTROL]["runs"]["500"][0] <= 1.0
    for model in ("equivariant", "invariant"):
        entry = summary["dha"][model]
        assert entry["test_force_mae"] == models["models"][model]["test_force_mae"]
        assert len(entry["runs"]["500"]) == 1 and 0.0 <= entry["runs"]["500"][0] <= 1.0

    # A new machine: only what bench/progress.py saved of runs/ comes back. Both trainings count as finished, no
    # run is run again, and the summary is the same.
    for model in ("equivariant", "invariant"):
        assert json.loads((tmp_path / "runs/dha/md" / model / "500K/run_0/result.json").read_text())["finished"]
    spec = importlib.util.spec_from_file_location("progress", STUDY.parent / "progress.py")
    progress = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(progress)
    assert progress.save(tmp_path / "runs", tmp_path / "store") == 0
    assert not list((tmp_path / "store").rglob("trajectory.dcd"))  # the results say all
    shutil.rmtree(tmp_path / "runs")
    progress.restore(tmp_path / "runs", tmp_path / "store")
    capsys.readouterr()
    records = (tmp_path / "bench/dha/models.json").read_bytes(), (tmp_path / "bench/dha/errors.json").read_bytes()
    assert train_pair.main([*common, "--model", "both", "--max-epochs", "30"]) == 0
    assert "both runs finished and matched" in capsys.readouterr().out
    assert ((tmp_path / "bench/dha/models.json").read_bytes(),
            (tmp_path / "bench/dha/errors.json").read_bytes()) == records  # not matched again
    assert run_study.main(study) == 0
    assert "3 of 3 runs finished; 0 to run" in capsys.readouterr().out
    assert json.loads((tmp_path / "bench/summary.json").read_text()) == summary
