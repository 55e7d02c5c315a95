"""``so3krates-active-learning --structure S --checkpoint C --data D [--config FILE.yaml]``: the active-learning
loop as one command (:mod:`so3krates_openmm.active_learning`).

Committee MD in OpenMM at the given temperatures -> frames selected by committee disagreement (diverse) and at
random -> GFN2-xTB labels -> merged data -> fine-tuned committee -> repeat, until the disagreement along MD falls
below ``--target-force-std`` or ``--iterations`` are done. The same command again resumes a killed loop.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from so3krates_openmm.cli.common import EXIT_OK, NO_PROCESS_TUNING, NO_PROCESS_TUNING_HELP, error, tune_process

PROG = "so3krates-active-learning"


def main(argv: Sequence[str] | None = None) -> int:
    """Run or resume the loop; exit code 0 done, 2 bad input, 130 interrupted (run the same command to resume)."""
    tune_process(argv, openblas=True)
    import json
    import logging

    from so3krates_openmm.active_learning import ActiveLearningSettings, run_active_learning
    from so3krates_openmm.data.dataset import DataError
    from so3krates_openmm.model.checkpoint import CheckpointError
    from so3krates_openmm.options import OptionsError, add_switch, options_parser, parse_options
    from so3krates_openmm.training import ConfigError, TrainingError

    parser = options_parser(
        ActiveLearningSettings, prog=PROG, description=__doc__.split("\n\n")[1].replace("\n", " "),
        config_help="YAML file of the loop's options (keys as the flags with underscores, e.g. 'md_ps: 10'); flags "
        "override it",
    )
    add_switch(parser, NO_PROCESS_TUNING, NO_PROCESS_TUNING_HELP)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        settings, _, _ = parse_options(parser, ActiveLearningSettings, argv)
        summary = run_active_learning(settings)
    except (OptionsError, ConfigError, DataError, CheckpointError, TrainingError, FileNotFoundError,
            ValueError) as problem:
        return error(PROG, problem)
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to continue the loop where it stopped", file=sys.stderr)
        return 130
    print(json.dumps({k: v for k, v in summary.items() if k != "reports"}, indent=2))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
