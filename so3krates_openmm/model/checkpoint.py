"""Checkpoint files: one file with format version, config, weights, energy
shifts (float64) and units.

Layout (a ``torch.save`` dictionary, loadable with ``weights_only=True``)::

    {"format": "so3krates-openmm-checkpoint", "format_version": 1,
     "config": {...}, "state_dict": {...}, "energy_unit": "kcal/mol",
     "length_unit": "Angstrom", "energy_shifts": {z: float64}, "extra": {...}}

Writes are atomic (temporary file + rename), so a run killed while saving
never leaves a half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from so3krates_openmm.files import write_atomically
from so3krates_openmm.model.config import SO3kratesConfig

CHECKPOINT_FORMAT = "so3krates-openmm-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a usable so3krates-openmm checkpoint."""


def checkpoint_dict(model: torch.nn.Module, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The checkpoint dictionary of a model (see the module docstring)."""
    config: SO3kratesConfig = model.config
    shifts = {int(z): float(model.energy_shifts[i]) for i, z in enumerate(config.elements)}
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "config": config.to_dict(),
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "energy_unit": config.energy_unit,
        "length_unit": config.length_unit,
        "energy_shifts": shifts,
        "extra": dict(extra or {}),
    }


def save_checkpoint(model: torch.nn.Module, path: str | Path, extra: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``model`` (an :class:`SO3krates`) to ``path`` atomically."""
    data = checkpoint_dict(model, extra)
    return write_atomically(path, lambda temporary: torch.save(data, temporary))


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """Read and validate a checkpoint dictionary.

    Raises :class:`CheckpointError` for a file that is not a checkpoint of this
    project, or one written by a newer format version, and ``FileNotFoundError``
    for a missing file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a so3krates-openmm checkpoint (not a PyTorch file)")
    if _is_torchscript_archive(path):
        raise CheckpointError(
            f"{path} is an exported TorchScript model, not a checkpoint: pass the checkpoint written "
            "by so3krates-train or save_checkpoint"
        )
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"{path} is not a so3krates-openmm checkpoint (torch.load failed: {str(error).splitlines()[0]})"
        ) from error
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a so3krates-openmm checkpoint (no '{CHECKPOINT_FORMAT}' format marker); "
            "is it a checkpoint of another model?"
        )
    version = data.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}, newer than this so3krates-openmm "
            f"understands ({CHECKPOINT_FORMAT_VERSION}): upgrade so3krates-openmm"
        )
    for key in ("config", "state_dict"):
        if key not in data:
            raise CheckpointError(f"{path} is damaged: the checkpoint has no {key!r}")
    return data


def _is_torchscript_archive(path: Path) -> bool:
    """True for a TorchScript zip archive (it has a ``code/`` folder)."""
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """An :class:`SO3krates` model with the weights and shifts of a checkpoint, in eval mode."""
    from so3krates_openmm.model.so3krates import SO3krates

    data = read_checkpoint(path, map_location)
    config = SO3kratesConfig.from_dict(data["config"])
    model = SO3krates(config)
    try:
        model.load_state_dict(data["state_dict"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not match the config in the checkpoint: {error}") from error
    return model.to(map_location).eval()


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file (identifies the checkpoint an export came from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
