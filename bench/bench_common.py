"""Shared set-up of the benchmark scripts in ``bench/`` (run as ``python bench/SCRIPT.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

#: Starting structures of the showcase systems, ``PRETRAINED / name / "structure.pdb"``.
PRETRAINED = Path(__file__).resolve().parents[1] / "so3krates_openmm" / "pretrained"


class RandomModelCase(NamedTuple):
    """A paper-size model with random weights (seed 0, float32) for one shipped structure."""

    structure: Any
    model: Any
    atomic_numbers: Any
    positions_angstrom: Any
    pairs: int


def random_paper_model(name: str) -> RandomModelCase:
    """The paper-size SO3krates (random weights; speed does not depend on them) for the shipped
    starting structure ``name``, its inputs as tensors, and its number of unordered pairs within
    the cutoff. Imports ``so3krates_openmm`` only when called, so that a script may choose
    which checkout to import first."""
    import torch

    from so3krates_openmm import SO3krates, SO3kratesConfig
    from so3krates_openmm.data.structures import read_structure
    from so3krates_openmm.model.neighbours import neighbour_list

    structure = read_structure(PRETRAINED / name / "structure.pdb")
    torch.manual_seed(0)
    config = SO3kratesConfig(elements=sorted(set(structure.atomic_numbers.tolist())), dtype="float32")
    model = SO3krates(config).eval()
    numbers = torch.tensor(structure.atomic_numbers)
    positions = torch.tensor(structure.positions_angstrom, dtype=torch.float32)
    batch = torch.zeros(len(numbers), dtype=torch.long)
    pairs = neighbour_list(positions, batch, 1, model.cutoff)[0].numel()
    return RandomModelCase(structure, model, numbers, positions, pairs)
