"""Fine-tuning: a new run that starts from the weights of an SO3krates checkpoint (``--init-from``).

Rules (checked by :func:`initial_model`, each failure a :class:`InitFromError`
that names the problem):

- the architecture (:data:`~.config.ARCHITECTURE_OPTIONS`) is the checkpoint's;
  an architecture option given as well must equal it;
- the dtype is the checkpoint's unless ``--dtype`` is given (the weights are cast);
- the data's elements must be among the checkpoint's; the model keeps all of
  the checkpoint's elements (and embedding rows), also those the data lacks;
- the model's energy unit becomes the data's (the checkpoint's energy shifts
  and scale are converted to it), so any energy unit works;
- ``init_energy_shifts: checkpoint`` (default) keeps the checkpoint's scale and
  shifts, the shifts corrected by least squares on the checkpoint's energy
  errors on the training split: the run starts from the checkpoint's forces,
  its energies aligned to the data (same reference method, e.g. active
  learning). ``refit`` fits shifts and scale on the new training split as in a
  fresh run (a new reference method); elements absent from the training split
  keep the checkpoint's shifts.

The new run's checkpoints and test report record where it started
(:func:`provenance`: path, SHA-256 and the source's training summary).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from so3krates_openmm.data.dataset import MolecularDataset
from so3krates_openmm.elements import symbol
from so3krates_openmm.model import SO3krates
from so3krates_openmm.model.checkpoint import file_sha256, load_model, read_checkpoint
from so3krates_openmm.training.config import (
    ARCHITECTURE_OPTIONS,
    ConfigError,
    TrainingConfig,
)
from so3krates_openmm.units import energy_conversion


class InitFromError(ConfigError):
    """A checkpoint that cannot start this fine-tuning run (the message says why and what to do)."""


def _elements_text(elements: Any) -> str:
    return ", ".join(f"{symbol(int(z))} (Z={int(z)})" for z in elements)


def check_architecture(config: TrainingConfig, source: SO3krates, path: str) -> None:
    """Raise :class:`InitFromError` for an architecture option given with a value other than the checkpoint's."""
    for name in ARCHITECTURE_OPTIONS:
        wanted, saved = getattr(config, name), getattr(source.config, name)
        if name == "degrees":
            wanted, saved = [int(l) for l in wanted], [int(l) for l in saved]
        if config.is_given(name) and wanted != saved:
            flag = "--" + name.replace("_", "-")
            raise InitFromError(
                f"option {name!r} is {wanted!r} but the checkpoint {path} (--init-from) has {name} {saved!r}: "
                f"a fine-tuned model keeps the checkpoint's architecture; leave out {flag} (or give {saved!r})"
            )


def check_elements(dataset: MolecularDataset, source: SO3krates, path: str) -> None:
    """Raise :class:`InitFromError` when the data has elements the checkpoint does not know."""
    unknown = sorted({int(z) for z in dataset.elements} - set(source.config.elements))
    if unknown:
        raise InitFromError(
            f"the data ({dataset.source}) has element(s) {_elements_text(unknown)} that the checkpoint {path} "
            f"(--init-from) does not know; it knows {_elements_text(source.config.elements)}. Fine-tuning cannot "
            "add elements: leave out the frames with them, or train a new model without --init-from"
        )


def provenance(path: str | Path) -> dict[str, Any]:
    """What the new run records about its starting checkpoint: resolved path, SHA-256, model config and the
    source's training summary (data, epoch, step, validation errors, and its own ``init_from`` if it was
    fine-tuned too)."""
    path = Path(path)
    extra = read_checkpoint(path).get("extra", {})
    summary = dict(extra.get("training") or {})
    summary.pop("config", None)
    return {"path": str(path.resolve()), "sha256": file_sha256(path), "training": summary}


def initial_model(
    config: TrainingConfig, dataset: MolecularDataset
) -> tuple[TrainingConfig, SO3krates, dict[int, float], dict[str, Any]]:
    """The starting point of a fine-tuning run (``config.init_from`` set) on ``dataset``.

    Returns:
        the config with the checkpoint's architecture (and dtype unless given),
        the model (the checkpoint's weights, energy shifts and scale, in the data's energy unit),
        the checkpoint's energy shifts in the data's unit (for elements absent from the training split),
        and the :func:`provenance` record.

    Raises:
        InitFromError: architecture options or elements that do not fit the checkpoint.
        CheckpointError, FileNotFoundError: a file that is not an SO3krates checkpoint (from ``load_model``).
    """
    path = str(config.init_from)
    source = load_model(path)
    check_architecture(config, source, path)
    check_elements(dataset, source, path)
    architecture = {name: getattr(source.config, name) for name in ARCHITECTURE_OPTIONS}
    architecture["degrees"] = [int(l) for l in architecture["degrees"]]
    dtype = config.dtype if config.is_given("dtype") else source.config.dtype
    resolved = replace(config, **architecture, dtype=dtype)
    model = SO3krates(resolved.model_config(source.config.elements, dataset.energy_unit))
    model.load_state_dict(source.state_dict())  # casts the weights to the model's dtype
    factor = energy_conversion(source.config.energy_unit, dataset.energy_unit)
    with torch.no_grad():
        model.energy_shifts.mul_(factor)
        model.energy_scales.mul_(factor)
    shifts = {int(z): float(model.energy_shifts[i]) for i, z in enumerate(source.config.elements)}
    return resolved, model, shifts, provenance(path)
