#!/usr/bin/env python
r"""NVE energy conservation: drift of the total energy per ns per atom, and its plot.

Examples:
    python md_protocols/nve.py --system ac_ala3_nhme --steps 20000 --output runs/nve
    python md_protocols/nve.py --structure s.pdb --log runs/nve/log.csv --output runs/nve   # analyse only

Runs --equilibration-steps of Langevin NVT, then velocity Verlet; writes
energy_drift.json, energy_drift.png and energy.png.

Every option can also be set in a YAML protocol file (`--protocol nve.yaml`);
flags override the file. `--help` lists all options with units and defaults.
"""

import os
import sys

# Idle OpenMP threads sleep instead of spinning: with more threads than free cores
# (a shared machine) spinning made PyTorch 10-20x slower here. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from so3krates_openmm.md.commands import nve_main

if __name__ == "__main__":
    sys.exit(nve_main())
