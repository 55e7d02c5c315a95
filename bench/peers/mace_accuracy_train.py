#!/usr/bin/env python
"""``mace_run_train`` under a training-time budget (run with the MACE venv's python).

::

    bench/peers/.venvs/mace/bin/python bench/peers/mace_accuracy_train.py \\
        --budget-seconds 1800 --threads 1 --summary OUT.json -- MACE_RUN_TRAIN_ARGS...

mace_run_train has no time limit, and killing it loses its end of run (the
best checkpoint reloaded and saved as ``<name>.model``). This driver runs
mace-torch's own ``mace.cli.run_train.main`` in-process, unchanged except for
the budget rule of :class:`peer_common.BudgetClock`, applied by wrapping
mace-torch's one-epoch function: the clock starts with the first epoch; once
``--budget-seconds`` have passed no further batch is trained, the epoch in
progress ends there and is validated and (if best) checkpointed as usual, and
the epoch loop ends. mace_run_train then goes on as after a normal end: it
reloads the best checkpoint (EMA weights with ``--ema``), writes
``<model_dir>/<name>.model`` and prints its error tables on the training and
validation sets.

The summary JSON (``--summary``) records the epochs begun, the steps, the
training time, the stop reason and the model path; it is also printed as the
result line on stdout (:data:`peer_common.RESULT_KEY`).
"""

from __future__ import annotations

import os

# mace-torch unpickles whole modules; torch >= 2.6 refuses that by default.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import importlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peer_common import RESULT_KEY, BudgetClock, log, parse_budget_args, versions


class BudgetReached(Exception):
    """Raised at the start of an epoch once the training budget is spent."""


def install_budget(clock: BudgetClock) -> dict[str, float]:
    """Apply ``clock`` to mace-torch's epoch loop; returns a dict that receives ``train_s``.

    ``run_train`` calls ``tools.train`` through the ``mace.tools`` package, and
    ``train`` calls ``train_one_epoch`` through its module's globals, so the two
    attributes are replaced there. ``train_one_epoch`` gets its data loader
    through :meth:`BudgetClock.cut`; the epoch after the budget raises
    :class:`BudgetReached`, which ends ``tools.train`` normally.
    """
    import mace.tools

    train_module = importlib.import_module("mace.tools.train")
    original_train: Callable[..., Any] = train_module.train
    original_epoch: Callable[..., Any] = train_module.train_one_epoch
    timing: dict[str, float] = {}

    def train_one_epoch(*args: Any, **kwargs: Any) -> Any:
        if clock.spent:
            raise BudgetReached
        clock.start_epoch()
        kwargs["data_loader"] = clock.cut(kwargs["data_loader"])
        return original_epoch(*args, **kwargs)

    def train(*args: Any, **kwargs: Any) -> Any:
        try:
            return original_train(*args, **kwargs)
        except BudgetReached:
            log(f"training stopped by the budget after {clock.epochs} epochs, {clock.steps} steps")
            return None
        finally:
            timing["train_s"] = clock.stopped_at if clock.stopped_at is not None else clock.elapsed()

    train_module.train_one_epoch = train_one_epoch
    mace.tools.train = train
    return timing


def option(arguments: list[str], name: str, default: str) -> str:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in a mace_run_train argument list."""
    for index, argument in enumerate(arguments):
        if argument == name and index + 1 < len(arguments):
            return arguments[index + 1]
        if argument.startswith(name + "="):
            return argument.split("=", 1)[1]
    return default


def main() -> None:
    args, mace_args = parse_budget_args(__doc__.splitlines()[0], "mace_run_train", threads=True)

    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    clock = BudgetClock(args.budget_seconds)
    timing = install_budget(clock)
    from mace.cli import run_train

    log(f"mace_run_train {' '.join(mace_args)}")
    started = time.monotonic()
    sys.argv = ["mace_run_train", *mace_args]
    run_train.main()
    name = option(mace_args, "--name", "")
    model_dir = Path(option(mace_args, "--model_dir", option(mace_args, "--work_dir", ".")))
    summary = {
        RESULT_KEY: 1,
        "peer": "mace",
        "versions": versions(["torch", "mace-torch", "e3nn"]),
        "threads": args.threads,
        "torch_threads": torch.get_num_threads(),
        **clock.summary(),
        "train_s": timing.get("train_s", clock.elapsed()),  # at the budget stop
        "total_s": time.monotonic() - started,
        "stop_reason": "budget" if clock.stopped_at is not None else "mace_run_train ended (max epochs)",
        "model": str(model_dir / f"{name}.model"),
        "mace_args": mace_args,
    }
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    sys.stdout.flush()
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
