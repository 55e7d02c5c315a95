#!/usr/bin/env python
r"""Vibrational power spectrum from the velocity autocorrelation function (paper Fig. 1b).

Examples:
    python md_protocols/spectrum.py --system ac_ala3_nhme --steps 40000 --output runs/spectrum
    python md_protocols/spectrum.py --structure s.pdb --velocities runs/spectrum/velocities.vel --output out
    python md_protocols/spectrum.py --structure s.pdb --dcd traj.dcd --output out   # finite differences

Writes spectrum.csv (wavenumber in cm^-1, intensity), vacf.csv and spectrum.png.

Also a console script (setup.py). Every option can also be set in a YAML protocol file (`--protocol spectrum.yaml`);
flags override the file. `--help` lists all options with units and defaults.
"""

import sys

from so3krates_openmm.cli.spectrum import main

if __name__ == "__main__":
    sys.exit(main())
