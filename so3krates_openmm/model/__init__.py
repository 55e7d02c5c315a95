"""The SO3krates model: basis functions, layers, neighbour lists, the assembled model, checkpoints.

Importing this package registers the fused C++ operators of the fast path
(``torch.ops.so3krates.*``) when they have been built on this machine, so that
a model exported with ``--kernels fused`` loads in plain OpenMM after
``import so3krates_openmm.model``; see :mod:`so3krates_openmm.model.kernels`.
"""

from so3krates_openmm.model.checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint
from so3krates_openmm.model.config import SO3kratesConfig
from so3krates_openmm.model.kernels import load as _load_kernels
from so3krates_openmm.model.so3krates import SO3krates

__all__ = ["SO3krates", "SO3kratesConfig", "CheckpointError", "load_model", "read_checkpoint", "save_checkpoint"]

_load_kernels(build=False)
