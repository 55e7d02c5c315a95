"""Process-wide tuning, in one explicit function: :func:`configure_process`.

Nothing in the library changes a process setting by itself: importing a module
or constructing an object leaves the environment, the allocator and the thread
pools alone. The command-line entry points (``so3krates-train``,
``md_protocols/*.py``, ...) call :func:`configure_process` first, unless given
``--no-process-tuning``; a script of your own may call it too::

    from so3krates_openmm.runtime import configure_process
    configure_process()          # before importing torch or openmm for the OpenMP setting
    import openmm, torch, ...

What it does (each part can be switched off by its argument):

- ``omp_passive``: ``OMP_WAIT_POLICY=PASSIVE`` unless already set, so idle OpenMP
  threads sleep instead of spinning. On a shared or busy machine spinning threads
  made PyTorch 10-20x slower (``bench/RESULTS.md``, "Threads"). OpenMP reads the
  variable when it starts, so this only takes effect before torch is imported.
- ``malloc``: glibc keeps freed memory in the heap for reuse
  (:func:`so3krates_openmm.memory.reuse_freed_memory`): 5-17 % less CPU time per
  MD step (``bench/RESULTS.md``, "Freed memory").
- ``openblas``: re-execute the process with Debian's pthread OpenBLAS preloaded
  (``LD_PRELOAD``) when it is installed, replacing the slow reference BLAS of
  tblite's wheel (GFN2-xTB about 2-5x faster, same results), with one OpenBLAS
  thread unless ``OPENBLAS_NUM_THREADS`` is set (PyTorch's BLAS calls then go
  to OpenBLAS too, whose extra threads spin between calls). Off by default: it
  replaces the running process, so only a command-line program may ask for it
  (``so3krates-data``, ``so3krates-active-learning`` and the bench scripts that label
  with GFN2-xTB do).
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Callable

#: Where Debian's ``libopenblas0-pthread`` puts the library.
OPENBLAS_PATTERNS = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblasp-r*.so",
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas*.so*",
    "/usr/lib/*-linux-gnu/openblas-pthread/libopenblas*.so*",
)
#: Set in the re-executed process's environment: the OpenBLAS library it preloads.
OPENBLAS_MARKER = "SO3KRATES_OPENBLAS_PRELOAD"
#: OpenBLAS's thread count, set to 1 in the re-executed process unless already set (:func:`preload_openblas`).
OPENBLAS_THREADS = "OPENBLAS_NUM_THREADS"


def configure_process(
    *,
    omp_passive: bool = True,
    malloc: bool = True,
    openblas: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, bool]:
    """Apply the process-wide settings the command-line programs use (see the module docstring).

    Args:
        omp_passive: set ``OMP_WAIT_POLICY=PASSIVE`` unless the variable is already set
            (effective only before torch/OpenMP initialises).
        malloc: keep freed memory in glibc's heap (Linux with glibc only).
        openblas: re-execute this process with Debian's OpenBLAS preloaded when it is
            installed and not preloaded yet (does not return in that case).
        log: receives one-line notes (e.g. that OpenBLAS was not found); default: none.

    Returns:
        Which settings are in effect: ``{"omp_passive": ..., "malloc": ..., "openblas": ...}``.
    """
    applied = {"omp_passive": False, "malloc": False, "openblas": False}
    if omp_passive:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        applied["omp_passive"] = os.environ["OMP_WAIT_POLICY"].upper() == "PASSIVE"
    if malloc:
        from so3krates_openmm.memory import reuse_freed_memory

        applied["malloc"] = reuse_freed_memory()
    if openblas:
        applied["openblas"] = preload_openblas(log or (lambda message: None))
    return applied


def openblas_library() -> str | None:
    """Path of Debian's pthread OpenBLAS (package ``libopenblas0-pthread``) if installed, else None."""
    for pattern in OPENBLAS_PATTERNS:
        matches = sorted(glob.glob(pattern))
        if matches:
            return matches[0]
    return None


def preloaded_openblas() -> str | None:
    """The OpenBLAS library this process was re-executed with (:func:`preload_openblas`), or None."""
    library = os.environ.get(OPENBLAS_MARKER)
    return library if library and library in os.environ.get("LD_PRELOAD", "") else None


def preload_openblas(log: Callable[[str], None]) -> bool:
    """Re-run this process with Debian's OpenBLAS in ``LD_PRELOAD``; True if it is preloaded already.

    Returns False, changing nothing, when the library is not installed or when
    ``SO3KRATES_NO_OPENBLAS=1`` is set. Otherwise the process is replaced
    (``os.execve`` with the same command line) and the call does not return.
    """
    if os.environ.get("SO3KRATES_NO_OPENBLAS") == "1":
        return False
    if preloaded_openblas():
        log(f"using OpenBLAS from {preloaded_openblas()} (LD_PRELOAD) for GFN2-xTB")
        return True
    library = openblas_library()
    if library is None:
        log("OpenBLAS (Debian libopenblas0-pthread) not found: xTB runs on the wheel's bundled BLAS "
            "(slower; `apt-get install libopenblas0-pthread` speeds it up)")
        return False
    preloaded = os.environ.get("LD_PRELOAD", "")
    if library in preloaded:
        return True
    environment = dict(os.environ)
    environment["LD_PRELOAD"] = f"{library}:{preloaded}" if preloaded else library
    environment[OPENBLAS_MARKER] = library
    # One BLAS thread unless the caller chose: preloaded, OpenBLAS also serves PyTorch's BLAS calls (MD, training),
    # and its extra threads spin in sched_yield between calls (a core lost per process while a step calls BLAS
    # every few ms) and stall on a busy machine (a GFN2-xTB single point of the catcher: 37.5 s instead of 1.31 s
    # with 2 threads beside two jobs; bench/openblas_threads.py). Labelling runs in parallel processes instead.
    environment.setdefault(OPENBLAS_THREADS, "1")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + list(sys.orig_argv[1:]), environment)
    return True  # pragma: no cover - execve does not return
