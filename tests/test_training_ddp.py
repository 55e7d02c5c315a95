"""Multi-process training: 2 processes under torchrun (gloo, CPU) reach the weights of 1 process.

Both runs use the same global batch (the processes split each batch), float64,
and the same data file. Tolerance: relative 1e-9 on every weight after
3 epochs (the processes add the gradient in a different order, so the
results differ only by rounding).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import molecule

from so3krates_openmm.data.formats import save_npz
from so3krates_openmm.model.checkpoint import read_checkpoint
from so3krates_openmm.training import config_from_dict, train
from so3krates_openmm.training.batches import epoch_batches, shard
from so3krates_openmm.training.reporting import read_metrics_csv
from so3krates_openmm.training.synthetic import teacher_dataset

REPOSITORY = Path(__file__).resolve().parents[1]
OPTIONS = ["--train-size", "14", "--valid-size", "6", "--test-size", "4", "--batch-size", "4", "--max-epochs", "3",
           "--features", "16", "--layers", "1", "--heads", "2", "--degrees", "1", "2", "--radial-basis-size", "8",
           "--cutoff", "4.0", "--dtype", "float64", "--lr", "0.005", "--threads", "1", "--no-progress",
           "--ema-decay", "0.9"]


def test_shards_cover_every_global_batch_once():
    for world in (1, 2, 3):
        for batch in epoch_batches(14, 4, seed=3, epoch=2):
            parts = [shard(batch, rank, world) for rank in range(world)]
            taken = torch.cat([indices for indices, weight in parts if weight > 0])
            assert sorted(taken.tolist()) == sorted(batch.tolist())
            assert all(indices.numel() >= 1 for indices, _ in parts)  # every process computes something


def test_two_processes_reach_the_weights_of_one(tmp_path: Path):
    ethanol = molecule("CH3CH2OH")
    data = teacher_dataset(ethanol.numbers, ethanol.positions, 24, displacement=0.1, force_rms=20.0)
    data_file = save_npz(data, tmp_path / "ethanol.npz")

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPOSITORY))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "so3krates_openmm.cli.train", "--data", str(data_file), "--output", str(tmp_path / "ddp"),
               *OPTIONS]
    completed = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "over 2 process(es)" in completed.stdout

    config = config_from_dict({
        "data": str(data_file), "output": str(tmp_path / "single"),
        "train_size": 14, "valid_size": 6, "test_size": 4, "batch_size": 4, "max_epochs": 3,
        "features": 16, "layers": 1, "heads": 2, "degrees": [1, 2], "radial_basis_size": 8, "cutoff": 4.0,
        "dtype": "float64", "lr": 0.005, "threads": 1, "progress": False, "ema_decay": 0.9,
    })
    single = train(config, log=lambda message: None)
    assert single.steps == 3 * 4  # 14 frames in batches of 4 -> 4 steps an epoch (the last of 2 frames)

    for name in ("last_checkpoint.pt", "best_checkpoint.pt"):
        one = read_checkpoint(tmp_path / "single" / name)["state_dict"]
        two = read_checkpoint(tmp_path / "ddp" / name)["state_dict"]
        for key, value in one.items():
            if value.is_floating_point():
                np.testing.assert_allclose(two[key].numpy(), value.numpy(), rtol=1e-9, atol=1e-12,
                                           err_msg=f"{name}: {key}")
            else:
                assert torch.equal(two[key], value)
    rows_one = read_metrics_csv(tmp_path / "single" / "metrics.csv")
    rows_two = read_metrics_csv(tmp_path / "ddp" / "metrics.csv")
    for a, b in zip(rows_one, rows_two, strict=True):
        for column in ("step", "lr", "train_loss", "valid_loss", "valid_force_mae", "valid_energy_mae"):
            assert b[column] == pytest.approx(a[column], rel=1e-9), column
