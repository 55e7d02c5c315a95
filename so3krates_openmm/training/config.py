"""Training options (``TrainingConfig``): the paper's defaults and the checks of their values.

Every option is a field of :class:`TrainingConfig` with its help text. The
command line (``so3krates-train``, :mod:`so3krates_openmm.cli.train`) reads
them, in increasing priority, from the field defaults (the paper's recipe, see
``../shared/design/so3krates-architecture.md``), YAML files (``--config``) and
flags (``--train-size 1000`` overrides ``train_size: 500`` in the file), through
the project's one options layer (:mod:`so3krates_openmm.options`, jsonargparse).
From Python, :func:`config_from_dict` checks a dict the same way. Unknown keys,
values of the wrong type and inconsistent values are rejected with
:class:`ConfigError`.

A config made by :func:`config_from_dict` or the command line remembers
which options were given (:meth:`TrainingConfig.is_given`): fine-tuning
(``--init-from``) takes the architecture from the checkpoint and only checks
the architecture options that were given against it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from so3krates_openmm.model.config import CUTOFF_FUNCTIONS, DTYPES, SO3kratesConfig
from so3krates_openmm.options import OptionsError, option, options_parser, parse_object
from so3krates_openmm.units import normalise_energy_unit


class ConfigError(ValueError):
    """A training configuration that cannot be used (the message says why and how to fix it)."""


#: Options that may differ between a run and its resumption (stop criteria and machine).
RESUMABLE_CHANGES = frozenset(
    {"max_epochs", "max_time", "patience", "target_force_mae", "device", "threads", "output", "resume", "progress",
     "log_every", "checkpoint_every", "checkpoint_interval", "keep_best_checkpoints"}
)

#: How a fine-tuned run (``init_from``) starts its energy shifts and scale (option ``init_energy_shifts``).
INIT_ENERGY_SHIFTS = ("checkpoint", "refit")

#: Options that define the architecture; a fine-tuned run (``init_from``) takes them from the checkpoint.
ARCHITECTURE_OPTIONS = ("features", "layers", "heads", "degrees", "radial_basis_size", "cutoff", "cutoff_function")

#: Options a resumed run takes from the run it resumes unless they are given (the model is the saved one).
MODEL_OPTIONS = (*ARCHITECTURE_OPTIONS, "dtype", "init_from")


@dataclass
class TrainingConfig:
    """All options of a training run (units: Å, the data's energy unit, seconds)."""

    # --- data
    data: list[str] | None = option(  # noqa: RUF009 (option returns a dataclasses.field)
        None, "reference data file(s): MD22/sGDML .npz or extended XYZ; several files are concatenated (required)"
    )
    energy_unit: str | None = option(
        None, "energy unit of the data file when the file does not record it (e.g. kcal/mol, eV)"
    )
    train_size: int | float | None = option(
        0.8, "training frames (int), fraction of the data (float), or null: all frames but the validation and "
        "test ones (needs --test-size)"
    )
    valid_size: int | float = option(0.1, "validation frames (int) or fraction (float)")
    test_size: int | float | None = option(None, "test frames (int) or fraction; default: all the rest")
    seed: int = option(0, "seed of the split, the weight initialisation and the shuffling")
    split_file: str | None = option(
        None, "take the train/valid/test split from this file instead of drawing it (a JSON file "
        "{\"train\": [...], \"valid\": [...], \"test\": [...]} of frame indices into the data files concatenated "
        "in order, or a run's last_checkpoint.pt), e.g. to train two models on the same split; not with "
        "--train-size/--valid-size/--test-size"
    )
    # --- model (SO3kratesConfig)
    init_from: str | None = option(
        None, "fine-tune: start a new run (new split, optimiser, energy shifts and scale fitted to the training "
        "split) from the weights of this SO3krates checkpoint. The architecture (--features, --layers, --heads, "
        "--degrees, --radial-basis-size, --cutoff, --cutoff-function: if given, they must equal the checkpoint's) "
        "and, unless --dtype is given, the dtype come from the checkpoint; its elements must include the data's; "
        "the model takes the data's energy unit. Not with --resume"
    )
    features: int = option(132, "invariant feature width F")
    layers: int = option(3, "number of SO3krates layers T")
    heads: int = option(4, "attention heads H")
    degrees: list[int] = option([1, 2, 3], "spherical-harmonic degrees of the Euclidean variables")  # noqa: RUF009
    radial_basis_size: int = option(32, "number K of radial basis functions")
    cutoff: float = option(5.0, "cutoff radius in Å")
    cutoff_function: str = option("cosine", f"cutoff function, one of {list(CUTOFF_FUNCTIONS)}")
    dtype: str = option(
        "float32", f"model precision, one of {list(DTYPES)} (with --init-from: the checkpoint's unless given)"
    )
    energy_scale: float | str = option(
        "rms-forces",
        "scale of the atomic energies: 'rms-forces' (RMS of the training force components, as MACE), "
        "'none', or a number in the data's energy unit",
    )
    correct_energy_shifts: bool = option(
        True, "after training, correct the best model's per-element energy shifts by least squares on its energy "
        "errors on the training split: removes the drift of the energy zero that a weakly weighted energy loss "
        "leaves (Adam moves the output bias, on which only energies depend, by about lr per step); forces unchanged"
    )
    init_energy_shifts: str = option(
        "checkpoint", "with --init-from: 'checkpoint' keeps the checkpoint's energy scale and per-element shifts "
        "(in the data's unit), the shifts corrected by a least-squares fit to the checkpoint's energy errors on the "
        "training split, so the run starts from the checkpoint's forces and its energies aligned to the data (data "
        "of the same reference method, e.g. active learning); 'refit' fits shifts and scale to the training split "
        "as a fresh run does (a new reference method)"
    )
    # --- optimisation (the paper's recipe)
    batch_size: int | None = option(
        None, "structures per step (global, over all processes); default by training-set size: "
        "<500: 1, <1000: 5, <10000: 10, else 100"
    )
    eval_batch_size: int | None = option(None, "structures per evaluation batch; default max(batch size, 16)")
    max_epochs: int | None = option(None, "stop after this many epochs (default: no limit)")
    max_time: float | str | None = option(
        None, "training-time budget, e.g. '2h', '30m', '1h30m', '90s': when it is reached, even within an epoch, "
        "training stops after the current step, validates, checkpoints (resumable) and writes the test report"
    )
    lr: float = option(1e-3, "initial learning rate of Adam")
    energy_weight: float = option(0.01, "weight of the energy MSE in the loss")
    force_weight: float = option(0.99, "weight of the force-component MSE in the loss")
    lr_decay: float = option(0.7, "learning rate factor per --lr-decay-steps steps (exponential decay)")
    lr_decay_steps: float = option(1e5, "optimiser steps over which the learning rate falls by --lr-decay")
    min_lr: float = option(1e-5, "stop when the learning rate falls below this")
    clip_grad: float | None = option(10.0, "clip the gradient norm to this (null: no clipping)")
    ema_decay: float | None = option(
        0.99, "decay of the exponential moving average of the weights used for evaluation (null: no EMA)"
    )
    patience: int | None = option(50, "stop after this many epochs without a better validation loss")
    target_force_mae: float | None = option(
        None, "stop once the validation force MAE (in energy_unit/Å) falls to this value, e.g. to match another "
        "model's error"
    )
    # --- run
    output: str = option("runs/so3krates", "output folder (checkpoints, metrics.csv, plots, test report)")
    resume: bool = option(False, "continue the run in --output from its last checkpoint")
    device: str = option("auto", "'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA when available)")
    threads: int | None = option(None, "CPU threads per process (torch.set_num_threads)")
    checkpoint_every: int = option(1, "write the last checkpoint every N epochs")
    keep_best_checkpoints: bool = option(
        False, "also keep each new best checkpoint as best_checkpoints/epoch_NNNN.pt (weights only, like "
        "best_checkpoint.pt), e.g. to choose the checkpoint of a given validation error afterwards"
    )
    checkpoint_interval: float | str | None = option(
        "10m", "also write the last checkpoint within an epoch when this much time has passed since the last "
        "one (e.g. '10m'; null: only at epoch ends); a resumed run continues from that step"
    )
    log_every: int = option(10, "update the progress bar's running errors every N steps")
    progress: bool = option(True, "show a progress bar")

    def __post_init__(self) -> None:
        if isinstance(self.data, (str, Path)):
            self.data = [str(self.data)]
        if isinstance(self.init_from, Path):
            self.init_from = str(self.init_from)
        self.given_options: frozenset[str] | None = None  # set by config_from_dict (not an option)

    def is_given(self, name: str) -> bool:
        """Whether option ``name`` was set explicitly: a key of the file or dict, or a flag.

        For a config built directly (``TrainingConfig(...)``), whether it differs from the default.
        """
        if self.given_options is not None:
            return name in self.given_options
        item = next(item for item in fields(self) if item.name == name)
        default = item.default if item.default is not MISSING else item.default_factory()  # type: ignore[misc]
        return getattr(self, name) != default

    # ------------------------------------------------------------------ derived
    @property
    def max_time_seconds(self) -> float | None:
        """``max_time`` in seconds, or ``None``."""
        return None if self.max_time is None else parse_duration(self.max_time)

    @property
    def checkpoint_interval_seconds(self) -> float | None:
        """``checkpoint_interval`` in seconds, or ``None``."""
        return None if self.checkpoint_interval is None else parse_duration(self.checkpoint_interval)

    def resolved_batch_size(self, n_train: int) -> int:
        """The batch size, by the paper's rule when not given."""
        return self.batch_size if self.batch_size is not None else paper_batch_size(n_train)

    def resolved_eval_batch_size(self, n_train: int) -> int:
        """The evaluation batch size."""
        if self.eval_batch_size is not None:
            return self.eval_batch_size
        return max(self.resolved_batch_size(n_train), 16)

    def model_config(self, elements: Sequence[int], energy_unit: str) -> SO3kratesConfig:
        """The :class:`SO3kratesConfig` of the model to train."""
        return SO3kratesConfig(
            elements=tuple(int(z) for z in elements),
            features=self.features,
            layers=self.layers,
            heads=self.heads,
            degrees=tuple(self.degrees),
            radial_basis_size=self.radial_basis_size,
            cutoff=self.cutoff,
            cutoff_function=self.cutoff_function,
            dtype=self.dtype,
            energy_unit=energy_unit,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (for checkpoints and JSON)."""
        return asdict(self)

    # --------------------------------------------------------------- validation
    def validate(self) -> TrainingConfig:
        """Check types and values; raise :class:`ConfigError` naming the option. Returns ``self``."""
        if self.data is None:
            raise ConfigError("no data file: give --data FILE (or 'data:' in the config file)")
        if self.init_from is not None and self.resume:
            raise ConfigError(
                "--init-from and --resume exclude each other: --resume continues the run in --output (its model "
                "is the saved one), --init-from starts a new run from a checkpoint's weights; drop one of them"
            )
        if self.split_file is not None:
            drawn = [name for name in ("train_size", "valid_size", "test_size") if self.is_given(name)]
            if drawn:
                raise ConfigError(
                    f"--split-file takes the split from {self.split_file}; drop "
                    f"{', '.join('--' + name.replace('_', '-') for name in drawn)} (they size a split drawn at random)"
                )
        if self.energy_unit is not None:
            try:
                self.energy_unit = normalise_energy_unit(self.energy_unit)
            except ValueError as error:
                raise ConfigError(f"option 'energy_unit': {error}") from None
        if self.train_size is None and self.test_size is None and self.split_file is None:
            raise ConfigError(
                "--train-size null trains on all frames but the validation and test ones: give --test-size too"
            )
        for name in ("train_size", "valid_size", "test_size"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, float) and not 0.0 < value <= 1.0:
                raise ConfigError(
                    f"option {name!r}: a fraction must be in (0, 1], got {value} (an int is a frame count)"
                )
            if isinstance(value, int) and value < (0 if name == "test_size" else 1):
                raise ConfigError(f"option {name!r} must be a positive number of frames, got {value}")
        positive_ints = ("features", "layers", "heads", "radial_basis_size", "checkpoint_every", "log_every")
        for name in positive_ints + ("batch_size", "eval_batch_size", "max_epochs", "patience", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"option {name!r} must be at least 1, got {value}")
        if self.target_force_mae is not None and not self.target_force_mae > 0:
            raise ConfigError(f"option 'target_force_mae' must be positive or none, got {self.target_force_mae}")
        for name in ("cutoff", "lr", "lr_decay_steps"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"option {name!r} must be positive, got {getattr(self, name)}")
        if not 0.0 < self.lr_decay <= 1.0:
            raise ConfigError(f"option 'lr_decay' must be in (0, 1], got {self.lr_decay}")
        if self.min_lr < 0 or self.min_lr >= self.lr:
            raise ConfigError(f"option 'min_lr' ({self.min_lr}) must be non-negative and below lr ({self.lr})")
        if self.energy_weight < 0 or self.force_weight < 0 or self.energy_weight + self.force_weight == 0:
            raise ConfigError("loss weights must be non-negative and not both zero")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ConfigError(f"option 'clip_grad' must be positive or none, got {self.clip_grad}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"option 'ema_decay' must be in [0, 1) or none, got {self.ema_decay}")
        if self.init_energy_shifts not in INIT_ENERGY_SHIFTS:
            raise ConfigError(
                f"option 'init_energy_shifts' must be one of {list(INIT_ENERGY_SHIFTS)}, "
                f"got {self.init_energy_shifts!r}"
            )
        if self.init_from is not None and self.init_energy_shifts == "checkpoint" and self.is_given("energy_scale"):
            raise ConfigError(
                "--energy-scale with --init-from: the fine-tuned model keeps the checkpoint's energy scale "
                "(init_energy_shifts: checkpoint); drop --energy-scale, or give --init-energy-shifts refit to fit "
                "shifts and scale to the data"
            )
        if isinstance(self.energy_scale, str) and self.energy_scale not in ("rms-forces", "none"):
            raise ConfigError(
                f"option 'energy_scale' must be 'rms-forces', 'none' or a number, got {self.energy_scale!r}"
            )
        if not isinstance(self.energy_scale, str) and not self.energy_scale > 0:
            raise ConfigError(f"option 'energy_scale' must be positive, got {self.energy_scale}")
        for name in ("max_time", "checkpoint_interval"):
            if getattr(self, name) is not None:
                try:
                    parse_duration(getattr(self, name))
                except ConfigError as error:
                    hint = " (write null for no value)" if str(getattr(self, name)).lower() == "none" else ""
                    raise ConfigError(f"option {name!r}: {error}{hint}") from None
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"option 'device' must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"option 'dtype' must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.init_from is None:  # else the architecture is the checkpoint's (given options must equal it)
            try:
                self.model_config([1], "eV")
            except ValueError as error:
                raise ConfigError(f"model options: {error}") from None
        return self


# ---------------------------------------------------------------------- rules
def paper_batch_size(n_train: int) -> int:
    """The paper's batch size by training-set size: < 500: 1, < 1000: 5, < 10 000: 10, else 100."""
    if n_train < 500:
        return 1
    if n_train < 1000:
        return 5
    if n_train < 10000:
        return 10
    return 100


_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str | float) -> float:
    """Seconds of a duration such as ``"2h"``, ``"30m"``, ``"1h30m"``, ``"1.5h"``, ``"90s"`` or ``"90"``."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        compact = str(text).strip().lower().replace(" ", "")
        parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)([dhms]?)", compact)
        if not compact or "".join(number + unit for number, unit in parts) != compact or (
            len(parts) > 1 and any(unit == "" for _, unit in parts)
        ):
            raise ConfigError(f"cannot read the duration {text!r}: use e.g. '2h', '30m', '1h30m' or '90s'")
        seconds = sum(float(number) * _DURATION_UNITS[unit or "s"] for number, unit in parts)
    if not seconds > 0:
        raise ConfigError(f"duration {text!r} must be positive")
    return seconds


def config_from_dict(values: dict[str, Any], source: str = "config") -> TrainingConfig:
    """A validated :class:`TrainingConfig` from a dict of options (defaults for the rest).

    Keys and value types are checked as for a config file (:mod:`so3krates_openmm.options`);
    ``source`` starts every error message.
    """
    plain = {key: str(value) if isinstance(value, Path) else value for key, value in values.items()}
    if isinstance(plain.get("data"), str):
        plain["data"] = [plain["data"]]
    try:
        parser = options_parser(TrainingConfig, prog="so3krates-train", description="")
        config = parse_object(parser, TrainingConfig, plain)
        config.given_options = frozenset(plain)
        return config.validate()
    except (ConfigError, OptionsError) as error:
        raise ConfigError(f"{source}: {error}") from None
