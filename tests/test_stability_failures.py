"""bench/stability_study/failures.py: which frames of a stopped run are labelled."""

from __future__ import annotations

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
