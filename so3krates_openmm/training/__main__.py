"""``python -m so3krates_openmm.training`` (and ``torchrun ... -m so3krates_openmm.training``): see ``so3krates-train``."""

from so3krates_openmm.cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main())
