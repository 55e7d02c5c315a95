"""Training SO3krates on reference energies and forces (the paper's recipe, MACE/NequIP conveniences).

Building blocks, one concern per module:

- :mod:`.config`: :class:`TrainingConfig`, YAML/TOML files, command-line flags, validation;
- :mod:`.batches`: pre-collated tensors, per-epoch shuffling, sharding over processes;
- :mod:`.shifts`: per-element energy shifts by least squares, energy scale;
- :mod:`.loss`: the weighted energy/force MSE and the error metrics;
- :mod:`.schedule`: exponential learning-rate decay; :mod:`.ema`: weight averaging;
- :mod:`.distributed`: ``torchrun`` process groups (DDP);
- :mod:`.reporting`: ``metrics.csv``, learning-curve PNG, test report;
- :mod:`.finetune`: starting a new run from a checkpoint's weights (``--init-from``);
- :mod:`.trainer`: the assembled :class:`Trainer` and :func:`train`.

Command line: ``so3krates-train`` or ``python -m so3krates_openmm.cli.train``
(also under ``torchrun --nproc_per_node P -m so3krates_openmm.cli.train``).
Every option is a flag and a key of a YAML file, for example::

    # peptide.yaml -- so3krates-train --config peptide.yaml --max-time 6h
    data: [runs/data/ac_ala3_nhme_300K.npz, runs/data/ac_ala3_nhme_500K.npz]
    train_size: 1000        # frames (int), fraction (float), or null: all but valid and test
    valid_size: 200
    test_size: 300
    seed: 0
    features: 132           # the paper's model: F=132, T=3, H=4, degrees 1-3, 5 A
    output: runs/peptide
    threads: 2

From Python: ``train(config_from_dict({...}), dataset=...)`` with a
:class:`~so3krates_openmm.data.dataset.MolecularDataset`.
"""

from so3krates_openmm.training.config import (
    ConfigError,
    TrainingConfig,
    config_from_dict,
)
from so3krates_openmm.training.trainer import (
    Trainer,
    TrainingError,
    TrainingResult,
    train,
)

__all__ = [
    "ConfigError",
    "Trainer",
    "TrainingConfig",
    "TrainingError",
    "TrainingResult",
    "config_from_dict",
    "train",
]
