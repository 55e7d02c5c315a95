"""so3krates-openmm: train SO3krates in PyTorch, export it to TorchScript and run it in OpenMM.

The public names are imported on first use, so that ``import so3krates_openmm``
(and the console scripts) start without loading PyTorch.
"""

__version__ = "0.1.0"
__all__ = ["SO3krates", "SO3kratesConfig", "SO3kratesCalculator", "__version__"]

_LAZY = {
    "SO3krates": "so3krates_openmm.model.so3krates",
    "SO3kratesConfig": "so3krates_openmm.model.config",
    "SO3kratesCalculator": "so3krates_openmm.ase_calculator",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'so3krates_openmm' has no attribute {name!r}")
