"""Shared fixtures: small float64 models and small molecules (fast on 2 CPU cores), and the
session-wide MD fixtures (a peptide PDB, an amber14 System, exported random models, a
catcher-like structure) built once per test session by ``md_support``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from md_support import (
    REPOSITORY,
    export_random_model,
    write_amber_system,
    write_catcher_like_xyz,
    write_peptide_pdb,
)

from so3krates_openmm import SO3krates, SO3kratesConfig
from so3krates_openmm.data.structures import Structure, read_structure
from so3krates_openmm.model.checkpoint import save_checkpoint

torch.set_num_threads(1)

SHARED = REPOSITORY.parent / "shared"


def shared_file(relative: str) -> Path:
    """A file of ``../shared`` (next to the checkout, not in the repository).

    Missing: the test is skipped on a developer's machine, but fails in CI
    (environment ``CI=true``), where ``../shared`` must be provided.
    """
    path = SHARED / relative
    if not path.is_file():
        message = f"{path} is missing: the test needs ../shared/{relative} next to the checkout"
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            pytest.fail(f"{message}; CI must provide ../shared", pytrace=False)
        pytest.skip(message)
    return path

#: A fresh Python process: ``{setup}`` (which sets ``applied``), then the minor page faults per
#: "step" that allocates, writes and frees pair-sized arrays as one model evaluation does.
ALLOCATION_CHILD = """
import json, os, resource
import numpy as np
{setup}
def step():
    blocks = [np.ones((5000, 132 * (1 + k % 3)), dtype=np.float32) for k in range(6)]
    del blocks
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({{"applied": applied, "faults_per_step": faults / 50,
                  "environment": {{k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}}}}))
"""


def page_faults_in_child(setup: str, **environment: str) -> dict:
    """``{"applied": ..., "faults_per_step": ..., "environment": {glibc's MALLOC_* variables at the end}}`` of
    :data:`ALLOCATION_CHILD` run with ``setup``
    (glibc's ``MALLOC_*`` and ``SO3KRATES_MALLOPT`` removed from the environment, then ``environment`` added)."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("MALLOC_") and key != "SO3KRATES_MALLOPT"}
    env.update(environment)
    child = ALLOCATION_CHILD.format(setup=setup)
    output = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


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
    values = dict(
        features=24, layers=2, heads=4, radial_basis_size=8, cutoff=3.0, dtype="float64", energy_unit="kcal/mol"
    )
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
    return save_checkpoint(small_model, tmp_path / "small_checkpoint.pt")


def random_rotation(seed: int) -> torch.Tensor:
    """A random proper rotation matrix (float64)."""
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


@pytest.fixture(scope="session")
def peptide_pdb(tmp_path_factory) -> Path:
    return write_peptide_pdb(tmp_path_factory.mktemp("peptide") / "ac_ala3_nhme.pdb")


@pytest.fixture(scope="session")
def peptide_amber_xml(peptide_pdb: Path) -> Path:
    return write_amber_system(peptide_pdb, peptide_pdb.with_name("amber14_system.xml"))


@pytest.fixture(scope="session")
def peptide_random_model(peptide_pdb: Path) -> Path:
    """Random weights in eV: strong, unphysical forces (the molecule falls apart in tens of steps)."""
    return export_random_model(read_structure(peptide_pdb), peptide_pdb.parent / "random_eV")


@pytest.fixture(scope="session")
def peptide_gentle_model(peptide_pdb: Path) -> Path:
    """Random weights in meV: weak forces, finite dynamics for hundreds of steps."""
    return export_random_model(read_structure(peptide_pdb), peptide_pdb.parent / "random_meV", energy_unit="meV")


@pytest.fixture(scope="session")
def catcher_xyz(tmp_path_factory) -> Path:
    return write_catcher_like_xyz(tmp_path_factory.mktemp("catcher") / "catcher_like.xyz")


@pytest.fixture(scope="session")
def catcher_gentle_model(catcher_xyz: Path) -> Path:
    return export_random_model(read_structure(catcher_xyz), catcher_xyz.parent / "random_meV", energy_unit="meV")
