"""``md_protocols/langevin_nvt.py``: Langevin NVT production with checkpoints, --resume and the stability monitor
(:func:`so3krates_openmm.md.recipes.run_langevin_nvt`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from so3krates_openmm.cli.common import run_protocol


def main(argv: Sequence[str] | None = None) -> int:
    """Run the protocol with ``argv`` (flags and ``--protocol FILE``); the exit code: 0 done, 1 unstable,
    2 bad input."""
    return run_protocol("LangevinNVTOptions", "run_langevin_nvt", argv)


if __name__ == "__main__":
    sys.exit(main())
