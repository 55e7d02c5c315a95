"""``so3krates-train [--config FILE.yaml] --data FILE [--option value ...]``: train SO3krates
(:mod:`so3krates_openmm.training`).

Multi-process: ``torchrun --nproc_per_node 2 -m so3krates_openmm.cli.train --data FILE ...``
(the batch size is global: each process takes its share of every batch).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from so3krates_openmm.cli.common import EXIT_OK, NO_PROCESS_TUNING, NO_PROCESS_TUNING_HELP, error, tune_process

PROG = "so3krates-train"


def parse_config(argv: Sequence[str] | None = None):
    """The :class:`~so3krates_openmm.training.config.TrainingConfig` of a command line: defaults < ``--config``
    YAML files < flags; validated. Raises :class:`~so3krates_openmm.training.config.ConfigError`."""
    from so3krates_openmm.options import OptionsError, add_switch, options_parser, parse_options
    from so3krates_openmm.training.config import ConfigError, TrainingConfig

    arguments = sys.argv[1:] if argv is None else list(argv)
    toml = [argument for argument in arguments if argument.lower().endswith(".toml")]
    if toml:
        raise ConfigError(f"{toml[0]}: TOML config files are no longer read; write the same keys as YAML "
                          "(key: value per line) and pass that file to --config")
    parser = options_parser(
        TrainingConfig, prog=PROG,
        description="Train an SO3krates force field on reference energies and forces (single process, or several "
        "with torchrun).",
        config_help="YAML file of options (keys as the flags with underscores, e.g. 'train_size: 1000'); flags "
        "override it",
    )
    add_switch(parser, NO_PROCESS_TUNING, NO_PROCESS_TUNING_HELP)
    try:
        config, _, given = parse_options(parser, TrainingConfig, argv)
    except OptionsError as problem:
        raise ConfigError(str(problem)) from None
    config.given_options = given
    return config.validate()


def main(argv: Sequence[str] | None = None) -> int:
    """Train; exit code 0 done, 2 bad input, 130 interrupted (resumable with ``--resume``)."""
    tune_process(argv)
    from so3krates_openmm.data.dataset import DataError
    from so3krates_openmm.model.checkpoint import CheckpointError
    from so3krates_openmm.training import ConfigError, Trainer, TrainingError
    from so3krates_openmm.training.distributed import shutdown_distributed

    try:
        config = parse_config(argv)
    except ConfigError as problem:
        return error(PROG, problem)
    trainer = None
    try:
        trainer = Trainer(config)
        result = trainer.run()
    except (ConfigError, DataError, CheckpointError, TrainingError, FileNotFoundError) as problem:
        return error(PROG, problem)
    except KeyboardInterrupt:
        print("\ninterrupted: continue from the last checkpoint (every --checkpoint-interval, and at each epoch end) "
              f"with the same command and --resume (output {config.output})", file=sys.stderr)
        return 130
    finally:
        if trainer is not None:
            shutdown_distributed(trainer.context)
    if trainer.context.is_main:
        print(f"best checkpoint: {result.best_checkpoint} ({result.epochs} epochs, {result.steps} steps)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
