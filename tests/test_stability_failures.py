"""bench/stability_study: which frames of a stopped run are labelled (failures.py), and the summary of all
stopped runs (run_study.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "stability_study"))
from failures import chosen_frames  # noqa: E402


def test_the_window_ends_at_the_last_frame_the_monitor_passed() -> None:
    times = np.arange(1, 201) * 0.05  # frames every 50 fs, 10 ps; the monitor stopped at 7.0 ps
    baseline, window = chosen_frames(times, 7.0, 1.0, 8, 4)
    assert times[window[-1]] == pytest.approx(7.0)  # the frame at 7.05 ps is past the last good check
    assert times[window].min() >= 6.0 - 1e-9 and len(window) == 8
    assert np.all(np.diff(window) > 0)
    assert times[baseline[0]] == pytest.approx(0.05) and times[baseline].max() < 6.0 and len(baseline) == 4


def test_a_run_stopped_at_once_has_no_baseline_and_a_short_window() -> None:
    times = np.arange(1, 11) * 0.05
    baseline, window = chosen_frames(times, 0.1, 1.0, 8, 4)
    assert len(baseline) == 0 and list(window) == [0, 1]
    assert [len(part) for part in chosen_frames(times, 0.01, 1.0, 8, 4)] == [0, 0]  # nothing before the stop


def test_the_failures_summary_keys_records_by_molecule_model_temperature_and_run(tmp_path: Path) -> None:
    import run_study

    def stopped(molecule: str, model: str, temperature_K: float, index: int, replay: bool) -> run_study.StudyRun:
        output = tmp_path / "runs" / molecule / model / f"{temperature_K:g}K" / f"run_{index}"
        output.mkdir(parents=True)
        frames = [{"step": step, "energy_error": -10.0 * (step + 1), "force_max_error": 50.0 * (step + 1)}
                  for step in range(5)]
        record = {"run": f"run_{index}", "stop_ps": 12.5,
                  "replay": {"failure_step": 4, "timestep_fs": 0.5, "frames": frames} if replay else None}
        (output / "failure.json").write_text(json.dumps(record))
        return run_study.StudyRun(molecule, model, temperature_K, index, 0, 1, output / "start.pdb",
                                  output / "model.pt", output)

    runs = [stopped("dha", "invariant", 300.0, 0, True), stopped("dha", "equivariant", 500.0, 5, True),
            stopped("ac_ala3_nhme", "equivariant", 500.0, 2, False)]
    finished = run_study.StudyRun("dha", "equivariant", 300.0, 1, 0, 1, tmp_path / "s.pdb", tmp_path / "m.pt",
                                  tmp_path / "runs" / "unstopped")
    records = run_study.summarise_failures([*runs, finished], tmp_path / "bench")
    assert json.loads((tmp_path / "bench" / "failures.json").read_text()) == records
    assert records["dha"]["invariant"]["300"]["run_0"]["stop_ps"] == 12.5
    assert records["dha"]["equivariant"]["500"]["run_5"]["replay"]["failure_step"] == 4
    assert records["ac_ala3_nhme"]["equivariant"]["500"]["run_2"]["replay"] is None  # recorded, nothing to plot
    assert "300" not in records["dha"]["equivariant"]  # a run without failure.json is no failure
    assert (tmp_path / "bench" / "failures.png").stat().st_size > 0
    assert run_study.summarise_failures([finished], tmp_path / "none") == {}
    assert not (tmp_path / "none").exists()
