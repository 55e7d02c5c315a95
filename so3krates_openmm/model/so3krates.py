"""The assembled SO3krates model: embedding, T layers, readout, energy shifts."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional

from so3krates_openmm.elements import MAX_ATOMIC_NUMBER, symbol
from so3krates_openmm.model.basis import CutoffFunction, PhysNetRadialBasis, SphericalHarmonics
from so3krates_openmm.model.config import SO3kratesConfig
from so3krates_openmm.model.layers import AtomicEnergyReadout, SO3kratesLayer
from so3krates_openmm.model.neighbours import check_box, neighbour_list, ordered_pairs

#: Closest allowed distance between two atoms (Å); closer means overlapping atoms.
MIN_PAIR_DISTANCE = 0.1


class SO3krates(nn.Module):
    """SO3krates Euclidean transformer (Frank et al., Nat. Commun. 15, 6539, 2024).

    The model maps atomic numbers and positions in Å to total energies in
    ``config.energy_unit``. Use :meth:`energy_and_forces` from Python;
    :meth:`forward` is the TorchScript-compatible core that the export wraps.
    """

    def __init__(self, config: SO3kratesConfig) -> None:
        super().__init__()
        self.config = config
        degrees: List[int] = list(config.degrees)
        self.cutoff = float(config.cutoff)
        self.n_layers = int(config.layers)
        self.features = int(config.features)
        self.m_tot = int(config.m_tot)
        species_index = torch.full((MAX_ATOMIC_NUMBER + 1,), -1, dtype=torch.long)
        species_index[list(config.elements)] = torch.arange(len(config.elements))
        self.register_buffer("species_index", species_index)
        self.register_buffer("energy_shifts", torch.zeros(len(config.elements), dtype=torch.float64))
        self.register_buffer("energy_scales", torch.ones(len(config.elements), dtype=torch.float64))
        self.embedding = nn.Embedding(len(config.elements), config.features)
        self.radial_basis = PhysNetRadialBasis(config.radial_basis_size, config.cutoff)
        self.cutoff_function = CutoffFunction(config.cutoff, config.cutoff_function)
        self.spherical_harmonics = SphericalHarmonics(degrees)
        parity = [(-1.0) ** l for l in degrees for _ in range(2 * l + 1)]
        self.register_buffer("parity", torch.tensor(parity), persistent=False)
        self.layers = nn.ModuleList(
            SO3kratesLayer(config.features, config.heads, degrees, config.radial_basis_size)
            for _ in range(config.layers)
        )
        self.readout = AtomicEnergyReadout(config.features)
        self.to(getattr(torch, config.dtype))
        # Buffers in float64 whatever the model dtype (the shift is a large constant).
        self.energy_shifts = self.energy_shifts.double()
        self.energy_scales = self.energy_scales.double()
        self.radial_basis.centres = self.radial_basis.centres.double()

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.weight.dtype

    def forward(
        self,
        atomic_numbers: Tensor,
        positions: Tensor,
        batch: Optional[Tensor] = None,
        num_structures: int = 1,
        boxes: Optional[Tensor] = None,
        prune_pairs: bool = True,
    ) -> Tensor:
        """Total energies (B,) in ``config.energy_unit``, float64.

        Args:
            atomic_numbers: (N,) int64, only elements in ``config.elements``.
            positions: (N, 3) in Å (any float dtype; cast to the model dtype).
            batch: (N,) structure index per atom, contiguous; ``None`` for one structure.
            num_structures: number of structures B in the batch.
            boxes: optional (B, 3, 3) periodic boxes in Å, OpenMM reduced form.
            prune_pairs: drop pairs beyond the cutoff from the edge list (see
                :func:`~so3krates_openmm.model.neighbours.neighbour_list`).
        """
        positions = positions.to(self.embedding.weight.dtype)
        if batch is None:
            batch = torch.zeros(positions.shape[0], dtype=torch.long, device=positions.device)
        first, second, shifts = neighbour_list(positions, batch, num_structures, self.cutoff, boxes, prune_pairs)
        return self.energy_from_neighbours(atomic_numbers, positions, batch, num_structures, first, second, shifts)

    @torch.jit.export
    def energy_from_neighbours(
        self,
        atomic_numbers: Tensor,
        positions: Tensor,
        batch: Tensor,
        num_structures: int,
        first: Tensor,
        second: Tensor,
        shifts: Tensor,
    ) -> Tensor:
        """Total energies (B,) float64 for a neighbour list of unordered pairs (i = first, j = second,
        ``r_ij = R_j - R_i + shift``, Å; see :mod:`~so3krates_openmm.model.neighbours`).

        The core of :meth:`forward`; exported modules with a fixed pair list call it directly.
        """
        atomic_energies = self.atomic_energies(atomic_numbers, positions, first, second, shifts)
        energies = torch.zeros(num_structures, dtype=torch.float64, device=positions.device)
        return energies.index_add_(0, batch, atomic_energies)

    @torch.jit.export
    def atomic_energies(
        self, atomic_numbers: Tensor, positions: Tensor, first: Tensor, second: Tensor, shifts: Tensor
    ) -> Tensor:
        """Per-atom energies ``E_i`` (N,) float64 (including the per-element shift and scale).

        Pairs as for :meth:`energy_from_neighbours` (each unordered pair once).
        Everything symmetric in i and j (distances, basis functions, filters)
        is computed once per unordered pair; the harmonics of the reversed pair
        follow from parity, ``Y^l(-u) = (-1)^l Y^l(u)``.
        """
        species = self.species_index[atomic_numbers]
        vectors = positions.index_select(0, second) - positions.index_select(0, first) + shifts.to(positions.dtype)
        distances = torch.linalg.vector_norm(vectors, dim=1)
        unit_vectors = vectors / distances.unsqueeze(-1)
        cutoff_weights = self.cutoff_function(distances)
        radial = self.radial_hidden(self.radial_basis(distances))
        centres, neighbours = ordered_pairs(first, second)
        cutoff_weights = torch.cat([cutoff_weights, cutoff_weights])
        if self.m_tot > 0:
            harmonics = self.spherical_harmonics(unit_vectors)
            harmonics = torch.cat([harmonics, harmonics * self.parity])
        else:  # the invariant model: no Euclidean variables
            harmonics = unit_vectors.new_zeros(centres.shape[0], 0)
        per_layer = len(radial) // self.n_layers

        features = self.embedding(species)
        euclidean = torch.zeros(positions.shape[0], self.m_tot, dtype=positions.dtype, device=positions.device)
        for index, layer in enumerate(self.layers):
            features, euclidean = layer(
                features,
                euclidean,
                radial[per_layer * index],
                radial[per_layer * index + per_layer - 1],
                cutoff_weights,
                harmonics,
                centres,
                neighbours,
            )
        return self.readout(features).double() * self.energy_scales[species] + self.energy_shifts[species]

    def radial_hidden(self, radial_basis: Tensor) -> List[Tensor]:
        """First radial layer and SiLU of every filter network, ``silu(W_rad_in e + b_rad_in)``,
        as one matrix product and one activation.

        Returns 2T tensors (P, F): for each layer the feature filter's and the
        Euclidean filter's hidden radial features (T for the invariant model: feature filters only).
        """
        weights: List[Tensor] = []
        biases: List[Tensor] = []
        for layer in self.layers:
            weights.append(layer.feature_filter.radial_in.weight)
            biases.append(layer.feature_filter.radial_in.bias)
            if hasattr(layer, "euclidean_filter"):
                weights.append(layer.euclidean_filter.radial_in.weight)
                biases.append(layer.euclidean_filter.radial_in.bias)
        fused = functional.silu(functional.linear(radial_basis, torch.cat(weights, 0), torch.cat(biases, 0)))
        return list(torch.split(fused, self.features, dim=1))

    # ----- Python API (not part of the TorchScript module) -----

    @torch.jit.unused
    def energy_and_forces(
        self,
        atomic_numbers: Tensor,
        positions: Tensor,
        batch: Optional[Tensor] = None,
        num_structures: int = 1,
        boxes: Optional[Tensor] = None,
        create_graph: bool = False,
    ) -> Tuple[Tensor, Tensor]:
        """Energies (B,) and forces (N, 3), in ``config.energy_unit`` and per Å.

        Inputs as for :meth:`forward` (positions in Å). Inputs are validated
        first (known elements, finite positions, no overlapping atoms, box at
        least twice the cutoff). ``create_graph=True`` keeps the graph of the
        forces for training on them.
        """
        atomic_numbers = torch.as_tensor(atomic_numbers, dtype=torch.long, device=self.embedding.weight.device)
        positions = torch.as_tensor(positions, device=self.embedding.weight.device).to(self.dtype)
        if boxes is not None:
            boxes = torch.as_tensor(boxes, device=positions.device).to(self.dtype).reshape(-1, 3, 3)
        self.validate_inputs(atomic_numbers, positions, batch, num_structures, boxes)
        positions = positions.detach().requires_grad_(True)
        energies = self(atomic_numbers, positions, batch, num_structures, boxes)
        (gradient,) = torch.autograd.grad(energies.sum(), positions, create_graph=create_graph, allow_unused=True)
        if gradient is None:  # no pair within the cutoff: the energy does not depend on positions
            gradient = torch.zeros_like(positions)
        if not create_graph:
            energies = energies.detach()
        return energies, -gradient

    @torch.jit.unused
    def validate_inputs(
        self,
        atomic_numbers: Tensor,
        positions: Tensor,
        batch: Optional[Tensor] = None,
        num_structures: int = 1,
        boxes: Optional[Tensor] = None,
    ) -> None:
        """Raise ``ValueError`` with a clear message for input the model cannot evaluate."""
        if positions.ndim != 2 or positions.shape[1] != 3 or positions.shape[0] != atomic_numbers.shape[0]:
            raise ValueError(
                f"positions must have shape (N, 3) with N = {atomic_numbers.shape[0]} atoms, "
                f"got {tuple(positions.shape)}"
            )
        self.check_elements(atomic_numbers)
        finite = torch.isfinite(positions).all(dim=1)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten()[:10].tolist()
            raise ValueError(f"positions of atoms {bad} are NaN or infinite")
        if boxes is not None:
            check_box(boxes, self.cutoff)
        if batch is None:
            batch = torch.zeros(positions.shape[0], dtype=torch.long, device=positions.device)
        centres, neighbours, shifts = neighbour_list(positions, batch, num_structures, MIN_PAIR_DISTANCE, boxes)
        if centres.numel() > 0:
            i, j = int(centres[0]), int(neighbours[0])
            raise ValueError(
                f"atoms {i} and {j} are on top of each other (closer than {MIN_PAIR_DISTANCE} Å): "
                "check the structure for duplicated atoms"
            )

    @torch.jit.unused
    def check_elements(self, atomic_numbers: Tensor) -> None:
        """Raise ``ValueError`` naming any atomic number the model does not know."""
        atomic_numbers = torch.as_tensor(atomic_numbers, dtype=torch.long).cpu()
        out_of_range = (atomic_numbers < 1) | (atomic_numbers > MAX_ATOMIC_NUMBER)
        if bool(out_of_range.any()):
            raise ValueError(f"atomic numbers {sorted(set(atomic_numbers[out_of_range].tolist()))} are not elements")
        unknown = sorted(set(atomic_numbers[self.species_index.cpu()[atomic_numbers] < 0].tolist()))
        if unknown:
            known = ", ".join(symbol(z) for z in self.config.elements)
            raise ValueError(
                f"the model does not know element(s) {', '.join(symbol(z) for z in unknown)}; "
                f"it was trained on {known}"
            )

    @torch.jit.unused
    def set_energy_shifts(self, shifts: Dict[int, float]) -> None:
        """Set per-element energy shifts (config.energy_unit per atom), float64."""
        for z, value in shifts.items():
            index = int(self.species_index[int(z)])
            if index < 0:
                raise ValueError(f"element {symbol(int(z))} is not in the model's elements")
            self.energy_shifts[index] = float(value)
