"""OpenMM simulation layer: platforms, simulations, resumable reporters, stability, analysis.

The scripts in ``md_protocols/`` (through :mod:`so3krates_openmm.cli`) are thin wrappers around this package:

- :mod:`.platforms` and :mod:`.simulation`: platform, threads, integrator, seeds, ``Simulation``.
- :mod:`.reporters` and :mod:`.checkpoint`: CSV log, DCD, velocities, progress; checkpoints and exact resume.
- :mod:`.stability`: the stability monitor (bond stretch, collisions, NaN) and the stable fraction.
- :mod:`.runner`: :func:`run_md`, a complete production run in one call.
- :mod:`.energy`, :mod:`.spectrum`, :mod:`.catcher`, :mod:`.ramachandran`: analyses and their plots;
  :mod:`.timestep`: whether a longer time step samples the same distributions (``bench/timestep/validate.py``).
- :mod:`.minima`: minima exploration, snapshots minimised as Dask tasks; RMSDs after superposition.
- :mod:`.exploration`: minima at scale (several runs, saturation, comparison with GFN2-xTB).
- :mod:`.protocols`: each protocol's typed options (dataclasses; flags and YAML files via
  :mod:`so3krates_openmm.options`).
- :mod:`.recipes`: one function per protocol (run or read a trajectory, analyse, write results).
"""

from so3krates_openmm.md.platforms import available_platforms, get_platform
from so3krates_openmm.md.runner import RunConfig, RunResult, run_md
from so3krates_openmm.md.simulation import (
    SimulationSettings,
    build_simulation,
    make_integrator,
)
from so3krates_openmm.md.stability import (
    SimulationUnstable,
    StabilityCriteria,
    StabilityMonitor,
    StabilityResult,
)

__all__ = [
    "RunConfig",
    "RunResult",
    "SimulationSettings",
    "SimulationUnstable",
    "StabilityCriteria",
    "StabilityMonitor",
    "StabilityResult",
    "available_platforms",
    "build_simulation",
    "get_platform",
    "make_integrator",
    "run_md",
]
