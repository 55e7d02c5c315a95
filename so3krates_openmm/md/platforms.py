"""Choosing an OpenMM platform and setting thread counts explicitly.

On the CPU, PyTorch (which evaluates the TorchForce model) and OpenMM's own
``CPU`` platform both start thread pools; left alone they oversubscribe the
cores. Every protocol therefore sets both counts from one ``threads`` value.
"""

from __future__ import annotations

import os
import sys

import openmm as mm

#: Platform names that protocols accept, in OpenMM's spelling.
KNOWN_PLATFORMS = ("Reference", "CPU", "CUDA", "OpenCL", "HIP")
#: Precision modes of the GPU platforms.
GPU_PRECISIONS = ("single", "mixed", "double")


def available_platforms() -> list[str]:
    """Names of the OpenMM platforms that loaded in this process."""
    return [mm.Platform.getPlatform(i).getName() for i in range(mm.Platform.getNumPlatforms())]


def default_thread_count() -> int:
    """Cores this process may use (respects CPU affinity, e.g. under taskset or Slurm)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def set_torch_threads(threads: int) -> None:
    """Set PyTorch's intra-op thread count (and inter-op count when still possible).

    Only acts when PyTorch is already imported (as it is once a ``TorchForce``
    System exists): a process running a classical System does not pay for
    importing it. More threads than free cores makes PyTorch's spinning
    OpenMP workers very slow (20x seen on a loaded 2-core machine).
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return
    torch.set_num_threads(int(threads))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        # Can only be set once, before any parallel work; a second call is harmless to skip.
        pass


def _normalise_platform_name(name: str) -> str:
    for known in KNOWN_PLATFORMS:
        if name.strip().lower() == known.lower():
            return known
    raise ValueError(f"unknown OpenMM platform {name!r}; choose one of {', '.join(KNOWN_PLATFORMS)}")


def get_platform(
    name: str = "CPU",
    *,
    threads: int | None = None,
    precision: str = "mixed",
    device_index: str | None = None,
    deterministic_forces: bool = False,
) -> tuple[mm.Platform, dict[str, str]]:
    """Return an OpenMM platform and the Context properties to use with it.

    Args:
        name: ``Reference``, ``CPU``, ``CUDA``, ``OpenCL`` or ``HIP`` (case-insensitive).
        threads: CPU threads for both OpenMM's ``CPU`` platform and PyTorch. ``None``
            uses every core available to this process. PyTorch's count is set for
            every platform when PyTorch is loaded (the TorchForce model runs in
            PyTorch on the host for ``Reference`` and ``CPU``): create the System first.
        precision: ``single``, ``mixed`` or ``double`` on the GPU platforms; ignored elsewhere.
        device_index: GPU index (e.g. ``"0"`` or ``"0,1"``) for the GPU platforms.
        deterministic_forces: ask the ``CPU``/``CUDA`` platforms for bitwise
            reproducible force summation.

    Raises:
        ValueError: when the platform is unknown or did not load here; the message
            lists the platforms that are available and why the requested one failed
            to load, when OpenMM recorded a reason.
    """
    canonical = _normalise_platform_name(name)
    n_threads = default_thread_count() if threads is None else int(threads)
    if n_threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    available = available_platforms()
    if canonical not in available:
        reasons = [
            failure
            for failure in mm.Platform.getPluginLoadFailures()
            if os.path.basename(failure.split(":")[0]).lower().startswith(f"libopenmm{canonical.lower()}.")
        ]
        message = (
            f"OpenMM platform {canonical!r} is not available on this machine; "
            f"available platforms: {', '.join(available)}"
        )
        if reasons:
            message += f". Loading it failed with: {reasons[0]}"
        raise ValueError(message)
    set_torch_threads(n_threads)
    platform = mm.Platform.getPlatformByName(canonical)
    properties: dict[str, str] = {}
    if canonical == "CPU":
        properties["Threads"] = str(n_threads)
        if deterministic_forces:
            properties["DeterministicForces"] = "true"
    elif canonical in ("CUDA", "OpenCL", "HIP"):
        if precision not in GPU_PRECISIONS:
            raise ValueError(f"precision must be one of {GPU_PRECISIONS}, got {precision!r}")
        properties["Precision"] = precision
        if device_index is not None:
            properties["DeviceIndex"] = str(device_index)
        if deterministic_forces and canonical == "CUDA":
            properties["DeterministicForces"] = "true"
    return platform, properties
