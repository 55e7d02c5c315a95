"""Two models at the same test error: choosing checkpoints, and the per-structure error distributions.

The paper compares an equivariant and an invariant SO3krates "with the same test error" (its Fig. 5).
Two runs trained on the same split with the same budget rarely end at the same error; the rule here
(:func:`match_force_errors`) picks a checkpoint of the more accurate run instead:

1. the *reference* is the run whose best checkpoint has the larger validation force MAE (the less
   accurate model); its best checkpoint is used as it is;
2. the candidates are the other run's kept best checkpoints (``so3krates-train --keep-best-checkpoints``:
   ``best_checkpoints/epoch_NNNN.pt``, one per epoch that improved the validation loss) and its final
   best checkpoint, ordered by how close their validation force MAE is to the reference's;
3. the first candidate whose test force MAE is within ``tolerance`` (relative, default 10 %) of the
   reference's test force MAE is chosen; when none is, the closest in test force MAE is reported with
   ``matched: false``.

The choice uses validation errors only; the test errors are the check, evaluated on the same test frames.

:func:`error_statistics` and :func:`plot_error_histograms` give the table and the figure of the per-frame
errors (``so3krates-eval --per-frame``) of several models on the same frames (the paper's Fig. 5a).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from so3krates_openmm.data.dataset import MolecularDataset
from so3krates_openmm.model.checkpoint import read_checkpoint
from so3krates_openmm.training.evaluation import evaluate_checkpoint
from so3krates_openmm.training.trainer import BEST_CHECKPOINT, BEST_HISTORY_DIR, TrainingError

#: Largest relative difference of the two test force MAEs that counts as "the same test error".
DEFAULT_TOLERANCE = 0.10


def checkpoint_validation(path: str | Path) -> dict[str, Any]:
    """``{"checkpoint", "epoch", "epoch_fraction", "valid_force_mae", "valid_energy_mae"}`` of a best checkpoint
    written by the trainer (its ``extra["training"]`` record).

    Raises:
        TrainingError: the checkpoint records no validation errors (not written by ``so3krates-train``).
    """
    training = read_checkpoint(path).get("extra", {}).get("training") or {}
    valid = training.get("valid")
    if not valid or "force_mae" not in valid:
        raise TrainingError(f"{path} records no validation errors: use a best checkpoint written by so3krates-train")
    return {
        "checkpoint": str(path),
        "epoch": int(training["epoch"]),
        "epoch_fraction": float(training.get("epoch_fraction", 1.0)),
        "valid_force_mae": float(valid["force_mae"]),
        "valid_energy_mae": float(valid["energy_mae"]),
    }


def run_checkpoints(run: str | Path) -> list[dict[str, Any]]:
    """The best checkpoints of a training run (the kept ones and ``best_checkpoint.pt``) with their validation
    errors (:func:`checkpoint_validation`), by epoch; the final best comes last."""
    run = Path(run)
    if not (run / BEST_CHECKPOINT).is_file():
        raise TrainingError(f"{run} holds no {BEST_CHECKPOINT}: train it first")
    kept = sorted((run / BEST_HISTORY_DIR).glob("epoch_*.pt")) if (run / BEST_HISTORY_DIR).is_dir() else []
    return [checkpoint_validation(path) for path in kept] + [checkpoint_validation(run / BEST_CHECKPOINT)]


def match_force_errors(
    runs: Mapping[str, str | Path],
    dataset: MolecularDataset,
    test_indices: Sequence[int] | np.ndarray,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    batch_size: int = 16,
    device: str = "cpu",
) -> dict[str, Any]:
    """Choose one checkpoint of each of two training runs so that their test force MAEs agree (the module's rule).

    Args:
        runs: two training output folders by model name (e.g. ``{"equivariant": ..., "invariant": ...}``).
        dataset: the data the runs were trained on (all files, concatenated as for training).
        test_indices: the test frames (the runs' common test split).
        tolerance: largest relative difference of the test force MAEs, ``|a - b| / b`` with ``b`` the
            reference's.

    Returns:
        ``{"rule", "tolerance", "reference", "matched", "relative_difference", "force_unit", "models": {name:
        {"checkpoint", "epoch", "valid_force_mae", "test_force_mae", "test_energy_mae", "role"}}, "candidates_tried"}``.
    """
    if len(runs) != 2:
        raise ValueError(f"give two runs to match, got {len(runs)}")
    if not 0.0 < tolerance < 1.0:
        raise ValueError(f"tolerance must be between 0 and 1, got {tolerance}")
    finals = {name: run_checkpoints(path)[-1] for name, path in runs.items()}
    reference = max(finals, key=lambda name: finals[name]["valid_force_mae"])
    other = next(name for name in runs if name != reference)
    target = finals[reference]["valid_force_mae"]

    def test_errors(path: str) -> dict[str, float]:
        report = evaluate_checkpoint(path, dataset, test_indices, batch_size=batch_size, device=device)
        return {"test_force_mae": report["errors"]["force_mae"], "test_energy_mae": report["errors"]["energy_mae"],
                "force_unit": report["force_unit"]}

    reference_entry = {**finals[reference], **test_errors(finals[reference]["checkpoint"]), "role": "reference"}
    reference_mae = reference_entry["test_force_mae"]
    candidates = sorted(run_checkpoints(runs[other]), key=lambda entry: abs(entry["valid_force_mae"] - target))
    tried: list[dict[str, Any]] = []
    chosen = None
    for candidate in candidates:
        entry = {**candidate, **test_errors(candidate["checkpoint"]), "role": "matched to the reference"}
        entry["relative_difference"] = abs(entry["test_force_mae"] - reference_mae) / reference_mae
        tried.append(entry)
        if entry["relative_difference"] <= tolerance:
            chosen = entry
            break
    matched = chosen is not None
    if chosen is None:
        chosen = min(tried, key=lambda entry: entry["relative_difference"])
    force_unit = reference_entry.pop("force_unit")
    for entry in tried:
        entry.pop("force_unit", None)
    return {
        "rule": (
            f"reference = the run with the larger validation force MAE ({reference}), its best checkpoint; "
            f"for {other}, its kept best checkpoints ordered by |validation force MAE - reference's|, the first "
            f"whose test force MAE is within {tolerance:.0%} of the reference's"
        ),
        "tolerance": tolerance,
        "reference": reference,
        "matched": matched,
        "relative_difference": chosen["relative_difference"],
        "force_unit": force_unit,
        "models": {reference: reference_entry, other: {k: v for k, v in chosen.items() if k != "relative_difference"}},
        "candidates_tried": [{k: entry[k] for k in ("checkpoint", "epoch", "valid_force_mae", "test_force_mae",
                                                    "relative_difference")} for entry in tried],
    }


def error_statistics(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """``{"frames", "mean", "std", "median", "p95", "max"}`` of per-frame errors (population standard deviation)."""
    data = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(data) == 0:
        raise ValueError("no per-frame errors to summarise")
    return {"frames": len(data), "mean": float(data.mean()), "std": float(data.std()),
            "median": float(np.median(data)), "p95": float(np.percentile(data, 95)), "max": float(data.max())}


def plot_error_histograms(
    errors: Mapping[str, Sequence[float] | np.ndarray], path: str | Path, *, xlabel: str, title: str = "",
    bins: int = 40,
) -> Path:
    """Overlaid histograms (same bins) of per-frame errors of several models, with each mean marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arrays = {name: np.asarray(values, dtype=np.float64).reshape(-1) for name, values in errors.items()}
    if not arrays or any(len(values) == 0 for values in arrays.values()):
        raise ValueError("every model needs per-frame errors to plot")
    edges = np.histogram_bin_edges(np.concatenate(list(arrays.values())), bins=bins)
    figure, axis = plt.subplots(figsize=(6, 4))
    for index, (name, values) in enumerate(arrays.items()):
        color = f"C{index}"
        axis.hist(values, bins=edges, alpha=0.5, color=color, label=f"{name} (mean {values.mean():.3g})")
        axis.axvline(values.mean(), color=color, linestyle="--", linewidth=1)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("frames")
    axis.legend(fontsize=8)
    if title:
        axis.set_title(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=130)
    plt.close(figure)
    return path


__all__ = ["DEFAULT_TOLERANCE", "checkpoint_validation", "error_statistics", "match_force_errors",
           "plot_error_histograms", "run_checkpoints"]
