"""Independent tasks on Dask workers, journaled so that a task done is never redone.

Minimisations of MD snapshots and GFN2-xTB single points are independent of
each other: :func:`run_tasks` hands them to a Dask ``distributed`` cluster (a
``LocalCluster`` of worker processes on this machine by default, or the
workers of an existing cluster given by its scheduler address) and appends
every result to a journal as it arrives. The same call after a kill (even
``kill -9``) reads the journal, skips what is done and runs only the rest;
a journal line cut off by the kill is ignored and its task run again.

The journal is a JSON-lines file: a header line with the job's settings (a
resumed job must have the same, or it is refused with the differences named),
then one ``{"key": ..., "result": ...}`` line per finished task. Results must be
JSON-serialisable (lists, not arrays).

Workers keep expensive objects (an OpenMM ``Context``, a calculator) between
tasks with :func:`worker_cache`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

#: Objects a worker process keeps between tasks (see :func:`worker_cache`).
_WORKER_CACHE: dict[str, Any] = {}


class JournalMismatch(ValueError):
    """The journal belongs to a job with other settings."""


def worker_cache(key: str, build: Callable[[], Any]) -> Any:
    """The object ``build()`` made for ``key`` in this worker process, built on first use."""
    if key not in _WORKER_CACHE:
        _WORKER_CACHE[key] = build()
    return _WORKER_CACHE[key]


def read_journal(path: str | Path, header: Mapping[str, Any]) -> dict[str, Any]:
    """Results of the finished tasks in a journal, by key (empty if there is no journal).

    Raises:
        JournalMismatch: the journal's header differs from ``header`` (names the settings).
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return {}
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    try:
        saved = json.loads(lines[0])["header"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise JournalMismatch(
            f"{path} is not a task journal ({error}); move it away or choose another output"
        ) from error
    expected = json.loads(json.dumps(dict(header), default=str))
    differences = sorted(k for k in set(saved) | set(expected) if saved.get(k) != expected.get(k))
    if differences:
        details = "; ".join(f"{k}: {saved.get(k)!r} -> {expected.get(k)!r}" for k in differences)
        raise JournalMismatch(f"{path} belongs to a job with other settings ({details}); use another output")
    results: dict[str, Any] = {}
    for line in lines[1:]:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line a kill cut off (always the last): that task runs again
        results[str(entry["key"])] = entry["result"]
    return results


def _append(handle, entry: Mapping[str, Any]) -> None:
    handle.write(json.dumps(entry, default=str) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def _open_journal(path: Path, header: Mapping[str, Any]):
    """Open the journal for appending; a fresh one gets its header; a torn last line is cut off."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size > 0:
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            with open(path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
        return open(path, "a", encoding="utf-8")
    handle = open(path, "w", encoding="utf-8")
    _append(handle, {"header": dict(header)})
    return handle


def run_tasks(
    function: Callable[[Any], Any],
    tasks: Mapping[str, Any],
    journal: str | Path,
    *,
    header: Mapping[str, Any],
    scheduler: str | None = None,
    workers: int = 2,
    progress: bool = True,
    description: str = "tasks",
) -> dict[str, Any]:
    """Run ``function(argument)`` for every ``key: argument`` of ``tasks`` not yet in ``journal``.

    Args:
        function: a picklable (module-level) function returning a JSON-serialisable result.
        tasks: the job's tasks by key (str).
        journal: the JSON-lines journal (created; resumed if it exists).
        header: the job's settings; a journal of other settings is refused.
        scheduler: address of a Dask scheduler (e.g. ``tcp://10.0.0.5:8786``) whose workers run the
            tasks; ``None`` starts a ``LocalCluster`` of ``workers`` single-threaded processes here.
        workers: processes of the local cluster.
        progress: show a progress bar (tqdm) with rate and ETA.
        description: the progress bar's label.

    Returns:
        The results of all tasks (done before and now), by key.
    """
    journal = Path(journal)
    results = read_journal(journal, header)
    pending = {key: argument for key, argument in tasks.items() if key not in results}
    if not pending:
        return {key: results[key] for key in tasks}
    from distributed import Client, LocalCluster, as_completed
    from tqdm import tqdm

    cluster = None
    if scheduler is None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(scheduler if scheduler is not None else cluster)
    handle = _open_journal(journal, header)
    bar = tqdm(total=len(tasks), initial=len(tasks) - len(pending), desc=description, disable=not progress,
               dynamic_ncols=True, smoothing=0.1)
    try:
        futures = {client.submit(function, argument, key=f"{description}-{key}-{os.getpid()}", pure=False): key
                   for key, argument in pending.items()}
        for future in as_completed(futures):
            key = futures[future]
            result = future.result()
            _append(handle, {"key": key, "result": result})
            results[key] = result
            bar.update(1)
    finally:
        bar.close()
        handle.close()
        client.close()
        if cluster is not None:
            cluster.close()
    return {key: results[key] for key in tasks}
