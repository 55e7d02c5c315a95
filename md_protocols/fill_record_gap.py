#!/usr/bin/env python
r"""Fill a gap in a finished run's log and DCD from a recomputation of that stretch.

A run whose output files lost records (e.g. replaced by `git stash` while it wrote them) but whose
checkpoints held the full state can be repaired exactly. Recompute the stretch from a checkpoint
written before the gap, on the same platform and machine, past the first record after the gap:

    mkdir runs/recompute && cp OLD_COPY/{checkpoint.zip,log.csv,trajectory.dcd} runs/recompute/
    python md_protocols/langevin_nvt.py --protocol PROTOCOL.yaml --output runs/recompute --resume --steps N
    python md_protocols/fill_record_gap.py RUN_DIR runs/recompute

Every record the two share and the recomputation computed itself is checked (positions bitwise,
energies to 1e-12) before anything is written; the run's checkpoint sizes are updated with the files.
"""

import argparse
import json
import sys
from pathlib import Path

from so3krates_openmm.md.gaps import fill_record_gaps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the finished run with a gap (its --output directory)")
    parser.add_argument("recomputed", type=Path, help="the finished recomputation (resumed from a checkpoint before the gap)")
    arguments = parser.parse_args(argv)
    try:
        result = fill_record_gaps(arguments.run, arguments.recomputed)
    except (FileNotFoundError, ValueError) as error:
        print(f"fill_record_gap: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
