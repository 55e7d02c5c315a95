#!/usr/bin/env python
r"""Ac-Ala3-NHMe: Ramachandran (phi, psi) plot of the three alanines.

Examples:
    python md_protocols/ramachandran.py --system ac_ala3_nhme --steps 20000 --output runs/rama
    python md_protocols/ramachandran.py --structure peptide.pdb --dcd traj.dcd --output out

The structure must be a PDB with residue and backbone atom names (N, CA, C).
Writes ramachandran.csv and ramachandran.png.

Every option can also be set in a YAML protocol file (`--protocol ramachandran.yaml`);
flags override the file. `--help` lists all options with units and defaults.
"""

import os
import sys

# Idle OpenMP threads sleep instead of spinning: with more threads than free cores
# (a shared machine) spinning made PyTorch 10-20x slower here. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from so3krates_openmm.md.commands import ramachandran_main

if __name__ == "__main__":
    sys.exit(ramachandran_main())
