"""``python -m so3krates_openmm.training`` moved: the command line lives in :mod:`so3krates_openmm.cli.train`."""

import sys

print("error: `python -m so3krates_openmm.training` is now `python -m so3krates_openmm.cli.train` "
      "(or `so3krates-train`; under torchrun: `torchrun --nproc_per_node P -m so3krates_openmm.cli.train ...`)",
      file=sys.stderr)
sys.exit(2)
