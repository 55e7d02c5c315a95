#!/usr/bin/env python
r"""Summarise MD runs as a Markdown table: simulated time, ns/day, stable fraction,
bond statistics and, for the buckyball catcher, the C60-catcher distance.

A run still in progress (no run.json yet) is summarised from its checkpoint and log so far.

Example (after the stability_*.yaml protocols):
    python md_protocols/stability_report.py bench/stability/* --json bench/stability/summary.json
"""

import argparse
import json
import sys
from pathlib import Path

from so3krates_openmm.md.report import markdown_table, summarize_run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (--output of langevin_nvt.py; finished or in progress)")
    parser.add_argument("--json", type=Path, help="also write every row, with per-element-pair bond statistics, as JSON")
    arguments = parser.parse_args(argv)
    try:
        rows = [summarize_run(run) for run in arguments.runs]
    except (FileNotFoundError, ValueError) as error:
        print(f"stability_report: error: {error}", file=sys.stderr)
        return 2
    print(markdown_table(rows))
    if arguments.json:
        arguments.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
