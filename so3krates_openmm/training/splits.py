"""Train/validation/test splits stored in files: a training run's ``last_checkpoint.pt`` or a JSON file.

A JSON split file holds ``{"train": [...], "valid": [...], "test": [...]}`` (0-based frame indices into the
data files concatenated in order; optionally ``"data": [file names]``, the files it indexes), or the same
under a ``"split"`` key; for one part, a plain list. ``so3krates-eval --split-file`` evaluates one part of
such a file; ``so3krates-train --split-file`` trains on its split (e.g. to give two models the same split).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from so3krates_openmm.data.dataset import DataError
from so3krates_openmm.model.checkpoint import CheckpointError, read_checkpoint

SPLIT_PARTS = ("train", "valid", "test")


def _split_content(path: Path) -> object:
    """The JSON content of a split file, or the ``split`` dict of a training checkpoint."""
    if path.suffix.lower() == ".json":
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DataError(f"{path}: not valid JSON ({error})") from error
        return content.get("split", content) if isinstance(content, dict) else content
    try:
        state = read_checkpoint(path).get("extra", {}).get("training_state")
    except CheckpointError as error:
        raise DataError(f"{path}: not a split file ({error}); give a JSON file or a last_checkpoint.pt") from None
    if not state or "split" not in state:
        raise DataError(f"{path}: holds no training split (only a run's last_checkpoint.pt does; "
                        "best_checkpoint.pt does not)")
    return {name: values.tolist() if hasattr(values, "tolist") else values for name, values in state["split"].items()}


def _indices(values: object, path: Path, part: str) -> np.ndarray:
    try:
        indices = np.asarray(values, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as error:
        raise DataError(f"{path}: the {part!r} split is not a list of frame indices ({error})") from None
    return indices


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
    content = _split_content(path)
    if isinstance(content, dict):
        if part not in content:
            raise DataError(f"{path}: no {part!r} split (found {sorted(content)})")
        content = content[part]
    return _indices(content, path, part)


def read_full_split(
    path: str | Path, n_frames: int, data_files: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(train, valid, test)`` indices of a split file for a data set of ``n_frames`` frames.

    ``train`` and ``valid`` must be present; a missing ``test`` is empty. The three parts must be disjoint,
    without repeats, and within ``0 .. n_frames - 1``. When the file names the data files it indexes
    (``"data"``) and ``data_files`` is given, their file names must agree in order.

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: the file does not hold a usable split for this data (the message says what differs).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file {str(path)!r} does not exist")
    content = _split_content(path)
    if not isinstance(content, dict):
        raise DataError(f"{path}: a split file for training must hold 'train' and 'valid' lists (a dict), "
                        "not a plain list")
    missing = [part for part in ("train", "valid") if part not in content]
    if missing:
        raise DataError(f"{path}: no {' and '.join(repr(part) for part in missing)} split (found {sorted(content)})")
    named = content.get("data") if isinstance(content.get("data"), list) else None
    if named is not None and data_files is not None:
        expected = [Path(str(name)).name for name in named]
        given = [Path(str(name)).name for name in data_files]
        if expected != given:
            raise DataError(f"{path} indexes the data files {expected}, but the data given are {given}; give the "
                            "same files in the same order (the indices count frames of the files concatenated)")
    parts = tuple(_indices(content.get(part, []), path, part) for part in SPLIT_PARTS)
    for part, indices in zip(SPLIT_PARTS, parts, strict=True):
        if len(indices) and (indices.min() < 0 or indices.max() >= n_frames):
            raise DataError(f"{path}: the {part!r} split has frame indices {indices.min()}..{indices.max()}, "
                            f"outside the data's {n_frames} frames (0..{n_frames - 1})")
        if len(np.unique(indices)) != len(indices):
            raise DataError(f"{path}: the {part!r} split lists a frame more than once")
    for first in range(3):
        for second in range(first + 1, 3):
            shared = np.intersect1d(parts[first], parts[second])
            if len(shared):
                raise DataError(f"{path}: the {SPLIT_PARTS[first]!r} and {SPLIT_PARTS[second]!r} splits share "
                                f"{len(shared)} frame(s), e.g. {shared[:5].tolist()}")
    return parts


__all__ = ["SPLIT_PARTS", "read_full_split", "read_split"]
