"""so3krates-openmm: train SO3krates in PyTorch, export it to TorchScript and run it in OpenMM."""

from so3krates_openmm.model import SO3krates, SO3kratesConfig

__version__ = "0.1.0"
__all__ = ["SO3krates", "SO3kratesConfig", "__version__"]
