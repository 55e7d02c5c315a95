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
    and biases. The first radial layer and its SiLU are applied by the caller
    for all filters of the model at once (see
    :meth:`~so3krates_openmm.model.so3krates.SO3krates.radial_hidden`), so
    :meth:`forward` takes the hidden radial features.
    """

    def __init__(self, radial_basis_size: int, n_degrees: int, features: int) -> None:
        super().__init__()
        self.radial_in = nn.Linear(radial_basis_size, features)
        self.radial_out = nn.Linear(features, features)
        if n_degrees > 0:  # the invariant model (no degrees) has filters of the radial basis only
            self.spherical_in = nn.Linear(n_degrees, features // 4)
            self.spherical_out = nn.Linear(features // 4, features)

    def forward(self, radial_hidden: Tensor, ev_invariants: Tensor) -> Tensor:
        """Filters (P, F) from ``silu(W_rad_in e(d_ij) + b_rad_in)`` (P, F) and ``delta_ij`` (P, n_D).

        Both output layers accumulate into one tensor (the two output biases
        added first): ``W_rad_out h_rad + (b_rad_out + b_sph_out) + W_sph_out h_sph``.
        Without degrees: ``W_rad_out h_rad + b_rad_out``.
        """
        if not hasattr(self, "spherical_in"):
            return functional.linear(radial_hidden, self.radial_out.weight, self.radial_out.bias)
        radial = functional.linear(
            radial_hidden, self.radial_out.weight, self.radial_out.bias + self.spherical_out.bias
        )
        spherical_hidden = functional.silu(self.spherical_in(ev_invariants))
        return torch.addmm(radial, spherical_hidden, self.spherical_out.weight.t())


def attention_weights(queries: Tensor, filters: Tensor, keys: Tensor, cutoff_weights: Tensor, heads: int) -> Tensor:
    """Cutoff-weighted attention scores ``phi(d_ij) sum_{f in head h} (q_i)_f (w_ij)_f (k_j)_f``, (E, heads).

    ``queries`` (E, F) of the centres and ``keys`` (E, F) of the neighbours are
    per ordered pair, in the layout of
    :func:`~so3krates_openmm.model.neighbours.ordered_pairs` (the P unordered
    pairs, then the same pairs reversed: E = 2P); the queries carry the score
    scale. ``filters`` (P, F) are per unordered pair: a filter is symmetric in
    i and j, so both directions of a pair use it (broadcast, not copied).
    ``cutoff_weights`` (E,) are ``phi(d_ij)``.
    """
    n_unordered, width = filters.shape
    products = queries.view(2, n_unordered, width) * filters * keys.view(2, n_unordered, width)
    return products.view(2 * n_unordered, heads, width // heads).sum(-1) * cutoff_weights.unsqueeze(-1)


class InvariantAttention(nn.Module):
    """Multi-head attention update of the invariant features, without softmax.

    ``alpha^h_ij = (F/H)^-1/2 sum_f (Q^h x_i)_f (w^h_ij)_f (K^h x_j)_f`` and
    ``dx_i = concat_h sum_j phi(d_ij) alpha^h_ij V^h x_j``.

    The projections ``Q x, K x, V x`` are made and gathered by
    :class:`SO3kratesLayer` (together with those of the Euclidean block), with
    the scale ``(F/H)^-1/2`` applied to the query weights.
    """

    def __init__(self, features: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_width = features // heads
        self.scale = float(self.head_width) ** -0.5
        self.query = nn.Linear(features, features, bias=False)
        self.key = nn.Linear(features, features, bias=False)
        self.value = nn.Linear(features, features, bias=False)

    def forward(
        self,
        queries: Tensor,
        keys: Tensor,
        values: Tensor,
        filters: Tensor,
        cutoff_weights: Tensor,
        centres: Tensor,
        n_atoms: int,
    ) -> Tensor:
        """``dx`` (N, F) from ``(F/H)^-1/2 Q x_i``, ``K x_j``, ``V x_j`` (E, F) per ordered
        pair and the filters (P, F) per unordered pair (see :func:`attention_weights`)."""
        n_pairs = queries.shape[0]
        weights = attention_weights(queries, filters, keys, cutoff_weights, self.heads)
        messages = weights.unsqueeze(-1) * values.view(n_pairs, self.heads, self.head_width)
        return scatter_sum(messages.view(n_pairs, self.heads * self.head_width), centres, n_atoms)


class EuclideanAttention(nn.Module):
    """Attention update of the Euclidean variables, one head per degree, no value matrix.

    ``beta^l_ij = (F/n_D)^-1/2 sum_f (Q~^l x_i)_f (w~^l_ij)_f (K~^l x_j)_f`` and
    ``dchi^l_i = sum_j phi(d_ij) beta^l_ij Y^l(u_ij)``.

    The projections ``Q~ x, K~ x`` are made and gathered by
    :class:`SO3kratesLayer` (together with those of the invariant block), with
    the scale ``(F/n_D)^-1/2`` applied to the query weights.
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
        queries: Tensor,
        keys: Tensor,
        filters: Tensor,
        cutoff_weights: Tensor,
        harmonics: Tensor,
        centres: Tensor,
        n_atoms: int,
    ) -> Tensor:
        """``dchi`` (N, m_tot) from ``(F/n_D)^-1/2 Q~ x_i``, ``K~ x_j`` (E, F) and the
        harmonics (E, m_tot) per ordered pair and the filters (P, F) per unordered pair."""
        weights = attention_weights(queries, filters, keys, cutoff_weights, self.n_degrees)
        messages = (weights @ self.expansion.to(weights.dtype)) * harmonics
        return scatter_sum(messages, centres, n_atoms)


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
    :func:`~so3krates_openmm.model.neighbours.ordered_pairs`: the P unordered
    pairs (i, j), then the same pairs reversed (j, i). The filters are
    symmetric in i and j and are computed for the unordered pairs only, from
    hidden radial features (P, F). The five projections ``Q x, K x, V x``
    (invariant block) and ``Q~ x, K~ x`` (Euclidean block) are two matrix
    products over atoms, with weights concatenated at call time.
    """

    def __init__(self, features: int, heads: int, degrees: List[int], radial_basis_size: int) -> None:
        super().__init__()
        self.features = features
        # Registered in this order (the order of model.parameters(), as before the invariant model existed):
        # optimiser states in training checkpoints and seeded random weights follow it.
        self.feature_filter = FilterNetwork(radial_basis_size, len(degrees), features)
        if degrees:  # the invariant model (no degrees) has no Euclidean filter and attention
            self.euclidean_filter = FilterNetwork(radial_basis_size, len(degrees), features)
        self.feature_attention = InvariantAttention(features, heads)
        if degrees:
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
        """Updated ``(x, chi)``. ``feature_radial``, ``euclidean_radial``: hidden radial
        features (P, F) of the two filters; cutoff weights (E,) and harmonics (E, m_tot)
        per ordered pair; ``centres``, ``neighbours`` (E,)."""
        n_unordered = feature_radial.shape[0]
        n_atoms = features.shape[0]
        invariant = self.feature_attention
        if not hasattr(self, "euclidean_attention"):  # the invariant model: x_i += dx_i, then the exchange's linear
            queries = functional.linear(features, invariant.query.weight * invariant.scale)
            keys, values = functional.linear(features, torch.cat([invariant.key.weight, invariant.value.weight])).split(
                self.features, dim=1)
            feature_update = invariant(
                queries.index_select(0, centres),
                keys.index_select(0, neighbours),
                values.index_select(0, neighbours),
                self.feature_filter(feature_radial, euclidean.new_zeros(n_unordered, 0)),
                cutoff_weights,
                centres,
                n_atoms,
            )
            return self.exchange(features + feature_update, euclidean)
        difference = (
            euclidean.index_select(0, neighbours[:n_unordered]) - euclidean.index_select(0, centres[:n_unordered])
        )
        ev_invariants = (difference * difference) @ self.contraction.to(difference.dtype)
        ev = self.euclidean_attention
        centre_weights = torch.cat([invariant.query.weight * invariant.scale, ev.query.weight * ev.scale])
        neighbour_weights = torch.cat([invariant.key.weight, ev.key.weight, invariant.value.weight])
        # Split per atom, gathered per pair one by one: slicing a pair-sized tensor would
        # cost a pair-sized copy in the backward pass.
        queries, ev_queries = functional.linear(features, centre_weights).split(self.features, dim=1)
        keys, ev_keys, values = functional.linear(features, neighbour_weights).split(self.features, dim=1)
        feature_update = invariant(
            queries.index_select(0, centres),
            keys.index_select(0, neighbours),
            values.index_select(0, neighbours),
            self.feature_filter(feature_radial, ev_invariants),
            cutoff_weights,
            centres,
            n_atoms,
        )
        euclidean_update = ev(
            ev_queries.index_select(0, centres),
            ev_keys.index_select(0, neighbours),
            self.euclidean_filter(euclidean_radial, ev_invariants),
            cutoff_weights,
            harmonics,
            centres,
            n_atoms,
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
