#!/usr/bin/env python
r"""Vibrational power spectrum from the velocity autocorrelation function (paper Fig. 1b).

Examples:
    python md_protocols/spectrum.py --system ac_ala3_nhme --steps 40000 --output runs/spectrum
    python md_protocols/spectrum.py --structure s.pdb --velocities runs/spectrum/velocities.vel --output out
    python md_protocols/spectrum.py --structure s.pdb --dcd traj.dcd --output out   # finite differences

Writes spectrum.csv (wavenumber in cm^-1, intensity), vacf.csv and spectrum.png.

Every option can also be set in a YAML protocol file (`--protocol spectrum.yaml`);
flags override the file. `--help` lists all options with units and defaults.
"""

import os
import sys

# Idle OpenMP threads sleep instead of spinning: with more threads than free cores
# (a shared machine) spinning made PyTorch 10-20x slower here. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from so3krates_openmm.md.commands import spectrum_main

if __name__ == "__main__":
    sys.exit(spectrum_main())
