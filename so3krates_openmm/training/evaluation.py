"""Errors of a trained checkpoint on a data set (``so3krates-eval``), like the trainer's test report.

:func:`evaluate_checkpoint` runs the trainer's evaluation
(:func:`~so3krates_openmm.training.trainer.evaluate_model`: the same batches,
forces as minus the energy gradient, :class:`~.loss.ErrorAccumulator`) on
chosen frames of a data set and returns a report in the layout of
``test_report.json``: energy and force MAE/RMSE and the force MAE per element,
in the data's energy unit (``errors``) and in meV, meV/Å (``errors_meV``).

Checks: the data's elements must all be among the checkpoint's; energies in
another unit than the checkpoint's are converted for the model, and the
errors are reported in the data's unit.

Frames: all, or ``indices``; :func:`~so3krates_openmm.training.splits.read_split` takes the indices of
a training run's split (train/valid/test) from its ``last_checkpoint.pt`` or from a JSON file
(``{"test": [...], ...}`` or a plain list).

Per frame (``per_frame=True``, ``so3krates-eval --per-frame FILE.csv``): each frame's energy error and force
errors, with its trajectory frame and time when the data were labelled from a trajectory, so that one sees
where along an MD run the model leaves its data (:class:`PerFrameErrors`, :func:`write_per_frame`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from so3krates_openmm.data.dataset import DataError, MolecularDataset
from so3krates_openmm.model.checkpoint import (
    file_sha256,
    load_model,
    read_checkpoint,
)
from so3krates_openmm.training.batches import Batch, PackedData
from so3krates_openmm.training.finetune import _elements_text
from so3krates_openmm.training.loss import in_mev
from so3krates_openmm.training.reporting import format_test_report
from so3krates_openmm.training.trainer import (
    evaluate_model,
    resolve_device,
    validate_data,
)
from so3krates_openmm.units import energy_conversion


def _scaled(errors: dict[str, Any], factor: float) -> dict[str, Any]:
    """MAE/RMSE values (and the per-element force MAE) multiplied by a unit factor."""
    scaled = dict(errors)
    for key in ("energy_mae", "energy_rmse", "force_mae", "force_rmse"):
        scaled[key] = errors[key] * factor
    scaled["force_mae_per_element"] = {k: v * factor for k, v in errors["force_mae_per_element"].items()}
    return scaled


def evaluate_checkpoint(
    checkpoint: str | Path,
    dataset: MolecularDataset,
    indices: Sequence[int] | np.ndarray | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    per_frame: bool = False,
) -> dict[str, Any]:
    """Energy and force errors of the model in ``checkpoint`` on the frames ``indices`` (default all) of ``dataset``.

    Returns a report like ``test_report.json``: ``structures``, ``checkpoint`` (and its ``checkpoint_sha256``,
    ``epoch`` when it comes from training), ``data``, ``energy_unit`` (the data's), ``model_energy_unit``,
    ``frames`` (the indices), ``model``, ``errors`` (data's unit) and ``errors_meV``. With ``per_frame``
    also ``per_frame``: the errors of every frame (see :class:`PerFrameErrors`), in the data's unit.

    Raises:
        FileNotFoundError, CheckpointError: no such checkpoint, or not one.
        DataError: elements the checkpoint does not know, indices out of range, no frames.
    """
    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}")
    frames = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(frames) == 0:
        raise DataError(f"{dataset.source}: no frames to evaluate")
    if frames.min() < 0 or frames.max() >= len(dataset):
        raise DataError(f"{dataset.source}: frame indices {frames.min()}..{frames.max()} out of range for a data set "
                        f"of {len(dataset)} frames")
    target = resolve_device(device)
    model = load_model(checkpoint, map_location=target)
    chosen = dataset.subset(frames) if indices is not None else dataset
    unknown = sorted({int(z) for z in chosen.elements} - set(model.config.elements))
    if unknown:
        raise DataError(
            f"the data ({dataset.source}) has element(s) {_elements_text(unknown)} that the checkpoint {checkpoint} "
            f"does not know; it knows {_elements_text(model.config.elements)}"
        )
    model_unit = model.config.energy_unit
    data = PackedData(chosen.converted(model_unit), None, model.dtype, target)
    validate_data(model, data)
    to_data_unit = energy_conversion(model_unit, dataset.energy_unit)
    frame_errors = PerFrameErrors(to_data_unit) if per_frame else None
    errors = evaluate_model(model, data, batch_size, target, observer=frame_errors)
    errors = _scaled(errors, to_data_unit)
    training = read_checkpoint(checkpoint).get("extra", {}).get("training") or {}
    structures = errors.pop("structures")
    report: dict[str, Any] = {
        "structures": structures,
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "epoch": training.get("epoch"),
        "epoch_fraction": float(training.get("epoch_fraction", 1.0)),
        "data": dataset.source,
        "energy_unit": dataset.energy_unit,
        "force_unit": f"{dataset.energy_unit}/Angstrom",
        "model_energy_unit": model_unit,
        "frames": frames.tolist(),
        "model": model.config.to_dict(),
        "errors": errors,
        "errors_meV": in_mev(errors, dataset.energy_unit),
    }
    if frame_errors is not None:
        report["per_frame"] = frame_errors.table(frames, dataset.metadata)
    return report


class PerFrameErrors:
    """Collects each frame's errors from :func:`~so3krates_openmm.training.trainer.evaluate_model`'s batches.

    Per frame: the energy error (model minus reference), the mean absolute force-component error and the
    largest error of one atom's force vector (length of the difference), multiplied by ``factor`` (model
    unit to data unit).
    """

    def __init__(self, factor: float = 1.0) -> None:
        self.factor = factor
        self.energy_error: list[float] = []
        self.force_mae: list[float] = []
        self.force_max_error: list[float] = []

    @torch.no_grad()
    def __call__(self, batch: Batch, energies: Tensor, forces: Tensor) -> None:
        """Add one batch (in frame order)."""
        count = batch.num_structures
        difference = (forces - batch.forces).double()
        atoms = torch.bincount(batch.batch, minlength=count).double()
        component_sums = torch.zeros(count, dtype=torch.float64, device=difference.device)
        component_sums.index_add_(0, batch.batch, difference.abs().sum(dim=1))
        largest = torch.zeros(count, dtype=torch.float64, device=difference.device).scatter_reduce(
            0, batch.batch, difference.norm(dim=1), "amax", include_self=False
        )
        self.energy_error += ((energies.double() - batch.energies.double()) * self.factor).tolist()
        self.force_mae += (component_sums / (3 * atoms) * self.factor).tolist()
        self.force_max_error += (largest * self.factor).tolist()

    def table(self, frames: np.ndarray, metadata: dict[str, Any]) -> dict[str, list]:
        """Columns ``frame`` (index in the data set), ``energy_error``, ``force_mae``, ``force_max_error`` and,
        for frames labelled from a trajectory (``so3krates-data label``), ``source_frame`` and ``time_ps``."""
        columns: dict[str, list] = {"frame": [int(i) for i in frames]}
        for key, name in (("frame_indices", "source_frame"), ("frame_times_ps", "time_ps")):
            values = metadata.get(key)
            if isinstance(values, list) and values and len(values) > int(max(frames)):
                columns[name] = [values[int(i)] for i in frames]
        columns.update(energy_error=self.energy_error, force_mae=self.force_mae,
                       force_max_error=self.force_max_error)
        return columns


def write_per_frame(report: dict[str, Any], csv_path: str | Path) -> tuple[Path, Path]:
    """Write the report's per-frame errors as CSV and plot them over time (or frame) to a PNG beside it.

    Returns the CSV and PNG paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = report["per_frame"]
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    unit, force_unit = report["energy_unit"], report["force_unit"]
    units = {"time_ps": "", "energy_error": f" ({unit})", "force_mae": f" ({force_unit})",
             "force_max_error": f" ({force_unit})"}
    names = list(columns)
    rows = zip(*(columns[name] for name in names), strict=True)
    with csv_path.open("w", encoding="utf-8") as handle:
        handle.write(",".join(f"{name}{units.get(name, '')}" for name in names) + "\n")
        handle.writelines(",".join(f"{value:.6g}" if isinstance(value, float) else str(value) for value in row)
                          + "\n" for row in rows)
    x_name = "time_ps" if "time_ps" in columns else "frame"
    x = columns[x_name]
    figure, (energy_axis, force_axis) = plt.subplots(2, 1, sharex=True, figsize=(7, 5))
    energy_axis.plot(x, columns["energy_error"], ".", markersize=3)
    energy_axis.axhline(0.0, color="0.6", linewidth=0.8)
    energy_axis.set_ylabel(f"E(model) - E(ref)\n({unit})")
    force_axis.plot(x, columns["force_mae"], ".", markersize=3, label="force MAE")
    force_axis.plot(x, columns["force_max_error"], ".", markersize=3, label="largest atom error")
    force_axis.set_ylabel(f"force error\n({force_unit})")
    force_axis.set_xlabel("time (ps)" if x_name == "time_ps" else "frame")
    force_axis.legend(loc="upper left", fontsize=8)
    energy_axis.set_title(f"{Path(report['checkpoint']).name} on {Path(report['data']).name}", fontsize=9)
    figure.tight_layout()
    png_path = csv_path.with_suffix(".png")
    figure.savefig(png_path, dpi=120)
    plt.close(figure)
    return csv_path, png_path


def format_evaluation(report: dict[str, Any]) -> str:
    """The report's errors as the trainer prints its test report, with a header naming checkpoint and data."""
    epoch = "" if report.get("epoch") is None else f", epoch {report['epoch']}"
    header = (f"{report['checkpoint']}{epoch} on {report['data']}: {report['structures']} structures "
              f"(model unit {report['model_energy_unit']})")
    body = format_test_report({**report, "epoch": report.get("epoch") or 0}).splitlines()[1:]
    return "\n".join([header, *body])


__all__ = ["PerFrameErrors", "evaluate_checkpoint", "format_evaluation", "write_per_frame"]
