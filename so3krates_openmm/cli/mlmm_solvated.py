"""``md_protocols/mlmm_solvated.py``: ML/MM in TIP3P water, Langevin NVT
(:func:`so3krates_openmm.md.recipes.run_mlmm_solvated`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from so3krates_openmm.cli.common import run_protocol


def main(argv: Sequence[str] | None = None) -> int:
    """Run the protocol with ``argv`` (flags and ``--protocol FILE``); the exit code: 0 done, 1 unstable,
    2 bad input."""
    return run_protocol("MLMMSolvatedOptions", "run_mlmm_solvated", argv)


if __name__ == "__main__":
    sys.exit(main())
