"""Building blocks of an SO3krates layer (the equations of
``../shared/design/so3krates-architecture.md``, section "One layer").

Shapes: N atoms, E ordered pairs (centre i, neighbour j), F features,
n_D degrees, m_tot Euclidean-variable components. All blocks are
TorchScript-compatible.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional

from so3krates_openmm.model.basis import degree_contraction_matrix, degree_expansion_matrix


def scatter_sum(messages: Tensor, centres: Tensor, n_atoms: int) -> Tensor:
    """Sum per-pair messages (E, C) onto their centre atoms -> (N, C)."""
    out = torch.zeros(n_atoms, messages.shape[1], dtype=messages.dtype, device=messages.device)
    return out.index_add_(0, centres, messages)


class FilterNetwork(nn.Module):
    """``w_ij = MLP_rad(e(d_ij)) + MLP_sph(delta_ij)``.

    ``MLP_rad: K -> F -> F`` and ``MLP_sph: n_D -> F/4 -> F`` with SiLU between
    and biases. The first radial layer is applied by the caller for all
    filters of the model at once (one matrix product per step, see
    :meth:`SO3krates.forward`), so :meth:`forward` takes its pre-activation.
    """

    def __init__(self, radial_basis_size: int, n_degrees: int, features: int) -> None:
        super().__init__()
        self.radial_in = nn.Linear(radial_basis_size, features)
        self.radial_out = nn.Linear(features, features)
        self.spherical_in = nn.Linear(n_degrees, features // 4)
        self.spherical_out = nn.Linear(features // 4, features)

    def forward(self, radial_preactivation: Tensor, ev_invariants: Tensor) -> Tensor:
        radial = self.radial_out(functional.silu(radial_preactivation))
        spherical = self.spherical_out(functional.silu(self.spherical_in(ev_invariants)))
        return radial + spherical


class InvariantAttention(nn.Module):
    """Multi-head attention update of the invariant features, without softmax.

    ``alpha^h_ij = (F/H)^-1/2 sum_f (Q^h x_i)_f (w^h_ij)_f (K^h x_j)_f`` and
    ``dx_i = concat_h sum_j phi(d_ij) alpha^h_ij V^h x_j``.
    """

    def __init__(self, features: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_width = features // heads
        self.scale = float(self.head_width) ** -0.5
        self.query = nn.Linear(features, features, bias=False)
        self.key = nn.Linear(features, features, bias=False)
        self.value = nn.Linear(features, features, bias=False)

    def forward(self, features: Tensor, filters: Tensor, cutoff_weights: Tensor, centres: Tensor, neighbours: Tensor) -> Tensor:
        n_pairs = filters.shape[0]
        queries = self.query(features).index_select(0, centres)
        keys = self.key(features).index_select(0, neighbours)
        values = self.value(features).index_select(0, neighbours).view(n_pairs, self.heads, self.head_width)
        scores = (queries * filters * keys).view(n_pairs, self.heads, self.head_width).sum(-1)
        weights = scores * (self.scale * cutoff_weights).unsqueeze(-1)
        messages = (weights.unsqueeze(-1) * values).reshape(n_pairs, self.heads * self.head_width)
        return scatter_sum(messages, centres, features.shape[0])


class EuclideanAttention(nn.Module):
    """Attention update of the Euclidean variables, one head per degree, no value matrix.

    ``beta^l_ij = (F/n_D)^-1/2 sum_f (Q~^l x_i)_f (w~^l_ij)_f (K~^l x_j)_f`` and
    ``dchi^l_i = sum_j phi(d_ij) beta^l_ij Y^l(u_ij)``.
    """

    def __init__(self, features: int, degrees: List[int]) -> None:
        super().__init__()
        self.n_degrees = len(degrees)
        self.head_width = features // self.n_degrees
        self.scale = float(self.head_width) ** -0.5
        self.query = nn.Linear(features, features, bias=False)
        self.key = nn.Linear(features, features, bias=False)
        self.register_buffer("expansion", degree_expansion_matrix(degrees))

    def forward(
        self,
        features: Tensor,
        filters: Tensor,
        cutoff_weights: Tensor,
        harmonics: Tensor,
        centres: Tensor,
        neighbours: Tensor,
    ) -> Tensor:
        n_pairs = filters.shape[0]
        queries = self.query(features).index_select(0, centres)
        keys = self.key(features).index_select(0, neighbours)
        scores = (queries * filters * keys).view(n_pairs, self.n_degrees, self.head_width).sum(-1)
        weights = scores * (self.scale * cutoff_weights).unsqueeze(-1)
        messages = (weights @ self.expansion.to(weights.dtype)) * harmonics
        return scatter_sum(messages, centres, features.shape[0])


class ExchangeBlock(nn.Module):
    """Interaction between invariant features and Euclidean variables.

    ``[a_i ; b_i] = W [x_i ; c(chi_i)] + bias``; ``x_i += a_i``,
    ``chi^l_i += b^l_i chi^l_i``. One linear layer, no activation.
    """

    def __init__(self, features: int, degrees: List[int]) -> None:
        super().__init__()
        self.features = features
        self.linear = nn.Linear(features + len(degrees), features + len(degrees))
        self.register_buffer("contraction", degree_contraction_matrix(degrees))
        self.register_buffer("expansion", degree_expansion_matrix(degrees))

    def forward(self, features: Tensor, euclidean: Tensor) -> Tuple[Tensor, Tensor]:
        invariants = (euclidean * euclidean) @ self.contraction.to(euclidean.dtype)
        mixed = self.linear(torch.cat([features, invariants], dim=-1))
        feature_update = mixed[:, : self.features]
        degree_scales = mixed[:, self.features :] @ self.expansion.to(euclidean.dtype)
        return features + feature_update, euclidean + degree_scales * euclidean


class SO3kratesLayer(nn.Module):
    """One SO3krates layer: filters, the two attention blocks, residuals, exchange.

    Pair tensors are ordered pairs in the layout of
    :func:`~so3krates_openmm.model.neighbours.ordered_pairs` (unordered pairs,
    then the same pairs reversed); the radial pre-activations cover the first half.
    """

    def __init__(self, features: int, heads: int, degrees: List[int], radial_basis_size: int) -> None:
        super().__init__()
        self.feature_filter = FilterNetwork(radial_basis_size, len(degrees), features)
        self.euclidean_filter = FilterNetwork(radial_basis_size, len(degrees), features)
        self.feature_attention = InvariantAttention(features, heads)
        self.euclidean_attention = EuclideanAttention(features, degrees)
        self.exchange = ExchangeBlock(features, degrees)
        self.register_buffer("contraction", degree_contraction_matrix(degrees))

    def forward(
        self,
        features: Tensor,
        euclidean: Tensor,
        feature_radial: Tensor,
        euclidean_radial: Tensor,
        cutoff_weights: Tensor,
        harmonics: Tensor,
        centres: Tensor,
        neighbours: Tensor,
    ) -> Tuple[Tensor, Tensor]:
        # Filters are symmetric in i and j: computed for the first half of the pairs
        # (each unordered pair once) and repeated for the reversed second half.
        n_unordered = feature_radial.shape[0]
        difference = euclidean.index_select(0, neighbours[:n_unordered]) - euclidean.index_select(0, centres[:n_unordered])
        ev_invariants = (difference * difference) @ self.contraction.to(difference.dtype)
        feature_filters = self.feature_filter(feature_radial, ev_invariants).repeat(2, 1)
        euclidean_filters = self.euclidean_filter(euclidean_radial, ev_invariants).repeat(2, 1)
        feature_update = self.feature_attention(features, feature_filters, cutoff_weights, centres, neighbours)
        euclidean_update = self.euclidean_attention(
            features, euclidean_filters, cutoff_weights, harmonics, centres, neighbours
        )
        return self.exchange(features + feature_update, euclidean + euclidean_update)


class AtomicEnergyReadout(nn.Module):
    """``E_i = Linear(F -> F) -> SiLU -> Linear(F -> 1)`` of the final features."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(features, features)
        self.output = nn.Linear(features, 1)

    def forward(self, features: Tensor) -> Tensor:
        return self.output(functional.silu(self.hidden(features))).squeeze(-1)
