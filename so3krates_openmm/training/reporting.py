"""Files a training run writes besides checkpoints: ``metrics.csv``, the learning-curve PNG,
``test_report.json``, and the human-readable summaries printed with them."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from so3krates_openmm.files import write_atomically

#: Columns of ``metrics.csv`` (one row per epoch). Errors in the data's units; time in seconds of training;
#: ``epoch_fraction``: the fraction of the epoch's batches trained, 1 except for an epoch cut short by the
#: time budget (``--max-time``; a resumed run replaces that row when it completes the epoch).
METRIC_COLUMNS = (
    "epoch",
    "step",
    "lr",
    "train_loss",
    "valid_loss",
    "valid_energy_mae",
    "valid_energy_rmse",
    "valid_force_mae",
    "valid_force_rmse",
    "time",
    "epoch_fraction",
)

#: Values of columns that rows written by older versions lack.
_COLUMN_DEFAULTS = {"epoch_fraction": 1.0}


def write_metrics_csv(path: str | Path, rows: Sequence[dict[str, float]]) -> Path:
    """Write all epochs' metrics (rewritten whole each time, so a resumed run never duplicates epochs)."""
    path = Path(path)
    lines: list[str] = [",".join(METRIC_COLUMNS)]
    for row in rows:
        lines.append(",".join(_format(_value(row, column)) for column in METRIC_COLUMNS))
    return write_atomically(path, "\n".join(lines) + "\n")


def read_metrics_csv(path: str | Path) -> list[dict[str, float]]:
    """Rows of a ``metrics.csv`` as dicts of numbers."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def _value(row: dict[str, float], column: str) -> float:
    return row[column] if column in row or column not in _COLUMN_DEFAULTS else _COLUMN_DEFAULTS[column]


def epoch_position(row: dict[str, float]) -> float:
    """Where a row lies on the epoch axis: ``epoch`` for a complete epoch, less for one cut short."""
    return row["epoch"] - 1.0 + _value(row, "epoch_fraction")


def _format(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def plot_learning_curve(path: str | Path, rows: Sequence[dict[str, float]], energy_unit: str) -> Path:
    """Learning-curve PNG: losses and validation force/energy MAE per epoch (log scale; an epoch cut short by
    the time budget is drawn at its fraction)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    path = Path(path)
    epochs = [epoch_position(row) for row in rows]
    figure, (loss_axis, error_axis) = pyplot.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [row["train_loss"] for row in rows], label="train")
    loss_axis.plot(epochs, [row["valid_loss"] for row in rows], label="validation (EMA)")
    loss_axis.set(xlabel="epoch", ylabel="weighted MSE loss", yscale="log", title="loss")
    loss_axis.legend()
    error_axis.plot(epochs, [row["valid_force_mae"] for row in rows], label=f"force MAE ({energy_unit}/Å)")
    error_axis.plot(epochs, [row["valid_energy_mae"] for row in rows], label=f"energy MAE ({energy_unit})")
    error_axis.set(xlabel="epoch", yscale="log", title="validation errors")
    error_axis.legend()
    figure.tight_layout()
    try:
        return write_atomically(path, lambda temporary: figure.savefig(temporary, dpi=100))
    finally:
        pyplot.close(figure)


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return write_atomically(path, json.dumps(data, indent=2) + "\n")


def format_test_report(report: dict[str, Any]) -> str:
    """A few lines of the test errors, in the data's units and in meV, meV/Å."""
    unit = report["energy_unit"]
    data, mev = report["errors"], report["errors_meV"]
    fraction = report.get("epoch_fraction", 1.0)
    epoch = f"{report['epoch']}" + (f" ({fraction:.0%} of it: time budget)" if fraction < 1.0 else "")
    lines = [
        f"test set: {report['structures']} structures (errors of the best checkpoint, epoch {epoch})",
        (
            f"  energy MAE  {data['energy_mae']:.5g} {unit}  = {mev['energy_mae']:.4g} meV"
            f"   (RMSE {data['energy_rmse']:.5g} {unit} = {mev['energy_rmse']:.4g} meV)"
        ),
        f"  force MAE   {data['force_mae']:.5g} {unit}/Å = {mev['force_mae']:.4g} meV/Å",
        f"  force RMSE  {data['force_rmse']:.5g} {unit}/Å = {mev['force_rmse']:.4g} meV/Å",
    ]
    per_element = ", ".join(
        f"{element} {value:.4g} ({mev['force_mae_per_element'][element]:.4g} meV/Å)"
        for element, value in data["force_mae_per_element"].items()
    )
    lines.append(f"  force MAE per element ({unit}/Å): {per_element}")
    return "\n".join(lines)
