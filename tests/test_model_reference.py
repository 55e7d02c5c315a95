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
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch
from torch.nn import functional

from so3krates_openmm import SO3krates
from so3krates_openmm.data.structures import read_structure
from so3krates_openmm.model.basis import CutoffFunction, PhysNetRadialBasis, SphericalHarmonics, degree_contraction_matrix

from conftest import ETHANOL_WATER_NUMBERS, ETHANOL_WATER_POSITIONS, REPOSITORY, randomise, small_config

SHIPPED = REPOSITORY / "so3krates_openmm" / "pretrained" / "ac_ala3_nhme"


def reference_energy(model: SO3krates, numbers: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Total energy (0-d, float64) of one structure, computed from the equations in float64."""
    config = model.config
    p: Dict[str, torch.Tensor] = {name: value.double() for name, value in model.state_dict().items()}
    features, heads, degrees = config.features, config.heads, list(config.degrees)

    def linear(name: str, x: torch.Tensor) -> torch.Tensor:
        return functional.linear(x, p[name + ".weight"], p.get(name + ".bias"))

    def mlp(name_in: str, name_out: str, x: torch.Tensor) -> torch.Tensor:
        return linear(name_out, functional.silu(linear(name_in, x)))

    degree_of_component = torch.repeat_interleave(torch.arange(len(degrees)), torch.tensor([2 * l + 1 for l in degrees]))

    def contract(v: torch.Tensor, layer: str) -> torch.Tensor:
        """``c_l(v) = (2l+1)^-1/2 sum_m (v^l_m)^2`` with the layer's stored constants
        (the checkpoint's buffers; a float32 checkpoint holds (2l+1)^-1/2 rounded to float32)."""
        contraction = p[layer + "contraction"]
        torch.testing.assert_close(contraction, degree_contraction_matrix(degrees), rtol=1e-7, atol=0.0)
        return (v * v) @ contraction

    def attention_scores(queries: torch.Tensor, filters: torch.Tensor, keys: torch.Tensor, n_heads: int) -> torch.Tensor:
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
    torch.testing.assert_close(centres, PhysNetRadialBasis(config.radial_basis_size, config.cutoff).centres, rtol=1e-7, atol=0.0)
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
    return SO3krates.load(SHIPPED / "best_checkpoint.pt").eval(), structure.atomic_numbers, structure.positions_angstrom


def test_shipped_checkpoint_in_float64_equals_plain_reference(shipped):
    model, numbers, positions = shipped
    model64 = SO3krates.load(SHIPPED / "best_checkpoint.pt").double().eval()
    energy, forces = model64.energy_and_forces(numbers, positions)
    reference, reference_forces = reference_energy_and_forces(model, numbers, positions)
    assert abs(float(energy[0]) - reference) <= 1e-10 * abs(reference)
    np.testing.assert_allclose(forces.numpy(), reference_forces, rtol=1e-8, atol=1e-9 * np.abs(reference_forces).max())


#: Energy (kcal/mol) and forces (kcal/mol/Å) of the shipped checkpoint (float32) on
#: ``structure.pdb``, computed with the model code of commit ecde956.
PINNED_ENERGY = -40754.34421125833
PINNED_FORCES = [
    [ 1.5918444e-01,  1.0428610e-01, -1.4275329e-01],
    [ 3.8359797e-01,  4.4871426e-01, -4.0868759e-01],
    [-2.6061821e-01,  3.4906864e-03, -1.0033512e-01],
    [ 1.2841558e-01, -3.2095838e-01,  3.1134963e-01],
    [-1.1442699e+00,  1.2902212e-01,  2.4849129e-01],
    [ 7.4245358e-01, -4.0145904e-02,  2.4266434e-01],
    [ 1.1095304e+00, -3.7886536e-01,  3.6167145e-02],
    [-7.4299246e-01, -1.2672508e-01,  1.9879103e-01],
    [-6.5274048e-01, -1.5749168e-01, -1.2414455e+00],
    [ 6.5699577e-02,  7.1484613e-01, -3.8315296e-01],
    [-7.5304520e-01, -1.3473892e-01,  1.0312080e+00],
    [-2.7865410e-02, -6.0360503e-01, -3.4070015e-03],
    [ 2.8714466e-01,  3.8546920e-02, -1.0568285e-01],
    [-7.6276660e-02,  4.8426986e-02, -1.6469458e-01],
    [ 9.4251823e-01, -7.0685005e-01,  1.8723288e+00],
    [-1.1970234e-01,  9.7965097e-01, -7.8552055e-01],
    [-2.1360302e-01, -8.6667073e-01, -1.0560517e+00],
    [ 1.3975942e-01, -9.3637705e-02,  4.4708538e-01],
    [ 8.4766769e-01, -5.4523897e-01,  9.3073320e-01],
    [ 4.0320110e-01, -2.6306772e-01, -7.3194504e-03],
    [ 2.9892492e-01,  4.8467636e-02, -2.6737309e-01],
    [-2.3379517e-01,  1.2474799e-01,  2.7117729e-01],
    [-3.0463934e-01,  4.0685606e-01,  1.2663603e-01],
    [ 2.9071164e-01,  5.8147568e-01, -2.6018888e-01],
    [-7.2235298e-01,  7.5750351e-01,  1.8778038e-01],
    [-6.3670063e-01, -1.8767071e-01,  2.4188805e-01],
    [ 9.1109276e-02, -9.2540956e-01,  1.8760014e-01],
    [ 2.8697360e-01,  1.5414333e-01, -5.4710388e-01],
    [ 1.4046478e-01,  3.7936974e-01, -3.0532905e-01],
    [ 1.9410706e-01,  6.6752815e-01,  5.8112311e-01],
    [-2.6493001e-01, -3.8975692e-01, -1.6946030e-01],
    [ 4.9582863e-01, -1.3901424e-01, -4.1997814e-01],
    [ 3.7129164e-01,  1.9846797e-01, -2.1828318e-01],
    [-2.9593784e-01,  3.4663135e-01,  8.7997496e-02],
    [ 4.9677086e-01,  4.8864031e-01, -3.6558914e-01],
    [-1.0238180e+00, -7.0604753e-01,  4.9257088e-01],
    [ 7.5045824e-01, -1.3852286e-01,  4.9280357e-01],
    [-5.4223824e-01,  1.4416480e-01, -1.5187716e-01],
    [-1.0930576e+00, -1.0061264e-03, -2.4149132e-01],
    [ 2.0133877e-01, -1.2928677e-01, -7.9413271e-01],
    [ 1.5039587e-01, -1.2422466e-01,  1.9270897e-02],
    [ 1.3104200e-01,  2.1395302e-01,  1.3218451e-01],
]


def test_shipped_checkpoint_gives_the_pinned_energy_and_forces(shipped):
    model, numbers, positions = shipped
    assert model.dtype == torch.float32
    energy, forces = model.energy_and_forces(numbers, positions)
    # float32 rounding: the energy to 1e-3 kcal/mol (it includes float64 shifts of ~4e4 kcal/mol),
    # forces to 1e-4 relative (float32 against float64 differ by ~1.5e-4 of the largest force here).
    assert abs(float(energy[0]) - PINNED_ENERGY) <= 1e-3
    pinned = np.array(PINNED_FORCES)
    np.testing.assert_allclose(forces.numpy(), pinned, rtol=1e-4, atol=1e-4 * np.abs(pinned).max())
