#!/usr/bin/env python
r"""Langevin NVT production MD with checkpoints, --resume and the stability monitor.

Examples:
    python md_protocols/langevin_nvt.py --system ac_ala3_nhme --ns 0.1 --output runs/nvt
    python md_protocols/langevin_nvt.py --structure my.pdb --model my_model.pt --temperature 500 \
        --steps 200000 --platform CPU --threads 2 --seed 7 --output runs/my500K
    python md_protocols/langevin_nvt.py --protocol md_protocols/langevin_nvt.yaml --resume

Writes trajectory.dcd, log.csv, checkpoint.zip, final_state.xml, final.pdb,
energy.png, run.json and stability.json to --output. A run killed at any
moment continues with --resume (same flags) without lost or duplicated frames.

Every option can also be set in a YAML protocol file (`--protocol langevin_nvt.yaml`);
flags override the file. `--help` lists all options with units and defaults.
"""

import os
import sys

# Idle OpenMP threads sleep instead of spinning: with more threads than free cores
# (a shared machine) spinning made PyTorch 10-20x slower here. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from so3krates_openmm.md.commands import langevin_nvt_main

if __name__ == "__main__":
    sys.exit(langevin_nvt_main())
