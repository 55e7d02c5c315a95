"""``md_protocols/spectrum.py``: vibrational power spectrum from the VACF of an NVE run
(:func:`so3krates_openmm.md.recipes.run_spectrum`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from so3krates_openmm.cli.common import run_protocol


def main(argv: Sequence[str] | None = None) -> int:
    """Run the protocol with ``argv`` (flags and ``--protocol FILE``); the exit code: 0 done, 1 unstable,
    2 bad input."""
    return run_protocol("SpectrumOptions", "run_spectrum", argv)


if __name__ == "__main__":
    sys.exit(main())
