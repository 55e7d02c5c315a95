"""Synthetic, exactly learnable reference data: a fixed random "teacher" SO3krates model.

Used by the training tests and the throughput benchmark, where no quantum
chemistry is wanted: frames are random Gaussian displacements of a start
geometry, labelled with the energies and forces of an SO3krates model with
random weights (seeded), plus known per-element energy shifts. A student of
the same architecture can learn the target exactly, so the force error must
fall far below the target's spread.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from so3krates_openmm.data.dataset import MolecularDataset
from so3krates_openmm.model import SO3krates, SO3kratesConfig


def teacher_model(
    elements: Sequence[int], seed: int = 1234, energy_unit: str = "kcal/mol", **options: object
) -> SO3krates:
    """A small SO3krates with random weights (float64, seeded).

    ``options`` override :class:`SO3kratesConfig` fields (default F=16, T=1, H=2, degrees (1, 2), K=8, 4 Å).
    """
    settings = {"features": 16, "layers": 1, "heads": 2, "degrees": (1, 2), "radial_basis_size": 8, "cutoff": 4.0}
    settings.update(options)
    torch.manual_seed(seed)
    model = SO3krates(
        SO3kratesConfig(elements=tuple(elements), dtype="float64", energy_unit=energy_unit, **settings)  # type: ignore[arg-type]
    )
    return model.eval()


def teacher_dataset(
    atomic_numbers: Sequence[int],
    positions: np.ndarray,
    n_frames: int,
    displacement: float = 0.1,
    force_rms: float = 10.0,
    seed: int = 0,
    shifts: dict[int, float] | None = None,
    teacher: SO3krates | None = None,
    energy_unit: str = "kcal/mol",
    chunk: int = 64,
) -> MolecularDataset:
    """Frames of Gaussian displacements (standard deviation ``displacement`` Å) of ``positions`` (Å),
    labelled by ``teacher`` (default :func:`teacher_model` for the elements present).

    The teacher's energies and forces are scaled so that the RMS force
    component is ``force_rms`` (``energy_unit`` per Å; MD22-like data have
    tens of kcal/mol/Å), then per-element ``shifts`` (``energy_unit`` per
    atom) are added to the energies.
    """
    numbers = np.asarray(atomic_numbers, dtype=np.int64)
    reference = np.asarray(positions, dtype=np.float64).reshape(len(numbers), 3)
    if teacher is None:
        teacher = teacher_model(sorted(set(numbers.tolist())), energy_unit=energy_unit)
    rng = np.random.default_rng(seed)
    frames = reference + displacement * rng.standard_normal((n_frames, len(numbers), 3))
    energies = np.zeros(n_frames)
    forces = np.zeros_like(frames)
    z = torch.as_tensor(numbers)
    for start in range(0, n_frames, chunk):
        block = frames[start : start + chunk]
        count = len(block)
        batch = torch.arange(count).repeat_interleave(len(numbers))
        energy, force = teacher.energy_and_forces(
            z.repeat(count), torch.as_tensor(block.reshape(-1, 3)), batch, count
        )
        energies[start : start + count] = energy.detach().numpy()
        forces[start : start + count] = force.detach().numpy().reshape(count, len(numbers), 3)
    factor = force_rms / float(np.sqrt(np.mean(forces**2)))
    energies *= factor
    forces *= factor
    if shifts:
        energies += sum(value * np.count_nonzero(numbers == z) for z, value in shifts.items())
    metadata = {"theory": "random SO3krates teacher (synthetic)", "source": "<teacher>",
                "settings": {"displacement_angstrom": displacement, "seed": seed, "force_rms": force_rms}}
    return MolecularDataset(numbers, frames, energies, forces, energy_unit, metadata)
