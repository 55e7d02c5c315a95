"""Keep freed memory in the process's heap so that each MD step does not fault in fresh pages.

One energy and force evaluation of SO3krates allocates and frees pair-sized
tensors (pairs x features, a few MB each at 148 atoms). glibc's ``malloc``
serves blocks above its mmap threshold (128 KiB, raised dynamically only
after such blocks are freed) with ``mmap`` and returns them with ``munmap``;
the next step then touches brand-new pages, each a kernel page fault that
zeroes 4 KiB, and freed memory at the top of the heap is handed back to the
kernel only to be faulted in again. Measured on this project's 2-core machine
(OpenMM CPU step of the shipped models, 1 thread, ``bench/malloc.py``): about
1 900 page faults and 3-4.5 ms of system time per step at 42 atoms, 5 000-9 000
and 9-21 ms at 148 atoms. Raising the mmap and trim thresholds with
``mallopt`` keeps freed blocks in the heap for reuse: the faults and the system
time go away, and a step takes 5-17 % less CPU time (``bench/RESULTS.md``,
"Freed memory").

:func:`reuse_freed_memory` is called by
:func:`so3krates_openmm.runtime.configure_process`, which every command-line
entry point runs unless given ``--no-process-tuning``; call either yourself in
a script of your own that runs a ``TorchForce`` System. It only acts on Linux with glibc, leaves a
process alone whose ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_``
is set or that preloads another allocator (jemalloc, tcmalloc), and is
switched off by ``SO3KRATES_MALLOPT=0``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

#: ``mallopt`` parameter numbers from glibc's ``malloc.h``.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks up to this size (bytes) come from the heap, and up to this much free memory
#: at the top of the heap is kept rather than returned to the kernel.
THRESHOLD_BYTES = 1 << 30

#: The same settings for a child process, as glibc's environment variables (read when the process starts).
MALLOC_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": str(THRESHOLD_BYTES), "MALLOC_TRIM_THRESHOLD_": str(THRESHOLD_BYTES)}

_applied: bool | None = None
logger = logging.getLogger(__name__)


def _reason_to_skip() -> str | None:
    if os.environ.get("SO3KRATES_MALLOPT", "1").strip().lower() in ("0", "false", "no", "off"):
        return "SO3KRATES_MALLOPT=0"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not Linux with glibc"
    for name in MALLOC_ENVIRONMENT:
        if name in os.environ:
            return f"{name} is set"
    preload = os.environ.get("LD_PRELOAD", "")
    if "jemalloc" in preload or "tcmalloc" in preload:
        return "another allocator is preloaded"
    return None


def _inherited() -> bool:
    """The environment holds exactly :data:`MALLOC_ENVIRONMENT` (a tuned parent's): glibc applied it at start-up."""
    return all(os.environ.get(name) == value for name, value in MALLOC_ENVIRONMENT.items())


def reuse_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process and the processes it starts (once); True if they
    are set.

    Returns False, and changes nothing, where it does not apply (see the module
    docstring). Memory freed by the model then stays in the heap for the next
    step: the process keeps its peak heap size instead of returning it. The same
    thresholds go into the environment (:data:`MALLOC_ENVIRONMENT`, which glibc
    reads when a process starts), so that worker processes (the Dask workers of
    the minimisations and labels, subprocesses) run with them too; in such a
    child this function finds them there and returns True.
    """
    global _applied
    if _applied is not None:
        return _applied
    if _inherited():
        _applied = True
        return True
    reason = _reason_to_skip()
    if reason is not None:
        logger.debug("malloc left as it is: %s", reason)
        _applied = False
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        _applied = False
        return False
    _applied = bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD_BYTES)
    )
    if _applied:
        os.environ.update(MALLOC_ENVIRONMENT)
    return _applied
