"""The C++/OpenMP operators of the fast path: build on first use, then load from a cache.

The sources (``csrc/*.cpp``, shipped with the package) register the
TorchScript operator ``torch.ops.so3krates.energy_forces`` (energy and
forces of the whole model, ``model.cpp``) and the operators it is built of:
``pair_forward`` and ``pair_backward`` (the per-pair attention chain of a
layer), ``radial_forward`` and ``radial_backward`` (the radial filter networks
of all layers, cache-blocked over pairs), ``spherical_forward`` and
``spherical_backward`` (the spherical parts of a layer's filters); CPU,
float32 and float64. They are
compiled once per source version, torch version and CPU type with
``torch.utils.cpp_extension`` (needs a C++ compiler; ``g++`` and ``ninja``)
into ``$SO3KRATES_KERNELS_DIR`` (default ``~/.cache/so3krates_openmm/kernels``),
and later imports only load the library.

``import so3krates_openmm.model`` calls :func:`load` with ``build=False``: it
loads the operators when they are built already, so that a model exported
with ``--kernels fused`` runs in plain OpenMM after that one import. Exporting
or building a fused model builds them when needed (:func:`load`); ``make venv``
builds them once. Without a compiler the ``reference`` and ``analytic`` kinds
still work.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
from pathlib import Path

import torch

from so3krates_openmm.files import write_atomically

SOURCES = sorted((Path(__file__).resolve().parent / "csrc").glob("*.cpp"))
#: headers shared by the sources (part of the cache key)
HEADERS = sorted((Path(__file__).resolve().parent / "csrc").glob("*.h"))
LIBRARY_NAME = "so3krates_kernels"
#: compiler flags; -march=native: the cache key includes the CPU's model and flags (one build per CPU type)
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c++17"]


class KernelsUnavailable(RuntimeError):
    """The C++ operators could not be built or loaded (no compiler, failed build)."""


def cache_directory() -> Path:
    """Where the compiled operators live: one subdirectory per source and torch version."""
    digest = hashlib.sha256()
    for source in SOURCES + HEADERS:
        digest.update(source.read_bytes())
    digest.update(" ".join(CFLAGS).encode())
    digest.update(_cpu_description().encode())
    root = Path(os.environ.get("SO3KRATES_KERNELS_DIR", Path.home() / ".cache" / "so3krates_openmm" / "kernels"))
    return root / f"torch{torch.__version__}-{digest.hexdigest()[:16]}"


def _cpu_description() -> str:
    """The CPU model and instruction-set flags (Linux ``/proc/cpuinfo``), else the platform's name."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = [line for line in lines if line.startswith(("model name", "flags"))][:2]
    return "\n".join(wanted) or platform.machine()


def library_path() -> Path:
    """The compiled shared library (it may not exist yet)."""
    return cache_directory() / f"{LIBRARY_NAME}.so"


def is_loaded() -> bool:
    """True when ``torch.ops.so3krates.energy_forces`` is registered in this process."""
    try:
        torch.ops.so3krates.energy_forces  # noqa: B018 (the lookup itself is the test: it raises when not registered)
    except (AttributeError, RuntimeError):
        return False
    return True


def load(build: bool = True) -> bool:
    """Register the operators in this process; returns whether they are available.

    With ``build=True`` a missing library is compiled first (about a minute,
    once) and a failure raises :class:`KernelsUnavailable` naming the cause;
    with ``build=False`` nothing is compiled and the return value says whether
    the operators are there.
    """
    if is_loaded():
        return True
    path = library_path()
    if not path.is_file():
        if not build:
            return False
        _build(path.parent)  # loads the library it builds
    if not is_loaded():
        torch.ops.load_library(str(path))
    return is_loaded()


def _build(directory: Path) -> None:
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise KernelsUnavailable(
            f"the fused kernels need a C++ compiler ({compiler!r} not found): install g++ "
            "(e.g. apt-get install g++), or export with --kernels reference"
        )
    # Each process compiles in a scratch folder of its own, then moves the library into place atomically:
    # a build killed at any moment leaves at most that folder (a lock file left in a shared build
    # folder would make every later build there wait for ever), never half a library.
    scratch = directory.parent / f".build-{directory.name}-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    print(f"so3krates_openmm: compiling the fused kernels into {directory} (once per CPU type)", file=sys.stderr)
    try:
        built = cpp_extension.load(
            name=LIBRARY_NAME,
            sources=[str(source) for source in SOURCES],
            extra_cflags=CFLAGS,
            extra_ldflags=["-fopenmp"],
            build_directory=str(scratch),
            is_python_module=False,
            verbose=False,
        )
    except Exception as error:  # the compiler's output is in the exception
        raise KernelsUnavailable(
            f"building the fused kernels in {scratch} failed: {error}\n"
            "Export with --kernels reference to run without them."
        ) from error
    write_atomically(directory / f"{LIBRARY_NAME}.so", lambda temporary: shutil.copyfile(built, temporary))
    shutil.rmtree(scratch, ignore_errors=True)

