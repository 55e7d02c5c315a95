"""The assembled trainer: the paper's recipe with EMA, clipping, early stopping, resume and DDP.

One run writes into its output folder:

- ``best_checkpoint.pt``: a plain model checkpoint (EMA weights of the epoch
  with the lowest validation loss) for ``so3krates-export`` and ``load_model``;
- ``last_checkpoint.pt``: the current (raw) weights plus the whole training
  state in ``extra["training_state"]`` (epoch, step, optimiser, schedule, EMA,
  RNG state, early-stopping state, metrics so far, split indices, config),
  from which ``--resume`` continues the same run;
- with ``--keep-best-checkpoints``, ``best_checkpoints/epoch_NNNN.pt``: a copy of
  each new best checkpoint (to choose one of a given validation error later);
- ``metrics.csv`` (one row per epoch), ``learning_curve.png``,
  ``training_config.json`` and, at the end, ``test_report.json``.

Checkpoints are written atomically at the end of an epoch and, for long
epochs, also within one every ``checkpoint_interval`` (then with the number
of batches done and the epoch's running loss). A killed run resumes from the
last checkpoint and, because shuffling is a function of (seed, epoch) and the
whole optimiser state is restored, continues exactly as an uninterrupted run
would (:mod:`so3krates_openmm.training.batches`).

The time budget (``--max-time``) is checked after every optimiser step: a run
that reaches it within an epoch stops there, validates, saves the best (if
best) and the last checkpoint (resumable from that step) and writes the test
report; the epoch's row in ``metrics.csv`` has ``epoch_fraction`` < 1. Resumed
with a larger budget, the run finishes that epoch (its row is replaced) and
continues as an uninterrupted run would. (A cut epoch's validation counts for
the best checkpoint, not for ``--patience``, which counts whole epochs.)

With ``--init-from`` the run starts from a checkpoint's weights instead of a
random initialisation (:mod:`so3krates_openmm.training.finetune`).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from so3krates_openmm.data.dataset import DataError, MolecularDataset
from so3krates_openmm.elements import symbol
from so3krates_openmm.model import SO3krates
from so3krates_openmm.model.checkpoint import load_model, read_checkpoint, save_checkpoint
from so3krates_openmm.training.batches import Batch, PackedData, epoch_batches, shard
from so3krates_openmm.training.config import (
    MODEL_OPTIONS,
    RESUMABLE_CHANGES,
    TrainingConfig,
)
from so3krates_openmm.training.distributed import DistributedContext, init_distributed
from so3krates_openmm.training.ema import ExponentialMovingAverage
from so3krates_openmm.training.finetune import initial_model
from so3krates_openmm.training.loss import ErrorAccumulator, in_mev, weighted_mse_loss
from so3krates_openmm.training.reporting import (
    format_test_report,
    plot_learning_curve,
    read_metrics_csv,
    write_json,
    write_metrics_csv,
)
from so3krates_openmm.training.schedule import ExponentialDecaySchedule
from so3krates_openmm.training.shifts import fit_energy_shifts, rms_force
from so3krates_openmm.training.splits import read_full_split

BEST_CHECKPOINT = "best_checkpoint.pt"
#: Folder of the kept best checkpoints (``--keep-best-checkpoints``): ``epoch_NNNN.pt``.
BEST_HISTORY_DIR = "best_checkpoints"
LAST_CHECKPOINT = "last_checkpoint.pt"
METRICS_FILE = "metrics.csv"
CURVE_FILE = "learning_curve.png"
TEST_REPORT_FILE = "test_report.json"
CONFIG_FILE = "training_config.json"
#: The run's frame indices ``{"train": [...], "valid": [...], "test": [...]}``, written once when it starts (a
#: record that outlives ``last_checkpoint.pt``; ``so3krates-eval --split-file`` reads it).
SPLIT_FILE = "split.json"
#: Seconds between learning-curve redraws during training (it is always drawn at the end).
PLOT_INTERVAL = 60.0


def _write_config(path: Path, settings: dict[str, Any]) -> None:
    """Write the run's settings to ``path``, unless it already holds them: ``resume`` says how the run was
    called, not what it is, so a run called again (a finished one among them) keeps its file unchanged (it may
    have been saved as final, ``bench/progress.py``)."""
    if path.is_file():
        try:
            earlier = json.loads(path.read_text())
        except ValueError:
            earlier = None
        if isinstance(earlier, dict) and _run_settings(earlier) == _run_settings(json.loads(json.dumps(settings))):
            return
    write_json(path, settings)


def _run_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings without ``resume``."""
    return {key: value for key, value in settings.items() if key != "resume"}


class TrainingError(RuntimeError):
    """A run that cannot start or continue (the message says why)."""


@dataclass
class TrainingResult:
    """What a finished (or stopped) run produced."""

    output: Path
    best_checkpoint: Path
    epochs: int
    steps: int
    stop_reason: str
    metrics: list[dict[str, float]] = field(default_factory=list)
    test_report: dict[str, Any] | None = None


@dataclass
class EpochProgress:
    """How far one pass over the training split got (all of it, unless the time budget cut it short)."""

    epoch: int
    batches_done: int
    batches_total: int
    loss_sum: float

    @property
    def complete(self) -> bool:
        return self.batches_done == self.batches_total

    @property
    def fraction(self) -> float:
        """Fraction of the epoch's batches trained (``epoch_fraction`` in ``metrics.csv``)."""
        return self.batches_done / self.batches_total

    @property
    def mean_loss(self) -> float:
        """Mean training loss over the batches trained."""
        return self.loss_sum / max(self.batches_done, 1)

    def state(self) -> dict[str, Any]:
        """The ``epoch_in_progress`` record of a mid-epoch checkpoint."""
        return {"epoch": self.epoch, "batches_done": self.batches_done, "loss_sum": self.loss_sum}


def best_history_path(output: str | Path, epoch: int) -> Path:
    """The kept best checkpoint of ``epoch`` of the run in ``output`` (``--keep-best-checkpoints``)."""
    return Path(output) / BEST_HISTORY_DIR / f"epoch_{epoch:04d}.pt"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return device


def load_training_data(config: TrainingConfig) -> MolecularDataset:
    """The data set of the files ``config.data`` (MD22 ``.npz`` or anything ASE reads), concatenated in order
    (energies converted to the first file's unit)."""
    from so3krates_openmm.data.formats import load_dataset

    options = {} if config.energy_unit is None else {"energy_unit": config.energy_unit}
    parts = [load_dataset(path, **options) for path in config.data or []]
    if len(parts) == 1:
        return parts[0]
    dataset = MolecularDataset.concatenate(parts)
    dataset.metadata["source"] = " + ".join(str(path) for path in config.data or [])
    return dataset


def resumed_config(saved: dict[str, Any], current: TrainingConfig) -> TrainingConfig:
    """``current`` with the model options (:data:`~.config.MODEL_OPTIONS`) it does not give taken from
    the saved run (the resumed model is the saved one). ``init_from`` is always the saved run's: a fine-tuned
    run is resumed without ``--init-from`` (the two options exclude each other)."""
    inherited = {
        name: saved[name]
        for name in MODEL_OPTIONS
        if name in saved and (name == "init_from" or not current.is_given(name))
    }
    return replace(current, **inherited) if inherited else current


def check_resumable(saved: dict[str, Any], current: TrainingConfig) -> None:
    """Refuse to resume with options that would make it a different run."""
    now = current.to_dict()
    # an option added after the run was saved counts as its default there
    defaults = {option.name: option.default for option in fields(TrainingConfig)}
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k, defaults.get(k)) != now[k])
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise TrainingError(
            f"cannot resume: options differ from the run being resumed ({details}); only "
            f"{', '.join(sorted(RESUMABLE_CHANGES))} may change. Start a new run in another --output."
        )


def validate_data(model: SO3krates, data: PackedData, chunk: int = 256) -> None:
    """Check every frame once up front (known elements, finite positions, no overlapping atoms)."""
    for start in range(0, len(data), chunk):
        batch = data.batch(torch.arange(start, min(start + chunk, len(data)), device=data.energies.device))
        try:
            model.validate_inputs(batch.atomic_numbers, batch.positions, batch.batch, batch.num_structures)
        except ValueError as error:
            raise TrainingError(
                f"bad reference data (frames {start}..{start + batch.num_structures - 1}): {error}"
            ) from None


def evaluate_model(
    model: nn.Module,
    data: PackedData,
    batch_size: int,
    device: torch.device | str = "cpu",
    context: DistributedContext | None = None,
    energy_weight: float | None = None,
    force_weight: float | None = None,
    observer: Callable[[Batch, Tensor, Tensor], None] | None = None,
) -> dict[str, Any]:
    """Energy and force errors of ``model`` (in eval mode afterwards) on all frames of ``data``, in its units.

    Batches of ``batch_size`` frames in order; forces are minus the gradient of the energy. In a distributed
    run (``context``) every process evaluates its shard and the sums are reduced. Returns
    :meth:`ErrorAccumulator.compute`'s dict (with ``loss`` when both weights are given). ``observer``, if
    given, is called after each batch with the batch, the predicted energies and the predicted forces
    (detached), e.g. to keep per-frame errors.
    """
    model.eval()
    device = torch.device(device)
    rank, world = (context.rank, context.world_size) if context is not None else (0, 1)
    accumulator = ErrorAccumulator(device)
    for global_indices in epoch_batches(len(data), batch_size, 0, 0, shuffle=False):
        local_indices, weight = shard(global_indices.to(device), rank, world)
        batch = data.batch(local_indices)
        positions = batch.positions.requires_grad_(True)
        energies = model(batch.atomic_numbers, positions, batch.batch, batch.num_structures)
        (gradient,) = torch.autograd.grad(energies.sum(), positions)
        accumulator.update(energies, batch.energies, -gradient, batch.forces, batch.atomic_numbers, weight)
        if observer is not None:
            observer(batch, energies.detach(), -gradient.detach())
    if context is not None:
        accumulator.all_reduce(context)
    return accumulator.compute(energy_weight, force_weight)


def predicted_energies(model: SO3krates, data: PackedData, batch_size: int) -> np.ndarray:
    """(M,) float64 energies of ``model`` (in eval mode afterwards) on all frames of ``data``, in its unit."""
    model.eval()
    energies = []
    with torch.no_grad():
        for indices in epoch_batches(len(data), batch_size, 0, 0, shuffle=False):
            batch = data.batch(indices.to(data.energies.device))
            energies.append(model(batch.atomic_numbers, batch.positions, batch.batch, batch.num_structures))
    return torch.cat(energies).double().cpu().numpy() if energies else np.zeros(0)


class Trainer:
    """Trains an SO3krates model as configured (see the module docstring for the files it writes).

    Args:
        config: validated options.
        dataset: the data (default: loaded from ``config.data``).
        context: the process group (default: joined from ``torchrun``'s environment).
        log: where messages of the main process go (default ``print``).
    """

    def __init__(
        self,
        config: TrainingConfig,
        dataset: MolecularDataset | None = None,
        context: DistributedContext | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.config = config.validate()
        self.device = resolve_device(config.device)
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.context = context if context is not None else init_distributed(self.device)
        if self.device.type == "cuda" and self.context.enabled:
            self.device = torch.device("cuda", self.context.local_rank)
        self.log = log if self.context.is_main else (lambda message: None)
        self.output = Path(config.output)
        self._dataset = dataset
        self._ready = False

    # ------------------------------------------------------------------ set-up
    def _load_state(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        last = self.output / LAST_CHECKPOINT
        if not self.config.resume:
            if last.exists():
                raise TrainingError(
                    f"{self.output} already holds a run ({LAST_CHECKPOINT}): pass --resume to continue it, "
                    "or choose another --output"
                )
            return None, None
        if not last.exists():
            raise TrainingError(f"--resume: there is no {LAST_CHECKPOINT} in {self.output} to resume from")
        checkpoint = read_checkpoint(last)
        state = checkpoint.get("extra", {}).get("training_state")
        if state is None:
            raise TrainingError(f"{last} holds no training state; it cannot be resumed")
        self.config = resumed_config(state["config"], self.config)
        check_resumable(state["config"], self.config)
        return checkpoint, state

    def setup(self) -> None:
        """Load the data (and the state of a resumed run), build the model, fit shifts, create the optimiser.

        Called by :meth:`run`; calling it first (once) gives access to the untrained model and the splits.
        """
        if self._ready:
            return
        self._ready = True
        self._started = self._last_save = time.monotonic()
        checkpoint, state = self._load_state()
        config = self.config
        dataset = self._dataset if self._dataset is not None else load_training_data(config)
        self.energy_unit = dataset.energy_unit
        if state is not None:
            if state["data_frames"] != len(dataset) or not math.isclose(
                state["data_energy_sum"], float(np.sum(dataset.energies)), rel_tol=1e-9, abs_tol=1e-6
            ):
                raise TrainingError("cannot resume: the data set differs from the one the run was started with")
            split = [np.asarray(state["split"][part].tolist(), dtype=np.int64) for part in ("train", "valid", "test")]
        elif config.split_file is not None:
            try:
                split = list(read_full_split(config.split_file, len(dataset), [str(p) for p in config.data or []]))
            except (DataError, FileNotFoundError) as error:
                raise TrainingError(f"--split-file: {error}") from None
        else:
            split = list(dataset.split_indices(config.train_size, config.valid_size, config.test_size, config.seed))
        if len(split[0]) == 0 or len(split[1]) == 0:
            raise TrainingError(
                f"the split has {len(split[0])} training and {len(split[1])} validation frames; both must be at least 1"
            )
        self.split = split

        #: the checkpoint a fine-tuned run started from (path, SHA-256, its training summary), else None
        self.init_from: dict[str, Any] | None = None
        self._source_shifts: dict[int, float] = {}
        if checkpoint is not None:
            model = load_model(self.output / LAST_CHECKPOINT).train()
            self.init_from = state.get("init_from") if state is not None else None
        elif config.init_from is not None:
            torch.manual_seed(config.seed)
            config, model, self._source_shifts, self.init_from = initial_model(config, dataset)
            self.config = config
            model.train()
        else:
            torch.manual_seed(config.seed)
            model = SO3krates(config.model_config(dataset.elements.tolist(), dataset.energy_unit))
        self.model: SO3krates = model.to(self.device)
        dtype = self.model.dtype
        self.train_data = PackedData(dataset, split[0], dtype, self.device)
        self.valid_data = PackedData(dataset, split[1], dtype, self.device)
        self.test_data = PackedData(dataset, split[2], dtype, self.device)
        for data in (self.train_data, self.valid_data, self.test_data):
            validate_data(self.model, data)
        self.train_atoms_per_frame = self.train_data.n_atoms.cpu()
        self.batch_size = config.resolved_batch_size(len(self.train_data))
        self.eval_batch_size = config.resolved_eval_batch_size(len(self.train_data))

        if state is None:
            self._fit_shifts_and_scale()

        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.parameters, lr=config.lr, foreach=True)
        self.schedule = ExponentialDecaySchedule(self.optimizer, config.lr, config.lr_decay, config.lr_decay_steps)
        self.ema = ExponentialMovingAverage(self.parameters, config.ema_decay) if config.ema_decay is not None else None
        self.metrics: list[dict[str, float]] = []
        self.epoch = 0
        self.best_loss = math.inf
        self.best_epoch = 0
        self.epochs_since_best = 0
        self.elapsed_before = 0.0
        self.epoch_in_progress: dict[str, Any] | None = None
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
            torch.set_rng_state(state["rng"]["torch"])
            self.metrics = [dict(row) for row in state["metrics"]]
            self.epoch = int(state["epoch"])
            self.best_loss = float(state["best_valid_loss"])
            self.best_epoch = int(state["best_epoch"])
            self.epochs_since_best = int(state["epochs_since_best"])
            self.elapsed_before = float(state["elapsed"])
            self.epoch_in_progress = state.get("epoch_in_progress")
            where = f"after epoch {self.epoch}"
            if self.epoch_in_progress:
                where = f"in epoch {self.epoch + 1} after {self.epoch_in_progress['batches_done']} batches"
            self.log(f"resuming {self.output} {where} (step {self.schedule.steps})")

        self.training_model: nn.Module = self.model
        if self.context.enabled:
            # Forces trained by double backward give some parameters gradients of another memory
            # layout than DDP's buckets; DDP copies them, which is correct (and cheap for this model).
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            self.training_model = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False,
            )
        self.data_frames = len(dataset)
        self.data_energy_sum = float(np.sum(dataset.energies))
        self.data_source = dataset.source
        if self.context.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            _write_config(self.output / CONFIG_FILE, config.to_dict())
            if not (self.output / SPLIT_FILE).is_file():
                write_json(self.output / SPLIT_FILE, {name: part.tolist() for name, part in
                                                      zip(("train", "valid", "test"), split, strict=True)})
            self.log(
                f"data: {dataset.source}: {len(dataset)} frames, elements {dataset.elements.tolist()}, "
                f"energies in {self.energy_unit}; split train {len(split[0])} / valid {len(split[1])} / "
                f"test {len(split[2])} (seed {config.seed})"
            )
            n_parameters = sum(p.numel() for p in self.parameters)
            self.log(
                f"model: F={config.features} T={config.layers} H={config.heads} degrees={list(config.degrees)} "
                f"cutoff={config.cutoff} Å {config.dtype}, {n_parameters} parameters; batch size {self.batch_size}"
                f" over {self.context.world_size} process(es), device {self.device}"
            )
            if self.init_from is not None:
                known = ", ".join(symbol(z) for z in self.model.config.elements)
                self.log(
                    f"fine-tuning from {self.init_from['path']} (sha256 {self.init_from['sha256'][:12]}...): "
                    f"its weights, elements {known}; energy shifts and scale "
                    + ("the checkpoint's" if self.config.init_energy_shifts == "checkpoint"
                       else "refitted on this training split")
                )

    def _fit_shifts_and_scale(self) -> None:
        """Least-squares per-element energy shifts and the energy scale from the training split (float64);
        a fine-tuned run with ``init_energy_shifts: checkpoint`` corrects the checkpoint's shifts instead."""
        if self.init_from is not None and self.config.init_energy_shifts == "checkpoint":
            self._correct_checkpoint_shifts()
            return
        elements = list(self.model.config.elements)
        counts = self.train_data.element_counts(elements)
        shifts = fit_energy_shifts(counts, self.train_data.energies.cpu().numpy(), elements)
        # a fine-tuned model keeps the checkpoint's shifts of elements that the training split lacks
        absent = [
            z for z, count in zip(elements, counts.sum(axis=0), strict=True) if count == 0 and z in self._source_shifts
        ]
        shifts.update({z: self._source_shifts[z] for z in absent})
        self.model.set_energy_shifts(shifts)
        if self.config.energy_scale == "rms-forces":
            scale = rms_force(self.train_data.forces.cpu().double().numpy())
        elif self.config.energy_scale == "none":
            scale = 1.0
        else:
            scale = float(self.config.energy_scale)
        with torch.no_grad():
            self.model.energy_scales.fill_(scale)
        shift_text = ", ".join(f"{symbol(z)} {value:.8g}" for z, value in shifts.items())
        kept = (f" ({', '.join(symbol(z) for z in absent)} from --init-from: not in the training split)"
                if absent else "")
        self.log(
            f"energy shifts ({self.model.config.energy_unit} per atom, least squares): {shift_text}{kept}; "
            f"scale {scale:.4g}"
        )

    def _correct_shifts(self) -> dict[str, Any]:
        """Correct the model's energy shifts by least squares on its energy errors on the training split (float64;
        elements the split lacks keep theirs): the forces do not change. Returns what was done, for the log."""
        elements = list(self.model.config.elements)
        counts = self.train_data.element_counts(elements)
        residuals = self.train_data.energies.cpu().double().numpy() - predicted_energies(
            self.model, self.train_data, self.eval_batch_size
        )
        corrections = fit_energy_shifts(counts, residuals, elements)
        present = [z for z, count in zip(elements, counts.sum(axis=0), strict=True) if count > 0]
        current = {z: float(self.model.energy_shifts[i]) for i, z in enumerate(elements)}
        self.model.set_energy_shifts({z: current[z] + (corrections[z] if z in present else 0.0) for z in elements})
        self.model.train()
        remaining = residuals - counts @ np.array([corrections[z] if z in present else 0.0 for z in elements])
        return {"per_atom": {symbol(z): corrections[z] for z in present},
                "train_energy_mae_before": float(np.abs(residuals).mean()),
                "train_energy_mae_after": float(np.abs(remaining).mean())}

    @staticmethod
    def _correction_text(correction: dict[str, Any]) -> str:
        per_atom = ", ".join(f"{name} {value:+.4g}" for name, value in correction["per_atom"].items())
        return (f"{per_atom} per atom (training-split energy MAE {correction['train_energy_mae_before']:.4g} -> "
                f"{correction['train_energy_mae_after']:.4g})")

    def _correct_checkpoint_shifts(self) -> None:
        """The checkpoint's scale and shifts (already in the data's unit), the shifts corrected by least squares
        on the checkpoint's energy errors on the training split: the forces stay the checkpoint's."""
        correction = self._correct_shifts()
        self.log(f"energy shifts and scale from --init-from ({self.model.config.energy_unit}); shifts corrected by "
                 f"the checkpoint's mean error on the training split: {self._correction_text(correction)}")

    def _correct_best_shifts(self) -> None:
        """The best checkpoint's energy shifts corrected on the training split after training (the weakly weighted
        energy term lets the energy zero drift during training; forces unchanged); rewritten by the main process."""
        best = read_checkpoint(self.output / BEST_CHECKPOINT)
        if "energy_shift_correction" in best["extra"].get("training", {}):
            return  # corrected when this run finished (a new best is saved without the record)
        current = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(best["state_dict"])
        correction = self._correct_shifts()
        if self.context.is_main:
            training = best["extra"].get("training", {})
            training["energy_shift_correction"] = correction
            save_checkpoint(self.model, self.output / BEST_CHECKPOINT, extra={**best["extra"], "training": training})
            self.log(f"best checkpoint: energy shifts corrected on the training split ({self.energy_unit}): "
                     f"{self._correction_text(correction)}")
        self.model.load_state_dict(current)
        self.context.barrier()

    # ----------------------------------------------------------------- epochs
    def train_epoch(self, epoch: int, start_batch: int = 0, loss_sum_start: float = 0.0) -> float:
        """One pass over the training split; returns the mean loss over its global batches.

        ``start_batch`` and ``loss_sum_start`` continue an epoch interrupted after a mid-epoch
        checkpoint (the batches are the same: they depend on seed and epoch only). When the time
        budget (``--max-time``) is reached within the epoch, it ends after the current step
        (see :meth:`train_batches`) and the mean is over the batches trained.
        """
        return self.train_batches(epoch, start_batch, loss_sum_start).mean_loss

    def train_batches(self, epoch: int, start_batch: int = 0, loss_sum_start: float = 0.0) -> EpochProgress:
        """Train epoch ``epoch`` from batch ``start_batch`` to its end or, if earlier, to the step that
        reaches the time budget; returns how far it got (see :meth:`train_epoch`)."""
        from tqdm import tqdm

        config = self.config
        rank, world = self.context.rank, self.context.world_size
        self.training_model.train()
        batches = epoch_batches(len(self.train_data), self.batch_size, config.seed, epoch)
        global_atoms = [int(self.train_atoms_per_frame[indices].sum()) for indices in batches]
        loss_sum = torch.full((), loss_sum_start, dtype=torch.float64, device=self.device)
        running = ErrorAccumulator(self.device)
        interval = config.checkpoint_interval_seconds
        bar = tqdm(
            total=len(batches),
            initial=start_batch,
            desc=f"epoch {epoch}",
            unit="batch",
            leave=False,
            dynamic_ncols=True,
            disable=not (self.context.is_main and config.progress),
        )
        batches_done = start_batch
        for index, global_indices in enumerate(batches):
            if index < start_batch:
                continue
            local_indices, weight = shard(global_indices, rank, world)
            batch = self.train_data.batch(local_indices, int(self.train_atoms_per_frame[local_indices].sum()))
            positions = batch.positions.requires_grad_(True)
            energies = self.training_model(batch.atomic_numbers, positions, batch.batch, batch.num_structures)
            (gradient,) = torch.autograd.grad(energies.sum(), positions, create_graph=True)
            forces = -gradient
            loss = weighted_mse_loss(
                energies, batch.energies, forces, batch.forces, config.energy_weight, config.force_weight,
                float(global_indices.shape[0]), float(global_atoms[index]),
            )
            # DDP averages gradients over processes; the shards' losses must add up to the global one.
            scaled = loss * (weight * world)
            self.optimizer.zero_grad(set_to_none=True)
            scaled.backward()
            if config.clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(self.parameters, config.clip_grad)
            self.optimizer.step()
            self.schedule.step()
            if self.ema is not None:
                self.ema.update()
            # the global batch's loss on every process (one scalar all-reduce), so that any process
            # may checkpoint the epoch's running sum
            loss_sum += self.context.all_reduce_sum(loss.detach() * weight)
            running.update(energies, batch.energies, forces, batch.forces, batch.atomic_numbers, weight)
            if not bar.disable and ((index + 1) % config.log_every == 0 or index + 1 == len(batches)):
                errors = running.compute()
                bar.set_postfix_str(
                    f"E MAE {errors['energy_mae']:.3g}, F MAE {errors['force_mae']:.3g} {self.energy_unit}(/Å), "
                    f"lr {self.schedule.lr:.2e}"
                )
            bar.update(1)
            batches_done = index + 1
            if batches_done == len(batches):
                continue
            if self._budget_reached():
                break  # the run validates and checkpoints this state
            if self.context.is_main and interval is not None and time.monotonic() - self._last_save >= interval:
                self._save_last("", EpochProgress(epoch, batches_done, len(batches), float(loss_sum.item())).state())
        bar.close()
        return EpochProgress(epoch, batches_done, len(batches), float(loss_sum.item()))

    def evaluate(self, data: PackedData, use_ema: bool = True) -> dict[str, Any]:
        """Energy and force errors (and the loss) on ``data``, with the EMA weights unless ``use_ema=False``.

        In a distributed run every process evaluates its shard and the sums are reduced.
        """
        if self.ema is not None and use_ema:
            with self.ema.applied():
                return self._evaluate(data)
        return self._evaluate(data)

    def _evaluate(self, data: PackedData) -> dict[str, Any]:
        errors = evaluate_model(self.model, data, self.eval_batch_size, self.device, self.context,
                                self.config.energy_weight, self.config.force_weight)
        self.model.train()
        return errors

    # ------------------------------------------------------------ checkpoints
    def _training_summary(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.schedule.steps,
            "best_epoch": self.best_epoch,
            "best_valid_loss": self.best_loss,
            "data": self.data_source,
            "split_sizes": [len(part) for part in self.split],
            "seed": self.config.seed,
            "config": self.config.to_dict(),
            "init_from": self.init_from,
        }

    def _save_best(self, validation: dict[str, Any], progress: EpochProgress) -> None:
        summary = self._training_summary()
        summary.update(epoch=progress.epoch, epoch_fraction=progress.fraction)
        summary["valid"] = {k: v for k, v in validation.items() if k != "force_mae_per_element"}
        paths = [self.output / BEST_CHECKPOINT]
        if self.config.keep_best_checkpoints:
            paths.append(best_history_path(self.output, progress.epoch))
        with self.ema.applied() if self.ema is not None else contextlib.nullcontext():
            for path in paths:
                save_checkpoint(self.model, path, extra={"training": summary})

    def _save_last(self, stop_reason: str, epoch_in_progress: dict[str, Any] | None = None) -> None:
        """Write the last checkpoint; ``epoch_in_progress`` marks a mid-epoch one (epoch, batches done, loss sum)."""
        state = {
            "epoch": self.epoch,
            "step": self.schedule.steps,
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": {"torch": torch.get_rng_state()},
            "metrics": self.metrics,
            "split": {
                name: torch.as_tensor(part) for name, part in zip(("train", "valid", "test"), self.split, strict=True)
            },
            "config": self.config.to_dict(),
            "best_valid_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "epochs_since_best": self.epochs_since_best,
            "elapsed": self.elapsed,
            "stop_reason": stop_reason,
            "world_size": self.context.world_size,
            "data_frames": self.data_frames,
            "data_energy_sum": self.data_energy_sum,
            "epoch_in_progress": epoch_in_progress,
            "init_from": self.init_from,
        }
        save_checkpoint(self.model, self.output / LAST_CHECKPOINT, extra={"training_state": state})
        self._last_save = time.monotonic()

    # --------------------------------------------------------------- the run
    @property
    def elapsed(self) -> float:
        """Seconds of training over this run and the runs it resumes."""
        return self.elapsed_before + (time.monotonic() - self._started)

    def _budget_reached(self) -> bool:
        """Whether the training time has reached ``--max-time`` (on any process: the answer is shared)."""
        budget = self.config.max_time_seconds
        return budget is not None and self.context.all_reduce_max(self.elapsed) >= budget

    def _stop_reason(self, progress: EpochProgress | None = None) -> str:
        """Why training must stop now ('' to go on), after the epoch ``progress`` (complete unless cut short by
        the time budget); the same on every process. Starts with a code: max_epochs, min_lr, patience,
        target_force_mae, max_time."""
        config = self.config
        if progress is not None and not progress.complete:
            return (f"max_time: reached --max-time {config.max_time} in epoch {progress.epoch} after "
                    f"{progress.batches_done} of {progress.batches_total} batches")
        if config.max_epochs is not None and self.epoch >= config.max_epochs:
            return f"max_epochs: reached --max-epochs {config.max_epochs}"
        if self.schedule.lr < config.min_lr:
            return f"min_lr: learning rate {self.schedule.lr:.3g} fell below --min-lr {config.min_lr:g}"
        if config.patience is not None and self.epochs_since_best >= config.patience:
            return (f"patience: no better validation loss for {self.epochs_since_best} epochs "
                    f"(--patience {config.patience})")
        reached = self.metrics[-1]["valid_force_mae"] if self.metrics else None
        if config.target_force_mae is not None and reached is not None and reached <= config.target_force_mae:
            return (f"target_force_mae: validation force MAE {reached:.4g} {self.energy_unit}/Å reached "
                    f"--target-force-mae {config.target_force_mae:g}")
        if self._budget_reached():
            return f"max_time: reached --max-time {config.max_time}"
        return ""

    def run(self) -> TrainingResult:
        """Train until a stop criterion holds, then evaluate the best checkpoint on the test split."""
        self.setup()
        self._started = time.monotonic()
        self._last_save = self._started
        last_plot = time.monotonic()
        stop_reason = self._stop_reason()
        stopped_before = bool(stop_reason)  # a finished run resumed: nothing to train
        while not stop_reason:
            epoch = self.epoch + 1
            if self.epoch_in_progress is not None:
                saved, self.epoch_in_progress = self.epoch_in_progress, None
                if int(saved["epoch"]) != epoch:
                    raise TrainingError(
                        f"damaged training state: epoch {saved['epoch']} in progress after {self.epoch}"
                    )
                if self.metrics and self.metrics[-1]["epoch"] == epoch:
                    self.metrics.pop()  # the row of the epoch cut short by the time budget: now completed
                progress = self.train_batches(epoch, int(saved["batches_done"]), float(saved["loss_sum"]))
            else:
                progress = self.train_batches(epoch)
            validation = self.evaluate(self.valid_data)
            if progress.complete:
                self.epoch = epoch
            row = {
                "epoch": epoch,
                "step": self.schedule.steps,
                "lr": self.schedule.lr,
                "train_loss": progress.mean_loss,
                "valid_loss": validation["loss"],
                "valid_energy_mae": validation["energy_mae"],
                "valid_energy_rmse": validation["energy_rmse"],
                "valid_force_mae": validation["force_mae"],
                "valid_force_rmse": validation["force_rmse"],
                "time": self.elapsed,
                "epoch_fraction": progress.fraction,
            }
            self.metrics.append(row)
            improved = validation["loss"] < self.best_loss
            if improved:
                self.best_loss, self.best_epoch, self.epochs_since_best = validation["loss"], epoch, 0
            elif progress.complete:
                self.epochs_since_best += 1
            stop_reason = self._stop_reason(progress)
            if self.context.is_main:
                if improved:
                    self._save_best(validation, progress)
                if stop_reason or epoch % self.config.checkpoint_every == 0:
                    self._save_last(stop_reason, None if progress.complete else progress.state())
                write_metrics_csv(self.output / METRICS_FILE, self.metrics)
                if time.monotonic() - last_plot > PLOT_INTERVAL or stop_reason:
                    plot_learning_curve(self.output / CURVE_FILE, self.metrics, self.energy_unit)
                    last_plot = time.monotonic()
                cut = "" if progress.complete else f" ({progress.fraction:.0%} of it: time budget)"
                self.log(
                    f"epoch {epoch:4d}{cut}  step {self.schedule.steps:7d}  lr {self.schedule.lr:.2e}  "
                    f"train loss {progress.mean_loss:.4g}  valid loss {validation['loss']:.4g}  "
                    f"E MAE {validation['energy_mae']:.4g} {self.energy_unit}  "
                    f"F MAE {validation['force_mae']:.4g} {self.energy_unit}/Å"
                    f"{'  *' if improved else ''}  ({self.elapsed:.0f} s)"
                )
        self.log(f"stopped: {stop_reason}")
        if self.context.is_main and self.metrics and not stopped_before:
            plot_learning_curve(self.output / CURVE_FILE, self.metrics, self.energy_unit)
        self.context.barrier()
        if stopped_before and (self.output / TEST_REPORT_FILE).is_file():
            # its files are final (and may have been saved as such, bench/progress.py): read, not rewritten
            report = json.loads((self.output / TEST_REPORT_FILE).read_text())
            self.log(f"finished earlier; its test report: {self.output / TEST_REPORT_FILE}")
        else:
            if self.config.correct_energy_shifts and (self.output / BEST_CHECKPOINT).is_file():
                self._correct_best_shifts()
            report = self._test_report(stop_reason)
        return TrainingResult(
            output=self.output,
            best_checkpoint=self.output / BEST_CHECKPOINT,
            epochs=self.epoch,
            steps=self.schedule.steps,
            stop_reason=stop_reason,
            metrics=list(self.metrics),
            test_report=report,
        )

    def _test_report(self, stop_reason: str) -> dict[str, Any] | None:
        """Errors of the best checkpoint on the test split; written as JSON and printed by the main process."""
        if len(self.test_data) == 0:
            self.log("no test frames (--test-size 0): no test report")
            return None
        best = read_checkpoint(self.output / BEST_CHECKPOINT)
        current = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(best["state_dict"])
        errors = self._evaluate(self.test_data)
        self.model.load_state_dict(current)
        errors.pop("loss", None)
        report = {
            "structures": errors.pop("structures"),
            "epoch": int(best["extra"]["training"]["epoch"]),
            "epoch_fraction": float(best["extra"]["training"].get("epoch_fraction", 1.0)),
            "checkpoint": str(self.output / BEST_CHECKPOINT),
            "data": self.data_source,
            "energy_unit": self.energy_unit,
            "force_unit": f"{self.energy_unit}/Angstrom",
            "split_sizes": {"train": len(self.split[0]), "valid": len(self.split[1]), "test": len(self.split[2])},
            "seed": self.config.seed,
            "model": self.model.config.to_dict(),
            "parameters": sum(p.numel() for p in self.parameters),
            "training": {"epochs": self.epoch, "steps": self.schedule.steps, "batch_size": self.batch_size,
                         "processes": self.context.world_size, "time_s": self.elapsed, "stop_reason": stop_reason},
            "errors": errors,
            "errors_meV": in_mev(errors, self.energy_unit),
            "init_from": None if self.init_from is None else {k: self.init_from[k] for k in ("path", "sha256")},
        }
        if self.context.is_main:
            write_json(self.output / TEST_REPORT_FILE, report)
            self.log(format_test_report(report))
        return report


def finished_run(output: str | Path) -> TrainingResult | None:
    """The result of a finished run whose folder holds no training state, else ``None``.

    A finished run can be carried to another machine as its closed files alone (``best_checkpoint.pt``,
    ``test_report.json``, ``metrics.csv``; ``bench/progress.py``): its ``last_checkpoint.pt``, with the optimiser
    state, is needed only to train on. A folder that still holds ``last_checkpoint.pt`` is left to :func:`train`
    (resumed with a larger budget, it trains on)."""
    output = Path(output)
    report_path = output / TEST_REPORT_FILE
    if (output / LAST_CHECKPOINT).exists() or not report_path.is_file() or not (output / BEST_CHECKPOINT).is_file():
        return None
    report = json.loads(report_path.read_text())
    training = report["training"]
    metrics = read_metrics_csv(output / METRICS_FILE) if (output / METRICS_FILE).is_file() else []
    return TrainingResult(output=output, best_checkpoint=output / BEST_CHECKPOINT, epochs=int(training["epochs"]),
                          steps=int(training["steps"]), stop_reason=str(training["stop_reason"]), metrics=metrics,
                          test_report=report)


def train(
    config: TrainingConfig,
    dataset: MolecularDataset | None = None,
    context: DistributedContext | None = None,
    log: Callable[[str], None] = print,
) -> TrainingResult:
    """Train as configured (see :class:`Trainer`)."""
    return Trainer(config, dataset, context, log).run()
