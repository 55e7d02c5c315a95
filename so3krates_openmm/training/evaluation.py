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

Frames: all, or ``indices``; :func:`read_split` takes the indices of a
training run's split (train/valid/test) from its ``last_checkpoint.pt`` or
from a JSON file (``{"test": [...], ...}`` or a plain list).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from so3krates_openmm.data.dataset import DataError, MolecularDataset
from so3krates_openmm.model.checkpoint import (
    CheckpointError,
    file_sha256,
    load_model,
    read_checkpoint,
)
from so3krates_openmm.training.batches import PackedData
from so3krates_openmm.training.finetune import _elements_text
from so3krates_openmm.training.loss import in_mev
from so3krates_openmm.training.reporting import format_test_report
from so3krates_openmm.training.trainer import (
    evaluate_model,
    resolve_device,
    validate_data,
)
from so3krates_openmm.units import energy_conversion

SPLIT_PARTS = ("train", "valid", "test")


def read_split(path: str | Path, part: str = "test") -> np.ndarray:
    """Frame indices of split ``part`` from a training checkpoint with a saved split (``last_checkpoint.pt``)
    or a JSON file holding ``{"train": [...], "valid": [...], "test": [...]}`` (any of them) or a plain list.

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: no such split in the file, or not a split file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file {str(path)!r} does not exist")
    if part not in SPLIT_PARTS:
        raise DataError(f"split part must be one of {', '.join(SPLIT_PARTS)}, got {part!r}")
    if path.suffix.lower() == ".json":
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DataError(f"{path}: not valid JSON ({error})") from error
        if isinstance(content, dict):
            content = content.get("split", content)
            if part not in content:
                raise DataError(f"{path}: no {part!r} split (found {sorted(content)})")
            content = content[part]
        values = content
    else:
        try:
            state = read_checkpoint(path).get("extra", {}).get("training_state")
        except CheckpointError as error:
            raise DataError(f"{path}: not a split file ({error}); give a JSON file or a last_checkpoint.pt") from None
        if not state or "split" not in state:
            raise DataError(f"{path}: holds no training split (only a run's last_checkpoint.pt does; "
                            "best_checkpoint.pt does not)")
        values = state["split"][part]
        values = values.tolist() if hasattr(values, "tolist") else values
    try:
        indices = np.asarray(values, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as error:
        raise DataError(f"{path}: the {part!r} split is not a list of frame indices ({error})") from None
    return indices


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
) -> dict[str, Any]:
    """Energy and force errors of the model in ``checkpoint`` on the frames ``indices`` (default all) of ``dataset``.

    Returns a report like ``test_report.json``: ``structures``, ``checkpoint`` (and its ``checkpoint_sha256``,
    ``epoch`` when it comes from training), ``data``, ``energy_unit`` (the data's), ``model_energy_unit``,
    ``frames`` (the indices), ``model``, ``errors`` (data's unit) and ``errors_meV``.

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
    errors = evaluate_model(model, data, batch_size, target)
    errors = _scaled(errors, energy_conversion(model_unit, dataset.energy_unit))
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
    return report


def format_evaluation(report: dict[str, Any]) -> str:
    """The report's errors as the trainer prints its test report, with a header naming checkpoint and data."""
    epoch = "" if report.get("epoch") is None else f", epoch {report['epoch']}"
    header = (f"{report['checkpoint']}{epoch} on {report['data']}: {report['structures']} structures "
              f"(model unit {report['model_energy_unit']})")
    body = format_test_report({**report, "epoch": report.get("epoch") or 0}).splitlines()[1:]
    return "\n".join([header, *body])


__all__ = ["evaluate_checkpoint", "format_evaluation", "read_split"]
