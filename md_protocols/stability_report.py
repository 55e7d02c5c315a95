#!/usr/bin/env python
r"""Summarise finished runs as a Markdown table: simulated time, ns/day, stable fraction,
bond statistics and, for the buckyball catcher, the C60-catcher distance.

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
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (each with run.json)")
    parser.add_argument("--json", type=Path, help="also write every row, with per-element-pair bond statistics, as JSON")
    arguments = parser.parse_args(argv)
    missing = [str(run) for run in arguments.runs if not (run / "run.json").is_file()]
    if missing:
        print(f"stability_report: error: no run.json in {', '.join(missing)}", file=sys.stderr)
        return 2
    rows = [summarize_run(run) for run in arguments.runs]
    print(markdown_table(rows))
    if arguments.json:
        arguments.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
