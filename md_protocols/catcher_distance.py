#!/usr/bin/env python
r"""Buckyball catcher: distance between the C60 centre and the catcher's centre over time.

Examples:
    python md_protocols/catcher_distance.py --system buckyball_catcher --steps 20000 --output runs/catcher
    python md_protocols/catcher_distance.py --structure complex.pdb --dcd traj.dcd --output out

Writes catcher_distance.csv, catcher_distance.png and catcher_distance.json.

Every option can also be set in a YAML protocol file (`--protocol catcher_distance.yaml`);
flags override the file. `--help` lists all options with units and defaults.
"""

import os
import sys

# Idle OpenMP threads sleep instead of spinning: with more threads than free cores
# (a shared machine) spinning made PyTorch 10-20x slower here. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from so3krates_openmm.md.commands import catcher_distance_main

if __name__ == "__main__":
    sys.exit(catcher_distance_main())
