#!/usr/bin/env python
r"""Ac-Ala3-NHMe: Ramachandran (phi, psi) plot of the three alanines.

Examples:
    python md_protocols/ramachandran.py --system ac_ala3_nhme --steps 20000 --output runs/rama
    python md_protocols/ramachandran.py --structure peptide.pdb --dcd traj.dcd --output out

The structure must be a PDB with residue and backbone atom names (N, CA, C).
Writes ramachandran.csv and ramachandran.png.

Also a console script (setup.py). Every option can also be set in a YAML protocol file (`--protocol ramachandran.yaml`);
flags override the file. `--help` lists all options with units and defaults.
"""

import sys

from so3krates_openmm.cli.ramachandran import main

if __name__ == "__main__":
    sys.exit(main())
