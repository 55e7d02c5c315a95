"""Run checkpoints: the Context's exact state plus how far every output file got.

A checkpoint is one zip file, replaced atomically (written to a temporary file,
synced, then renamed: :func:`~so3krates_openmm.files.write_atomically`), holding

- ``context.chk``: ``Context.createCheckpoint()`` (positions, velocities, step
  count and the integrator's random number state: continuing from it is exact
  on the same platform and machine),
- ``state.xml``: the portable ``State`` (used when the binary checkpoint cannot
  be loaded, e.g. on another platform; the continuation is then statistically
  but not bitwise the same),
- ``meta.json``: format version, step, the run's identity (parameters that must
  not change on resume) and, per output file, its size in bytes and number of
  records at the checkpoint.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import openmm as mm
from openmm import app

from so3krates_openmm.files import write_atomically

CHECKPOINT_FORMAT = 1


@dataclass
class RunCheckpoint:
    """Contents of a checkpoint file (see module docstring)."""

    step: int
    identity: dict
    outputs: dict[str, dict]
    context_checkpoint: bytes
    state_xml: str
    extra: dict = field(default_factory=dict)


def write_checkpoint(
    path: str | Path, simulation: app.Simulation, identity: dict, outputs: dict[str, dict], extra: dict | None = None
) -> RunCheckpoint:
    """Write a checkpoint of ``simulation`` atomically.

    ``outputs`` maps an output name to the record its reporter returned from
    ``checkpoint_record()`` (call those first, so that the files are flushed).
    """
    path = Path(path)
    checkpoint = RunCheckpoint(
        step=simulation.currentStep,
        identity=identity,
        outputs=outputs,
        context_checkpoint=simulation.context.createCheckpoint(),
        state_xml=mm.XmlSerializer.serialize(
            simulation.context.getState(
                getPositions=True, getVelocities=True, getParameters=True, getIntegratorParameters=True
            )
        ),
        extra=dict(extra or {}),
    )
    meta = {
        "format": CHECKPOINT_FORMAT,
        "step": checkpoint.step,
        "identity": identity,
        "outputs": outputs,
        "extra": checkpoint.extra,
    }
    _write_zip_atomically(path, {
        "meta.json": json.dumps(meta, indent=1).encode("utf-8"),
        "context.chk": checkpoint.context_checkpoint,
        "state.xml": checkpoint.state_xml.encode("utf-8"),
    })
    return checkpoint


def _write_zip_atomically(path: Path, members: dict[str, bytes]) -> None:
    """Write a zip of ``members`` over ``path`` atomically."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    write_atomically(path, buffer.getvalue())


def read_checkpoint(path: str | Path) -> RunCheckpoint:
    """Read a checkpoint file; a file that is not one, or of a newer format, raises ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            meta = json.loads(archive.read("meta.json"))
            context_checkpoint = archive.read("context.chk")
            state_xml = archive.read("state.xml").decode("utf-8")
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not an MD run checkpoint: {error}") from error
    if meta.get("format", 0) > CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} has checkpoint format {meta['format']}, newer than this version reads ({CHECKPOINT_FORMAT})"
        )
    return RunCheckpoint(
        step=int(meta["step"]),
        identity=meta["identity"],
        outputs=meta["outputs"],
        context_checkpoint=context_checkpoint,
        state_xml=state_xml,
        extra=meta.get("extra", {}),
    )


def restore_context(simulation: app.Simulation, checkpoint: RunCheckpoint) -> bool:
    """Put ``simulation`` into the checkpointed state.

    Returns ``True`` when the exact binary checkpoint was loaded and ``False``
    when it had to fall back to the portable state (with a warning).
    """
    try:
        simulation.context.loadCheckpoint(checkpoint.context_checkpoint)
        return True
    except mm.OpenMMException as error:
        warnings.warn(
            f"the binary checkpoint could not be loaded ({error}); continuing from the portable state: "
            "the run continues correctly but the random stream differs from an uninterrupted run",
            RuntimeWarning,
            stacklevel=2,
        )
    simulation.context.setState(mm.XmlSerializer.deserialize(checkpoint.state_xml))
    simulation.context.setStepCount(checkpoint.step)
    return False


def identity_differences(recorded: dict, current: dict) -> list[str]:
    """Keys whose values differ between a checkpoint's identity and the current run's."""
    keys = sorted(set(recorded) | set(current))
    return [
        f"{key}: checkpoint {recorded.get(key)!r}, now {current.get(key)!r}"
        for key in keys
        if recorded.get(key) != current.get(key)
    ]
