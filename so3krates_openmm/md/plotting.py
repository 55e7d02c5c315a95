"""Matplotlib set-up shared by the analyses: the non-interactive Agg backend and saving."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    """``matplotlib.pyplot`` with the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | Path, dpi: int = 150) -> Path:
    """Save and close a figure; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    pyplot().close(figure)
    return path


def broken_at_gaps(times: np.ndarray, values: np.ndarray, factor: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """``times`` and ``values`` with a NaN after every jump in time longer than ``factor`` x the usual
    spacing (records lost from a run), so that a line plot breaks there instead of bridging the gap."""
    times, values = np.asarray(times, dtype=float), np.asarray(values, dtype=float)
    if len(times) < 3:
        return times, values
    spacing = np.diff(times)
    jumps = np.flatnonzero(spacing > factor * np.median(spacing)) + 1
    return np.insert(times, jumps, np.nan), np.insert(values, jumps, np.nan)
