"""Shared fixtures: small float64 models and small molecules (fast on 2 CPU cores)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from so3krates_openmm import SO3krates, SO3kratesConfig
from so3krates_openmm.data.structures import Structure

torch.set_num_threads(1)

REPOSITORY = Path(__file__).resolve().parents[1]
SHARED = REPOSITORY.parent / "shared"

#: Ethanol + a water molecule (Å): H, C, O, several neighbours within and beyond 3 Å.
ETHANOL_WATER_NUMBERS = [6, 6, 8, 1, 1, 1, 1, 1, 1, 8, 1, 1]
ETHANOL_WATER_POSITIONS = np.array(
    [
        [0.000, 0.000, 0.000],
        [1.515, 0.000, 0.000],
        [2.000, 1.330, 0.000],
        [-0.390, 1.020, 0.000],
        [-0.390, -0.510, 0.890],
        [-0.390, -0.510, -0.890],
        [1.880, -0.520, 0.890],
        [1.880, -0.520, -0.890],
        [2.960, 1.320, 0.000],
        [3.300, 3.400, 0.500],
        [3.900, 4.100, 0.200],
        [2.500, 3.900, 0.800],
    ]
)


def small_config(**overrides) -> SO3kratesConfig:
    """A small model of the paper's architecture: F=24, T=2, degrees (1, 2, 3), float64."""
    values = dict(features=24, layers=2, heads=4, radial_basis_size=8, cutoff=3.0, dtype="float64", energy_unit="kcal/mol")
    values.update(overrides)
    return SO3kratesConfig(**values)


def randomise(model: SO3krates, seed: int = 0, scale: float = 0.3) -> SO3krates:
    """Give every weight a random value (default init leaves some paths weak) and nonzero shifts."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * scale)
        model.energy_shifts.copy_(torch.linspace(-100.0, -10.0, len(model.energy_shifts), dtype=torch.float64))
    return model


@pytest.fixture
def small_model() -> SO3krates:
    torch.manual_seed(0)
    return randomise(SO3krates(small_config())).eval()


@pytest.fixture
def molecule() -> Structure:
    return Structure(ETHANOL_WATER_NUMBERS, ETHANOL_WATER_POSITIONS.copy(), source="ethanol+water")


@pytest.fixture
def checkpoint(tmp_path: Path, small_model: SO3krates) -> Path:
    return small_model.save(tmp_path / "small_checkpoint.pt")


def random_rotation(seed: int) -> torch.Tensor:
    """A random proper rotation matrix (float64)."""
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q
