"""``md_protocols/stability_report.py``: MD runs summarised as a Markdown table (:mod:`so3krates_openmm.md.report`).

Simulated time, ns/day, stable fraction, bond statistics and, for the buckyball
catcher, the C60-catcher distance. A run still in progress (no run.json yet) is
summarised from its checkpoint and log so far.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from jsonargparse import ArgumentParser

from so3krates_openmm.cli.common import EXIT_OK, error


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table of the run directories in ``argv``; exit code 0, or 2 for a missing or unreadable run."""
    parser = ArgumentParser(prog="stability_report", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path,
                        help="run directories (--output of langevin_nvt.py; finished or in progress)")
    parser.add_argument("--json", type=Path,
                        help="also write every row, with per-element-pair bond statistics, as JSON")
    arguments = parser.parse_args(argv)
    from so3krates_openmm.md.report import markdown_table, summarize_run

    try:
        rows = [summarize_run(run) for run in arguments.runs]
    except (FileNotFoundError, ValueError) as problem:
        return error("stability_report", problem)
    print(markdown_table(rows))
    if arguments.json:
        arguments.json.write_text(json.dumps(rows, indent=2) + "\n")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
