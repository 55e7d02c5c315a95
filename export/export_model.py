#!/usr/bin/env python
"""Export an SO3krates checkpoint to a TorchScript .pt for OpenMM (same as `so3krates-export`).

Example:
    python export/export_model.py runs/peptide/best_checkpoint.pt \
        --structure so3krates_openmm/pretrained/ac_ala3_nhme/structure.pdb -o model.pt
"""

import sys

from so3krates_openmm.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
