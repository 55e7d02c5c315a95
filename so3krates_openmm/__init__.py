"""so3krates-openmm: train SO3krates in PyTorch, export it to TorchScript and run it in OpenMM.

The main functions import from here::

    from so3krates_openmm import (
        SO3krates, SO3kratesCalculator, SO3kratesConfig,
        create_system, create_torch_force, export_checkpoint, read_structure,
    )

They are imported on first use, so that ``import so3krates_openmm`` (and the
console scripts) start without loading PyTorch or OpenMM, and importing the
package changes no process setting.
"""

__version__ = "0.1.0"

_LAZY = {
    "SO3krates": "so3krates_openmm.model.so3krates",
    "SO3kratesConfig": "so3krates_openmm.model.config",
    "SO3kratesCalculator": "so3krates_openmm.ase_calculator",
    "create_system": "so3krates_openmm.openmm_force",
    "create_torch_force": "so3krates_openmm.openmm_force",
    "export_checkpoint": "so3krates_openmm.export",
    "read_structure": "so3krates_openmm.data.structures",
}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'so3krates_openmm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
