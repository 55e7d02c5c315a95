"""A committee of SO3krates models and its disagreement, the uncertainty measure of active learning.

K models that differ only in their random seed and training split agree
where the data support them and spread where they do not. The spread of
their predictions is the committee disagreement (query by committee, as in
DP-GEN and aims-PAX):

- energy: ``sigma_E = std_k E_k`` (population standard deviation over the K
  members), in the models' energy unit;
- forces: per atom ``sigma_F,i = sqrt(mean_k |F_k,i - mean_k F_k,i|^2)``, the
  root-mean-square deviation of the force vectors from the committee mean, in
  energy unit per Å; per frame its maximum and its mean over atoms.

The maximum over atoms is the usual selection criterion: one atom in a
configuration the data do not cover is enough to make a frame worth labelling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from so3krates_openmm.model.checkpoint import load_model
from so3krates_openmm.model.so3krates import SO3krates


@dataclass(frozen=True)
class Disagreement:
    """Committee disagreement of B frames (arrays of shape (B,)); energies in ``energy_unit``,
    forces in ``energy_unit`` per Å."""

    energy_std: np.ndarray
    force_std_max: np.ndarray
    force_std_mean: np.ndarray
    energy_unit: str

    @property
    def force_unit(self) -> str:
        return f"{self.energy_unit}/Angstrom"


class Committee:
    """K SO3krates models of the same elements, cutoff and energy unit, evaluated together.

    Args:
        members: the models (at least 2); all must know the same elements and
            use the same energy unit.
    """

    def __init__(self, members: Sequence[SO3krates]) -> None:
        members = list(members)
        if len(members) < 2:
            raise ValueError(f"a committee needs at least 2 models, got {len(members)}")
        first = members[0].config
        for index, member in enumerate(members[1:], start=1):
            config = member.config
            if tuple(config.elements) != tuple(first.elements):
                raise ValueError(
                    f"committee member {index} knows elements {list(config.elements)}, "
                    f"member 0 knows {list(first.elements)}: train all members on the same data"
                )
            if config.energy_unit != first.energy_unit:
                raise ValueError(
                    f"committee member {index} predicts {config.energy_unit}, member 0 {first.energy_unit}"
                )
        self.members = members
        for member in self.members:
            member.eval()

    @classmethod
    def from_checkpoints(cls, paths: Sequence[str | Path], device: str | torch.device = "cpu") -> Committee:
        """Load one member per checkpoint file."""
        return cls([load_model(path, map_location=device) for path in paths])

    def __len__(self) -> int:
        return len(self.members)

    @property
    def energy_unit(self) -> str:
        return str(self.members[0].config.energy_unit)

    @property
    def cutoff_angstrom(self) -> float:
        return max(float(member.config.cutoff) for member in self.members)

    def predict(
        self,
        atomic_numbers: Sequence[int] | np.ndarray | Tensor,
        positions_angstrom: np.ndarray | Tensor,
        boxes_angstrom: Optional[np.ndarray | Tensor] = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Energies (K, B) and forces (K, B, N, 3) of every member for B frames of one molecule.

        Args:
            atomic_numbers: (N,) atomic numbers.
            positions_angstrom: (B, N, 3) or (N, 3) positions in Å.
            boxes_angstrom: optional (B, 3, 3) or (3, 3) periodic boxes in Å (rows are box vectors).
        """
        positions = torch.as_tensor(np.asarray(positions_angstrom, dtype=np.float64))
        if positions.ndim == 2:
            positions = positions.unsqueeze(0)
        if positions.ndim != 3 or positions.shape[2] != 3:
            raise ValueError(f"positions must have shape (B, N, 3) or (N, 3), got {tuple(positions.shape)}")
        n_frames, n_atoms = positions.shape[0], positions.shape[1]
        numbers = torch.as_tensor(np.asarray(atomic_numbers, dtype=np.int64))
        if numbers.shape != (n_atoms,):
            raise ValueError(f"{n_atoms} atoms in the positions but {tuple(numbers.shape)} atomic numbers")
        boxes = None
        if boxes_angstrom is not None:
            boxes = torch.as_tensor(np.asarray(boxes_angstrom, dtype=np.float64)).reshape(-1, 3, 3)
            if boxes.shape[0] == 1 and n_frames > 1:
                boxes = boxes.expand(n_frames, 3, 3)
        batch = torch.arange(n_frames).repeat_interleave(n_atoms)
        energies, forces = [], []
        for member in self.members:
            device = member.embedding.weight.device
            energy, force = member.energy_and_forces(
                numbers.repeat(n_frames).to(device),
                positions.reshape(-1, 3).to(device),
                batch.to(device),
                n_frames,
                None if boxes is None else boxes.to(device),
            )
            energies.append(energy.detach().double().cpu().numpy())
            forces.append(force.detach().double().cpu().numpy().reshape(n_frames, n_atoms, 3))
        return np.stack(energies), np.stack(forces)

    def disagreement(
        self,
        atomic_numbers: Sequence[int] | np.ndarray | Tensor,
        positions_angstrom: np.ndarray | Tensor,
        boxes_angstrom: Optional[np.ndarray | Tensor] = None,
    ) -> Disagreement:
        """The committee's disagreement on B frames (inputs as for :meth:`predict`)."""
        energies, forces = self.predict(atomic_numbers, positions_angstrom, boxes_angstrom)
        return disagreement_of(energies, forces, self.energy_unit)


def disagreement_of(energies: np.ndarray, forces: np.ndarray, energy_unit: str) -> Disagreement:
    """Disagreement of predictions ``energies`` (K, B) and ``forces`` (K, B, N, 3) of K members."""
    energies = np.asarray(energies, dtype=np.float64)
    forces = np.asarray(forces, dtype=np.float64)
    if energies.ndim != 2 or forces.ndim != 4 or forces.shape[:2] != energies.shape or forces.shape[3] != 3:
        raise ValueError(
            f"expected energies (K, B) and forces (K, B, N, 3), got {energies.shape} and {forces.shape}"
        )
    deviation = forces - forces.mean(axis=0, keepdims=True)
    per_atom = np.sqrt((deviation**2).sum(axis=3).mean(axis=0))  # (B, N)
    return Disagreement(
        energy_std=energies.std(axis=0),
        force_std_max=per_atom.max(axis=1),
        force_std_mean=per_atom.mean(axis=1),
        energy_unit=energy_unit,
    )
