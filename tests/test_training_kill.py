"""``so3krates-train`` killed with SIGKILL mid-run resumes with --resume and continues the same curve."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ase.build import molecule

from so3krates_openmm.cli.train import main as train_main
from so3krates_openmm.data.formats import save_npz
from so3krates_openmm.model.checkpoint import read_checkpoint
from so3krates_openmm.training.reporting import METRIC_COLUMNS, read_metrics_csv
from so3krates_openmm.training.synthetic import teacher_dataset

REPOSITORY = Path(__file__).resolve().parents[1]
EPOCHS = 8
OPTIONS = ["--train-size", "20", "--valid-size", "8", "--test-size", "4", "--batch-size", "4",
           "--max-epochs", str(EPOCHS), "--features", "16", "--layers", "1", "--heads", "2", "--degrees", "1", "2",
           "--radial-basis-size", "8", "--cutoff", "4.0", "--lr", "0.005", "--threads", "1", "--no-progress"]


def completed_epochs(output: Path) -> int:
    metrics = output / "metrics.csv"
    return len(read_metrics_csv(metrics)) if metrics.exists() else 0


def test_killed_run_resumes_the_same_curve(tmp_path: Path, capsys):
    ethanol = molecule("CH3CH2OH")
    data = save_npz(teacher_dataset(ethanol.numbers, ethanol.positions, 32, force_rms=20.0), tmp_path / "ethanol.npz")

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "so3krates_openmm.cli.train",
               "--data", str(data), "--output", str(killed), *OPTIONS]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPOSITORY))
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while completed_epochs(killed) < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process.poll() is None, (
            "the run ended before it could be killed: " + process.stderr.read().decode()[-2000:]
        )
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    stopped_at = read_checkpoint(killed / "last_checkpoint.pt")["extra"]["training_state"]["epoch"]
    assert 2 <= stopped_at < EPOCHS

    assert train_main(["--data", str(data), "--output", str(killed), "--resume", *OPTIONS]) == 0
    assert f"resuming {killed} after epoch {stopped_at}" in capsys.readouterr().out
    straight = tmp_path / "straight"
    assert train_main(["--data", str(data), "--output", str(straight), *OPTIONS]) == 0

    rows_killed, rows_straight = read_metrics_csv(killed / "metrics.csv"), read_metrics_csv(straight / "metrics.csv")
    assert [row["epoch"] for row in rows_killed] == list(range(1, EPOCHS + 1))
    for a, b in zip(rows_straight, rows_killed, strict=True):
        for column in METRIC_COLUMNS:
            if column != "time":
                assert b[column] == pytest.approx(a[column], rel=1e-12, abs=1e-15), (a["epoch"], column)
    assert rows_killed[-1]["time"] > rows_killed[stopped_at - 1]["time"]  # training time keeps counting
    one = read_checkpoint(straight / "best_checkpoint.pt")["state_dict"]
    two = read_checkpoint(killed / "best_checkpoint.pt")["state_dict"]
    assert all(torch.equal(one[key], two[key]) for key in one)
