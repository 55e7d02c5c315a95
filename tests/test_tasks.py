"""Journaled tasks on a local Dask cluster of 2 workers: results, resume after a kill, refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from so3krates_openmm.tasks import JournalMismatch, read_journal, run_tasks, worker_cache


def square(argument: dict) -> dict:
    return {"value": argument["x"] ** 2, "pid": os.getpid(), "cached": worker_cache("marker", lambda: os.getpid())}


def fail_on_three(argument: dict) -> dict:
    if argument["x"] == 3:
        raise RuntimeError("task 3 fails")
    return square(argument)


TASKS = {str(x): {"x": x} for x in range(8)}
HEADER = {"job": "squares", "version": 1}


def test_tasks_run_on_two_workers_and_resume(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    # First attempt: task 3 fails; the others that finished are journaled.
    with pytest.raises(RuntimeError, match="task 3 fails"):
        run_tasks(fail_on_three, TASKS, journal, header=HEADER, workers=2, progress=False)
    done = read_journal(journal, HEADER)
    assert "3" not in done and all(done[k]["value"] == int(k) ** 2 for k in done)
    # A kill cut the last line in half: that task runs again, nothing else does.
    text = journal.read_text()
    journal.write_text(text + '{"key": "7", "resu')
    results = run_tasks(square, TASKS, journal, header=HEADER, workers=2, progress=False)
    assert {k: v["value"] for k, v in results.items()} == {k: int(k) ** 2 for k in TASKS}
    lines = [json.loads(line) for line in journal.read_text().splitlines()[1:]]
    assert sorted(entry["key"] for entry in lines) == sorted(TASKS)  # each task journaled exactly once
    for key, result in done.items():
        assert results[key] == result  # not redone
    new = [entry["result"] for entry in lines if entry["key"] not in done]
    assert len({r["pid"] for r in new}) <= 2 and all(r["cached"] == r["pid"] for r in new)
    # Everything done: no cluster is started, the results come from the journal.
    assert run_tasks(square, TASKS, journal, header=HEADER, workers=0, progress=False) == results


def test_journal_of_other_settings_is_refused(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    run_tasks(square, {"1": {"x": 1}}, journal, header=HEADER, workers=1, progress=False)
    with pytest.raises(JournalMismatch, match="version: 1 -> 2"):
        run_tasks(square, TASKS, journal, header={**HEADER, "version": 2}, workers=1, progress=False)


def test_tasks_run_on_the_workers_of_a_scheduler_address(tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        results = run_tasks(square, TASKS, tmp_path / "journal.jsonl", header=HEADER,
                            scheduler=cluster.scheduler_address, progress=False)
        with Client(cluster) as client:
            worker_pids = set(client.run(os.getpid).values())
    assert {k: v["value"] for k, v in results.items()} == {k: int(k) ** 2 for k in TASKS}
    assert {r["pid"] for r in results.values()} <= worker_pids and os.getpid() not in worker_pids
