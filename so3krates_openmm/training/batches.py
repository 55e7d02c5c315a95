"""Pre-collated training data and batches (no per-structure Python work in the loop).

A :class:`PackedData` holds the frames of one split as flat tensors on the
training device (atoms of all frames concatenated, ``offsets`` marking the
frames), so that a batch of any frame indices is a handful of tensor
gathers: :meth:`PackedData.batch`.

Batch order per epoch is a permutation drawn from ``(seed, epoch)`` alone
(:func:`epoch_batches`), so a resumed run shuffles exactly like an
uninterrupted one without saving generator states, and every process of a
distributed run draws the same global batches. :func:`shard` gives each
process its part of a global batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from so3krates_openmm.data.dataset import MolecularDataset


class Batch(NamedTuple):
    """Structures of one batch, concatenated.

    Attributes:
        atomic_numbers: (N,) int64.
        positions: (N, 3) Å, model dtype.
        forces: (N, 3) reference forces, energy unit per Å, model dtype.
        energies: (B,) reference energies, float64.
        batch: (N,) int64 structure index of each atom (contiguous).
        num_structures: B.
    """

    atomic_numbers: Tensor
    positions: Tensor
    forces: Tensor
    energies: Tensor
    batch: Tensor
    num_structures: int


class PackedData:
    """Frames of a data set (or of some of its frames) as flat tensors on one device.

    Args:
        dataset: the data set.
        indices: frames of ``dataset`` to keep (default: all), in this order.
        dtype: floating dtype of positions and forces (the model's); energies stay float64.
        device: where the tensors live.
    """

    def __init__(
        self,
        dataset: MolecularDataset,
        indices: Sequence[int] | np.ndarray | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        frames = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        n_atoms = dataset.n_atoms[frames]
        atom_index = _atom_indices(dataset.offsets[frames], n_atoms)
        self.frame_indices = torch.as_tensor(frames, dtype=torch.long)
        """(M,) indices of these frames in the data set they came from."""
        self.n_atoms = torch.as_tensor(n_atoms, dtype=torch.long, device=device)
        self.offsets = torch.as_tensor(np.concatenate([[0], np.cumsum(n_atoms)]), dtype=torch.long, device=device)
        self.atomic_numbers = torch.as_tensor(dataset.atomic_numbers_flat[atom_index], dtype=torch.long, device=device)
        self.positions = torch.as_tensor(dataset.positions_flat[atom_index], device=device).to(dtype)
        self.forces = torch.as_tensor(dataset.forces_flat[atom_index], device=device).to(dtype)
        self.energies = torch.as_tensor(dataset.energies[frames], dtype=torch.float64, device=device)
        self.energy_unit = dataset.energy_unit

    def __len__(self) -> int:
        return int(self.energies.shape[0])

    @property
    def total_atoms(self) -> int:
        return int(self.atomic_numbers.shape[0])

    def batch(self, indices: Tensor, total_atoms: int | None = None) -> Batch:
        """The batch of frames ``indices`` (int64 tensor of positions in this packed set).

        ``total_atoms`` (the batch's number of atoms, if known on the host) saves a device
        synchronisation on GPUs.
        """
        indices = indices.to(self.n_atoms.device)
        counts = self.n_atoms[indices]
        starts = self.offsets[indices]
        ends = torch.cumsum(counts, 0)
        if total_atoms is not None:
            total = int(total_atoms)
        else:
            total = int(ends[-1]) if counts.numel() else 0
        atom_index = torch.arange(total, device=counts.device) + torch.repeat_interleave(
            starts - (ends - counts), counts, output_size=total
        )
        structure = torch.repeat_interleave(
            torch.arange(indices.shape[0], device=counts.device), counts, output_size=total
        )
        return Batch(
            self.atomic_numbers[atom_index],
            self.positions[atom_index],
            self.forces[atom_index],
            self.energies[indices],
            structure,
            int(indices.shape[0]),
        )

    def element_counts(self, elements: Sequence[int]) -> np.ndarray:
        """(M, n_elements) float64 number of atoms of each element in each frame."""
        species = torch.full((int(max(elements)) + 1,), -1, dtype=torch.long)
        species[torch.as_tensor(list(elements))] = torch.arange(len(elements))
        atomic_numbers = self.atomic_numbers.cpu()
        frame_of_atom = torch.repeat_interleave(torch.arange(len(self)), self.n_atoms.cpu())
        counts = torch.zeros(len(self), len(elements), dtype=torch.float64)
        counts.index_put_((frame_of_atom, species[atomic_numbers]),
                          torch.ones(len(atomic_numbers), dtype=torch.float64), accumulate=True)
        return counts.numpy()


def _atom_indices(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Flat atom indices of frames starting at ``starts`` with ``counts`` atoms."""
    if len(counts) == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    return np.arange(ends[-1]) + np.repeat(starts - (ends - counts), counts)


def epoch_generator_seed(seed: int, epoch: int) -> int:
    """Seed of the shuffling generator of one epoch (a function of seed and epoch only)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 12_345) % (2**63 - 1)


def epoch_batches(n_frames: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True) -> list[Tensor]:
    """Global batches (int64 index tensors) of one epoch; the last one may be smaller."""
    if shuffle:
        generator = torch.Generator().manual_seed(epoch_generator_seed(seed, epoch))
        order = torch.randperm(n_frames, generator=generator)
    else:
        order = torch.arange(n_frames)
    return list(torch.split(order, batch_size))


def shard(indices: Tensor, rank: int, world_size: int) -> tuple[Tensor, float]:
    """This process's part of a global batch and the weight of its loss terms.

    Frames are dealt round-robin (``indices[rank::world_size]``). A process
    left without a frame (a batch smaller than the number of processes) gets
    the batch's first frame with weight 0, so that it still takes part in the
    gradient reduction and adds nothing to it.
    """
    part = indices[rank::world_size]
    if part.numel() == 0:
        return indices[:1], 0.0
    return part, 1.0
