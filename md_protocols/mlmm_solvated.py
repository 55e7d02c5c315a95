#!/usr/bin/env python
r"""ML/MM: Ac-Ala3-NHMe modelled by SO3krates in a periodic TIP3P water box modelled by amber14.

Examples:
    python md_protocols/mlmm_solvated.py --protocol md_protocols/mlmm_solvated.yaml
    python md_protocols/mlmm_solvated.py --structure peptide.pdb --checkpoint best_checkpoint.pt --steps 2000

The molecule's internal energy comes from the SO3krates checkpoint through openmm-ml
(`MLPotential("so3krates").createMixedSystem`, mechanical embedding); the water and
the molecule-water interactions from amber14 + TIP3P with PME. Writes the usual run
files (trajectory.dcd, log.csv, checkpoint.zip for --resume, final.pdb, stability.json).

Also a console script (setup.py). Every option can also be set in a YAML protocol file
(`--protocol mlmm_solvated.yaml`); flags override the file. `--help` lists all options with units and defaults.
"""

import sys

from so3krates_openmm.cli.mlmm_solvated import main

if __name__ == "__main__":
    sys.exit(main())
