#!/usr/bin/env python
r"""Minima exploration: MD at raised temperature, snapshots minimised in parallel, duplicates removed by RMSD.

Examples:
    python md_protocols/minima.py --system ac_ala3_nhme --temperature 500 --steps 40000 \
        --snapshot-interval 200 --workers 2 --output runs/minima

Writes minima.csv (energies in kJ/mol), minima.pdb (one model per minimum),
minima_energies.png and minima.json; the MD run is in --output/md.

Every option can also be set in a YAML protocol file (`--protocol minima.yaml`);
flags override the file. `--help` lists all options with units and defaults.
"""

import os
import sys

# Idle OpenMP threads sleep instead of spinning: with more threads than free cores
# (a shared machine) spinning made PyTorch 10-20x slower here. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from so3krates_openmm.md.commands import minima_main

if __name__ == "__main__":
    sys.exit(minima_main())
