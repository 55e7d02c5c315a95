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

Also a console script (setup.py). Every option can also be set in a YAML protocol file (`--protocol langevin_nvt.yaml`);
flags override the file. `--help` lists all options with units and defaults.
"""

import sys

from so3krates_openmm.cli.langevin_nvt import main

if __name__ == "__main__":
    sys.exit(main())
