"""``md_protocols/ramachandran.py``: Ramachandran plot of the alanines over a Langevin run
(:func:`so3krates_openmm.md.recipes.run_ramachandran`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from so3krates_openmm.cli.common import run_protocol


def main(argv: Sequence[str] | None = None) -> int:
    """Run the protocol with ``argv`` (flags and ``--protocol FILE``); the exit code: 0 done, 1 unstable,
    2 bad input."""
    return run_protocol("RamachandranOptions", "run_ramachandran", argv)


if __name__ == "__main__":
    sys.exit(main())
