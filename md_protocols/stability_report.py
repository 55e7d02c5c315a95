#!/usr/bin/env python
r"""Summarise MD runs as a Markdown table: simulated time, ns/day, stable fraction,
bond statistics and, for the buckyball catcher, the C60-catcher distance.

A run still in progress (no run.json yet) is summarised from its checkpoint and log so far.

Example (after the stability_*.yaml protocols):
    python md_protocols/stability_report.py bench/stability/* --json bench/stability/summary.json
"""

import sys

from so3krates_openmm.cli.stability_report import main

if __name__ == "__main__":
    sys.exit(main())
