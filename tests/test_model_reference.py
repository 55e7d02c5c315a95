"""The model against a plain float64 implementation of the equations and against pinned numbers.

``reference_energy`` below evaluates the equations of
``../shared/design/so3krates-architecture.md`` literally (every ordered pair,
one filter network and one attention block at a time, no fused products),
from the model's state dict. It guards the fused, reordered computation of
:mod:`so3krates_openmm.model.layers` against any change of the equations. The
pinned numbers are the energy and forces of the shipped Ac-Ala3-NHMe
checkpoint on its structure, computed with the model code as it was before
the speed work (commit ecde956).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import (
    ETHANOL_WATER_NUMBERS,
    ETHANOL_WATER_POSITIONS,
    REPOSITORY,
    randomise,
    small_config,
)
from torch.nn import functional

from so3krates_openmm import SO3krates
from so3krates_openmm.data.structures import read_structure
from so3krates_openmm.model.basis import (
    CutoffFunction,
    PhysNetRadialBasis,
    SphericalHarmonics,
    degree_contraction_matrix,
)
from so3krates_openmm.model.checkpoint import load_model

SHIPPED = REPOSITORY / "so3krates_openmm" / "pretrained" / "ac_ala3_nhme"


def reference_energy(model: SO3krates, numbers: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Total energy (0-d, float64) of one structure, computed from the equations in float64."""
    config = model.config
    p: dict[str, torch.Tensor] = {name: value.double() for name, value in model.state_dict().items()}
    features, heads, degrees = config.features, config.heads, list(config.degrees)

    def linear(name: str, x: torch.Tensor) -> torch.Tensor:
        return functional.linear(x, p[name + ".weight"], p.get(name + ".bias"))

    def mlp(name_in: str, name_out: str, x: torch.Tensor) -> torch.Tensor:
        return linear(name_out, functional.silu(linear(name_in, x)))

    degree_of_component = torch.repeat_interleave(
        torch.arange(len(degrees)), torch.tensor([2 * l + 1 for l in degrees])
    )

    def contract(v: torch.Tensor, layer: str) -> torch.Tensor:
        """``c_l(v) = (2l+1)^-1/2 sum_m (v^l_m)^2`` with the layer's stored constants
        (the checkpoint's buffers; a float32 checkpoint holds (2l+1)^-1/2 rounded to float32)."""
        contraction = p[layer + "contraction"]
        torch.testing.assert_close(contraction, degree_contraction_matrix(degrees), rtol=1e-7, atol=0.0)
        return (v * v) @ contraction

    def attention_scores(
        queries: torch.Tensor, filters: torch.Tensor, keys: torch.Tensor, n_heads: int
    ) -> torch.Tensor:
        width = features // n_heads
        return (queries * filters * keys).view(-1, n_heads, width).sum(-1) * width**-0.5

    n_atoms = len(numbers)
    distance_matrix = torch.cdist(positions.detach(), positions.detach())
    i, j = torch.nonzero((distance_matrix < config.cutoff) & ~torch.eye(n_atoms, dtype=torch.bool), as_tuple=True)
    vectors = positions[j] - positions[i]
    distances = vectors.norm(dim=1)
    phi = CutoffFunction(config.cutoff, config.cutoff_function)(distances)
    # PhysNet basis exp(-beta (exp(-d) - mu_k)^2) with the stored centres mu_k (a float32 model rounds them).
    centres = p["radial_basis.centres"]
    torch.testing.assert_close(
        centres, PhysNetRadialBasis(config.radial_basis_size, config.cutoff).centres, rtol=1e-7, atol=0.0
    )
    beta = ((2.0 / config.radial_basis_size) * (1.0 - math.exp(-config.cutoff))) ** -2
    basis = torch.exp(-beta * (torch.exp(-distances).unsqueeze(-1) - centres) ** 2)
    harmonics = SphericalHarmonics(degrees)(vectors / distances.unsqueeze(-1))

    species = model.species_index[numbers]
    x = p["embedding.weight"][species]
    chi = torch.zeros(n_atoms, config.m_tot, dtype=torch.float64)
    for t in range(config.layers):
        layer = f"layers.{t}."
        delta = contract(chi[j] - chi[i], layer)
        filters = {
            name: mlp(layer + name + ".radial_in", layer + name + ".radial_out", basis)
            + mlp(layer + name + ".spherical_in", layer + name + ".spherical_out", delta)
            for name in ("feature_filter", "euclidean_filter")
        }
        alpha = attention_scores(
            linear(layer + "feature_attention.query", x)[i],
            filters["feature_filter"],
            linear(layer + "feature_attention.key", x)[j],
            heads,
        )
        values = linear(layer + "feature_attention.value", x)[j].view(-1, heads, features // heads)
        dx = torch.zeros_like(x).index_add(0, i, ((phi.unsqueeze(-1) * alpha).unsqueeze(-1) * values).flatten(1))
        beta = attention_scores(
            linear(layer + "euclidean_attention.query", x)[i],
            filters["euclidean_filter"],
            linear(layer + "euclidean_attention.key", x)[j],
            len(degrees),
        )
        dchi = torch.zeros_like(chi).index_add(0, i, (phi.unsqueeze(-1) * beta)[:, degree_of_component] * harmonics)
        x, chi = x + dx, chi + dchi
        mixed = linear(layer + "exchange.linear", torch.cat([x, contract(chi, layer + "exchange.")], dim=1))
        x, chi = x + mixed[:, :features], chi + mixed[:, features:][:, degree_of_component] * chi
    atomic = mlp("readout.hidden", "readout.output", x).squeeze(-1)
    return (atomic * p["energy_scales"][species] + p["energy_shifts"][species]).sum()


def reference_energy_and_forces(model: SO3krates, numbers, positions) -> tuple[float, np.ndarray]:
    positions = torch.as_tensor(positions, dtype=torch.float64).clone().requires_grad_(True)
    energy = reference_energy(model, torch.as_tensor(numbers), positions)
    (gradient,) = torch.autograd.grad(energy, positions)
    return float(energy.detach()), -gradient.numpy()


@pytest.mark.parametrize("cutoff_function", ["cosine", "polynomial"])
def test_model_equals_plain_float64_reference(cutoff_function):
    model = randomise(SO3krates(small_config(cutoff_function=cutoff_function))).eval()
    energy, forces = model.energy_and_forces(ETHANOL_WATER_NUMBERS, ETHANOL_WATER_POSITIONS)
    reference, reference_forces = reference_energy_and_forces(model, ETHANOL_WATER_NUMBERS, ETHANOL_WATER_POSITIONS)
    assert abs(float(energy[0]) - reference) <= 1e-10 * abs(reference)
    np.testing.assert_allclose(forces.numpy(), reference_forces, rtol=1e-9, atol=1e-10 * np.abs(reference_forces).max())


@pytest.fixture(scope="module")
def shipped() -> tuple[SO3krates, np.ndarray, np.ndarray]:
    structure = read_structure(SHIPPED / "structure.pdb")
    return load_model(SHIPPED / "best_checkpoint.pt").eval(), structure.atomic_numbers, structure.positions_angstrom


@pytest.mark.artifacts
def test_shipped_checkpoint_in_float64_equals_plain_reference(shipped):
    model, numbers, positions = shipped
    model64 = load_model(SHIPPED / "best_checkpoint.pt").double().eval()
    energy, forces = model64.energy_and_forces(numbers, positions)
    reference, reference_forces = reference_energy_and_forces(model, numbers, positions)
    assert abs(float(energy[0]) - reference) <= 1e-10 * abs(reference)
    np.testing.assert_allclose(forces.numpy(), reference_forces, rtol=1e-8, atol=1e-9 * np.abs(reference_forces).max())


#: Energy (kcal/mol) and forces (kcal/mol/Å) of the shipped checkpoint (float32) on
#: ``structure.pdb``: the round-1 checkpoint (2026-12-01), computed with the model code of commit 4a9c53f,
#: which reproduced the round-0 checkpoint's pins made with the code of commit ecde956.
PINNED_ENERGY = -40755.91902967133
PINNED_FORCES = [
    [ 9.2433028e-02, -1.8245826e-02, -1.1622275e-01],
    [ 7.8008652e-02,  6.1248016e-01, -2.4051189e-01],
    [-4.7699833e-01, -4.6198606e-02, -8.0094814e-02],
    [ 1.4761329e-01, -2.8624368e-01,  1.6361094e-01],
    [ 2.2809029e-01, -4.3524742e-02, -8.8100433e-02],
    [ 9.5814705e-02,  1.1758640e-01,  6.7916679e-01],
    [ 2.5667572e-01,  7.1447849e-02, -3.0937195e-02],
    [ 5.8472693e-02, -2.0261335e-01,  2.1607971e-01],
    [-5.3209496e-01,  1.7962408e-01, -7.2421837e-01],
    [-3.1655788e-01,  3.8862228e-02, -5.1334381e-02],
    [-3.0766636e-01,  1.1432457e-01,  1.4243982e+00],
    [-1.8677521e-01, -6.5046287e-01, -2.0403862e-01],
    [ 2.5368834e-01, -2.5717688e-01, -2.5281048e-01],
    [-2.5629354e-01,  8.1150770e-02, -3.8114458e-01],
    [ 4.8177338e-01, -8.3316422e-01,  1.2907295e+00],
    [-2.8176785e-02,  8.5076714e-01, -1.4064217e+00],
    [-4.3297577e-01, -3.8733435e-01, -5.4778433e-01],
    [ 3.2406485e-01, -2.4341583e-02,  4.5015287e-01],
    [ 5.2304459e-01,  1.2925148e-01,  4.7452259e-01],
    [ 2.8486252e-02,  6.2091351e-02,  5.4989815e-02],
    [ 6.6585541e-01, -3.0654907e-02, -1.9169140e-01],
    [-3.2443237e-01,  1.0135913e-01,  5.4214478e-02],
    [-2.1040487e-01,  1.3192654e-02,  7.1258545e-02],
    [ 1.1603115e-01,  1.0482493e-01, -2.7408338e-01],
    [-2.2032738e-01,  6.2456703e-01, -1.9364834e-01],
    [-3.8365364e-01, -4.5002079e-01,  3.5842896e-01],
    [ 4.0045357e-01, -9.0437603e-01,  3.5698223e-01],
    [ 6.9386125e-02,  2.7386570e-01, -4.5536494e-01],
    [ 5.3348541e-02,  1.3492584e-01, -3.4782532e-01],
    [ 1.6543865e-01,  5.0197029e-01,  2.1000624e-01],
    [-5.9100151e-01, -1.6046333e-01, -1.3602066e-01],
    [ 2.8628349e-01, -2.6328087e-02, -3.6939144e-02],
    [ 3.8199759e-01,  1.7196941e-01, -6.1111927e-02],
    [-1.3080436e-01,  1.2587048e-01,  1.1027688e-01],
    [ 3.2986259e-01,  4.3999195e-01, -7.0077515e-01],
    [-6.6175270e-01, -4.2372227e-01,  7.6635551e-01],
    [ 7.7072573e-01, -1.8866062e-01,  6.9817734e-01],
    [-5.3962994e-01,  1.5610051e-01, -1.4655519e-01],
    [-8.0337715e-01,  2.2254944e-01, -6.3325882e-02],
    [ 2.0571041e-01, -2.1183872e-01, -5.4728127e-01],
    [ 8.9114666e-02, -1.5295696e-01,  1.0751820e-01],
    [ 3.0054998e-01,  1.6956377e-01, -2.0861435e-01],
]


@pytest.mark.artifacts
def test_shipped_checkpoint_gives_the_pinned_energy_and_forces(shipped):
    model, numbers, positions = shipped
    assert model.dtype == torch.float32
    energy, forces = model.energy_and_forces(numbers, positions)
    # float32 rounding: the energy to 1e-3 kcal/mol (it includes float64 shifts of ~4e4 kcal/mol),
    # forces to 1e-4 relative (float32 against float64 differ by ~1.5e-4 of the largest force here).
    assert abs(float(energy[0]) - PINNED_ENERGY) <= 1e-3
    pinned = np.array(PINNED_FORCES)
    np.testing.assert_allclose(forces.numpy(), pinned, rtol=1e-4, atol=1e-4 * np.abs(pinned).max())
