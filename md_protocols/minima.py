#!/usr/bin/env python
r"""Minima exploration: MD at raised temperature, snapshots minimised in parallel, duplicates removed by RMSD.

Examples:
    python md_protocols/minima.py --system ac_ala3_nhme --temperature 500 --steps 40000 \
        --snapshot-interval 200 --workers 2 --output runs/minima

Writes minima.csv (energies in kJ/mol), minima.pdb (one model per minimum),
minima_energies.png and minima.json, and rejected.pdb when snapshots were rejected (a broken or a new bond:
structures to label, `so3krates-data label rejected.pdb`); the MD run is in --output/md.

Also a console script (setup.py). Every option can also be set in a YAML protocol file (`--protocol minima.yaml`);
flags override the file. `--help` lists all options with units and defaults.
"""

import sys

from so3krates_openmm.cli.minima import main

if __name__ == "__main__":
    sys.exit(main())
