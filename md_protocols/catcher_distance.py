#!/usr/bin/env python
r"""Buckyball catcher: distance between the C60 centre and the catcher's centre over time.

Examples:
    python md_protocols/catcher_distance.py --system buckyball_catcher --steps 20000 --output runs/catcher
    python md_protocols/catcher_distance.py --structure complex.pdb --dcd traj.dcd --output out

Writes catcher_distance.csv, catcher_distance.png and catcher_distance.json.

Also a console script (setup.py). Every option can also be set in a YAML protocol file
(`--protocol catcher_distance.yaml`); flags override the file. `--help` lists all options with units and defaults.
"""

import sys

from so3krates_openmm.cli.catcher_distance import main

if __name__ == "__main__":
    sys.exit(main())
