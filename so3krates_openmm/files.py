"""Writing files so that a process killed at any moment leaves the old file or the new one, never half of one;
and a lock that keeps a second process off files one process is writing.

Every file the package writes whole (checkpoints, exported models, data sets,
reports, MD run checkpoints) goes through :func:`write_atomically`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path


class LockedError(RuntimeError):
    """Another process holds the lock."""


@contextlib.contextmanager
def exclusive_lock(path: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on the file ``path`` (created, with its folder) for the block.

    The lock (``flock``) belongs to this process and ends with it, also when it is killed, so a stale lock
    file never blocks. Raises :class:`LockedError` at once if another process holds it.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"another process holds {path}") from None
        yield path


def write_atomically(path: str | Path, content: bytes | str | Callable[[Path], object]) -> Path:
    """Write ``content`` to ``path`` atomically: to a temporary file beside it, synced, then renamed over it.

    Args:
        path: the file to write; its folder is created when missing.
        content: the bytes or text (UTF-8) to write, or a function that writes the file it is given
            (a temporary path with ``path``'s suffix, e.g. ``lambda temporary: torch.save(obj, temporary)``);
            an exception it raises leaves ``path`` as it was.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        if callable(content):
            content(temporary)
        else:
            temporary.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        descriptor = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
