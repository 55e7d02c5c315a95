#!/usr/bin/env python
r"""NVE energy conservation: drift of the total energy per ns per atom, and its plot.

Examples:
    python md_protocols/nve.py --system ac_ala3_nhme --steps 20000 --output runs/nve
    python md_protocols/nve.py --structure s.pdb --log runs/nve/log.csv --output runs/nve   # analyse only

Runs --equilibration-steps of Langevin NVT, then velocity Verlet; writes
energy_drift.json, energy_drift.png and energy.png.

Also a console script (setup.py). Every option can also be set in a YAML protocol file (`--protocol nve.yaml`);
flags override the file. `--help` lists all options with units and defaults.
"""

import sys

from so3krates_openmm.cli.nve import main

if __name__ == "__main__":
    sys.exit(main())
