"""The SO3krates model: basis functions, layers, neighbour lists, the assembled model, checkpoints."""

from so3krates_openmm.model.checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint
from so3krates_openmm.model.config import SO3kratesConfig
from so3krates_openmm.model.so3krates import SO3krates

__all__ = ["SO3krates", "SO3kratesConfig", "CheckpointError", "load_model", "read_checkpoint", "save_checkpoint"]
