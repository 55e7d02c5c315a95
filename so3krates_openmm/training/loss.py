"""The training loss and the error metrics (energy and force MAE/RMSE, per element).

Loss (the paper's): ``w_E * mean_b (E_b - E_b^ref)^2 + w_F * mean_{i,a} (F_ia - F_ia^ref)^2``,
per-structure energies and per-atom force components, in the data's units.
"""

from __future__ import annotations

import torch
from torch import Tensor

from so3krates_openmm.elements import MAX_ATOMIC_NUMBER, symbol
from so3krates_openmm.units import energy_conversion


def weighted_mse_loss(
    energies: Tensor,
    reference_energies: Tensor,
    forces: Tensor,
    reference_forces: Tensor,
    energy_weight: float,
    force_weight: float,
    num_structures: float,
    num_atoms: float,
) -> Tensor:
    """``w_E * sum (dE)^2 / num_structures + w_F * sum (dF)^2 / (3 num_atoms)``.

    ``num_structures`` and ``num_atoms`` are those of the global batch: in
    a distributed run each process passes its own shard's predictions but the
    global counts, so that the shards' losses add up to the loss of the
    global batch.
    """
    energy_term = torch.sum((energies - reference_energies) ** 2) / num_structures
    force_term = torch.sum((forces - reference_forces) ** 2) / (3.0 * num_atoms)
    return energy_weight * energy_term + force_weight * force_term


class ErrorAccumulator:
    """Sums of absolute and squared errors over batches; reduced across processes before reading.

    All sums stay on the device in float64 until :meth:`compute`, so
    accumulating costs no host synchronisation.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        # [structures, sum|dE|, sum dE^2, force components, sum|dF|, sum dF^2]
        self.totals = torch.zeros(6, dtype=torch.float64, device=self.device)
        self.element_abs = torch.zeros(MAX_ATOMIC_NUMBER + 1, dtype=torch.float64, device=self.device)
        self.element_count = torch.zeros(MAX_ATOMIC_NUMBER + 1, dtype=torch.float64, device=self.device)

    @torch.no_grad()
    def update(
        self,
        energies: Tensor,
        reference_energies: Tensor,
        forces: Tensor,
        reference_forces: Tensor,
        atomic_numbers: Tensor,
        weight: float = 1.0,
    ) -> None:
        """Add one batch (``weight=0`` adds nothing: padding of an empty distributed shard)."""
        energy_error = (energies.detach() - reference_energies).double()
        force_error = (forces.detach() - reference_forces).double()
        per_atom_abs = force_error.abs().sum(dim=1)
        self.totals += weight * torch.stack(
            [
                torch.tensor(float(energy_error.shape[0]), dtype=torch.float64, device=self.device),
                energy_error.abs().sum(),
                (energy_error**2).sum(),
                torch.tensor(float(force_error.numel()), dtype=torch.float64, device=self.device),
                per_atom_abs.sum(),
                (force_error**2).sum(),
            ]
        )
        self.element_abs.index_add_(0, atomic_numbers, weight * per_atom_abs)
        self.element_count.index_add_(0, atomic_numbers, torch.full_like(per_atom_abs, 3.0 * weight))

    def all_reduce(self, context: object) -> None:
        """Sum the accumulators over the processes of a distributed run (no-op for one process)."""
        for tensor in (self.totals, self.element_abs, self.element_count):
            context.all_reduce_sum(tensor)  # type: ignore[attr-defined]

    def compute(self, energy_weight: float | None = None, force_weight: float | None = None) -> dict[str, float]:
        """Errors in the data's units: ``energy_mae``, ``energy_rmse``, ``force_mae``, ``force_rmse``
        (per component), ``loss`` when weights are given, and ``force_mae_per_element`` {symbol: value}."""
        structures, energy_abs, energy_sq, components, force_abs, force_sq = self.totals.tolist()
        structures = max(structures, 1.0)
        components = max(components, 1.0)
        result: dict[str, object] = {
            "structures": round(self.totals[0].item()),
            "energy_mae": energy_abs / structures,
            "energy_rmse": (energy_sq / structures) ** 0.5,
            "force_mae": force_abs / components,
            "force_rmse": (force_sq / components) ** 0.5,
        }
        if energy_weight is not None and force_weight is not None:
            result["loss"] = energy_weight * energy_sq / structures + force_weight * force_sq / components
        counts = self.element_count.tolist()
        sums = self.element_abs.tolist()
        result["force_mae_per_element"] = {
            symbol(z): sums[z] / counts[z] for z in range(1, len(counts)) if counts[z] > 0
        }
        return result  # type: ignore[return-value]


def in_mev(metrics: dict[str, object], energy_unit: str) -> dict[str, object]:
    """The error metrics converted to meV (energies) and meV/Å (forces)."""
    factor = energy_conversion(energy_unit, "meV")
    converted: dict[str, object] = {}
    for key in ("energy_mae", "energy_rmse", "force_mae", "force_rmse"):
        if key in metrics:
            converted[key] = float(metrics[key]) * factor  # type: ignore[arg-type]
    if "force_mae_per_element" in metrics:
        converted["force_mae_per_element"] = {
            element: value * factor for element, value in metrics["force_mae_per_element"].items()  # type: ignore[union-attr]
        }
    return converted
