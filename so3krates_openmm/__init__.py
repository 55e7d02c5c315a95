"""so3krates-openmm: train SO3krates in PyTorch, export it to TorchScript and run it in OpenMM."""

from so3krates_openmm.model import SO3krates, SO3kratesConfig

__version__ = "0.1.0"
__all__ = ["SO3krates", "SO3kratesConfig", "SO3kratesCalculator", "__version__"]


def __getattr__(name: str):
    # The ASE calculator is imported on first use so that `import so3krates_openmm` stays light.
    if name == "SO3kratesCalculator":
        from so3krates_openmm.ase_calculator import SO3kratesCalculator

        return SO3kratesCalculator
    raise AttributeError(f"module 'so3krates_openmm' has no attribute {name!r}")
