#!/usr/bin/env python
"""``so3krates-train`` under the hard training-time budget of the accuracy comparison (project venv).

::

    .venv/bin/python bench/peers/so3krates_accuracy_train.py --budget-seconds 1800 \\
        --summary OUT.json -- SO3KRATES_TRAIN_ARGS...

``so3krates-train --max-time`` stops after the optimiser step that reaches
the budget, but its clock starts with the run (data loading and set-up
included). For exactly the rule of ``mace_accuracy_train.py`` this driver runs
the project's own ``so3krates_openmm.cli.train.main`` in-process under
:class:`peer_common.BudgetClock`: the clock starts with the first epoch; once
``--budget-seconds`` have passed no further batch is trained, the epoch in
progress ends there, is validated and (if best) checkpointed as usual, and the
run writes its test report. The wrapper replaces the trainer module's
``epoch_batches`` (training calls only; the evaluation calls pass
``shuffle=False`` and are left alone).

The summary JSON (``--summary``) records epochs begun, steps and the training
time at the stop.
"""

from __future__ import annotations

import json
import time
from typing import Any

from peer_common import RESULT_KEY, BudgetClock, log, parse_budget_args


class BudgetedBatches(list):
    """An epoch's batch list whose training loop (its second iteration) stops at the budget.

    ``Trainer.train_epoch`` iterates the list twice: once at the start for the
    atom counts of every batch (left whole), then in the training loop.
    """

    def __init__(self, batches: list[Any], clock: BudgetClock) -> None:
        super().__init__(batches)
        self.clock = clock
        self.iterations = 0

    def __iter__(self) -> Any:
        self.iterations += 1
        whole = super().__iter__()
        return whole if self.iterations == 1 else self.clock.cut(whole)


def install_budget(clock: BudgetClock) -> None:
    """Route the trainer's training batches through ``clock``."""
    from so3krates_openmm.training import trainer as trainer_module

    original = trainer_module.epoch_batches

    def epoch_batches(*args: Any, **kwargs: Any) -> Any:
        batches = original(*args, **kwargs)
        if not kwargs.get("shuffle", True):
            return batches  # evaluation
        clock.start_epoch()
        return BudgetedBatches(batches, clock)

    trainer_module.epoch_batches = epoch_batches


def main() -> None:
    args, train_args = parse_budget_args(__doc__.splitlines()[0], "so3krates-train")

    from so3krates_openmm.cli.train import main as train_main

    clock = BudgetClock(args.budget_seconds)
    install_budget(clock)
    train_args = [*train_args, "--max-time", f"{args.budget_seconds:.0f}s"]
    log(f"so3krates-train {' '.join(train_args)}")
    started = time.monotonic()
    status = train_main(train_args)
    summary = {
        RESULT_KEY: 1,
        "model": "so3krates",
        **clock.summary(),
        "train_s": clock.stopped_at if clock.stopped_at is not None else clock.elapsed(),
        "total_s": time.monotonic() - started,
        "exit_status": status,
        "train_args": train_args,
    }
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary), flush=True)
    raise SystemExit(status)


if __name__ == "__main__":
    main()
