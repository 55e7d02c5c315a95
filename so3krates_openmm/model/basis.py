"""Basis functions of SO3krates: cutoff functions, PhysNet radial basis, real
spherical harmonics and the per-degree contraction.

All functions are TorchScript-compatible. Distances are in Å.
"""

from __future__ import annotations

import math
from typing import List

import torch
from torch import Tensor, nn


def cosine_cutoff(distances: Tensor, cutoff: float) -> Tensor:
    """``0.5 (cos(pi d / r_c) + 1)`` for ``d < r_c`` and exactly 0 beyond."""
    value = 0.5 * (torch.cos(distances * (math.pi / cutoff)) + 1.0)
    return torch.where(distances < cutoff, value, torch.zeros_like(value))


def polynomial_cutoff(distances: Tensor, cutoff: float) -> Tensor:
    """C2-smooth PhysNet polynomial ``1 - 6x^5 + 15x^4 - 10x^3``, ``x = d / r_c``; 0 beyond."""
    x = distances / cutoff
    x3 = x * x * x
    value = 1.0 + x3 * (-10.0 + x * (15.0 - 6.0 * x))
    return torch.where(distances < cutoff, value, torch.zeros_like(value))


class CutoffFunction(nn.Module):
    """Selectable cutoff function ``phi(d)`` (``"cosine"`` or ``"polynomial"``)."""

    def __init__(self, cutoff: float, kind: str = "cosine") -> None:
        super().__init__()
        if kind not in ("cosine", "polynomial"):
            raise ValueError(f"unknown cutoff function {kind!r}; use 'cosine' or 'polynomial'")
        self.cutoff = float(cutoff)
        self.polynomial = kind == "polynomial"

    def forward(self, distances: Tensor) -> Tensor:
        if self.polynomial:
            return polynomial_cutoff(distances, self.cutoff)
        return cosine_cutoff(distances, self.cutoff)


class PhysNetRadialBasis(nn.Module):
    """K fixed PhysNet functions ``exp(-beta (exp(-d) - mu_k)^2)``.

    ``mu_k`` evenly spaced from ``exp(-r_c)`` to 1 and
    ``beta = ((2/K)(1 - exp(-r_c)))^-2``; ``d`` in Å. Not trainable, and not
    multiplied by the cutoff function (that multiplies the attention weights).
    """

    def __init__(self, size: int, cutoff: float) -> None:
        super().__init__()
        start = math.exp(-cutoff)
        self.register_buffer("centres", torch.linspace(start, 1.0, size, dtype=torch.float64))
        self.beta = float(((2.0 / size) * (1.0 - start)) ** -2)

    def forward(self, distances: Tensor) -> Tensor:
        centres = self.centres.to(distances.dtype)
        difference = torch.exp(-distances).unsqueeze(-1) - centres
        return torch.exp(-self.beta * difference * difference)


def _harmonics_of_degree(degree: int, x: Tensor, y: Tensor, z: Tensor) -> List[Tensor]:
    """Real orthonormal spherical harmonics ``Y^l_m``, ``m = -l..l``, of a unit vector."""
    if degree == 0:
        return [torch.full_like(x, 0.5 * math.sqrt(1.0 / math.pi))]
    if degree == 1:
        c = math.sqrt(3.0 / (4.0 * math.pi))
        return [c * y, c * z, c * x]
    x2 = x * x
    y2 = y * y
    z2 = z * z
    if degree == 2:
        c = 0.5 * math.sqrt(15.0 / math.pi)
        return [
            c * x * y,
            c * y * z,
            0.25 * math.sqrt(5.0 / math.pi) * (3.0 * z2 - 1.0),
            c * x * z,
            0.5 * c * (x2 - y2),
        ]
    if degree == 3:
        return [
            0.25 * math.sqrt(35.0 / (2.0 * math.pi)) * y * (3.0 * x2 - y2),
            0.5 * math.sqrt(105.0 / math.pi) * x * y * z,
            0.25 * math.sqrt(21.0 / (2.0 * math.pi)) * y * (5.0 * z2 - 1.0),
            0.25 * math.sqrt(7.0 / math.pi) * z * (5.0 * z2 - 3.0),
            0.25 * math.sqrt(21.0 / (2.0 * math.pi)) * x * (5.0 * z2 - 1.0),
            0.25 * math.sqrt(105.0 / math.pi) * z * (x2 - y2),
            0.25 * math.sqrt(35.0 / (2.0 * math.pi)) * x * (x2 - 3.0 * y2),
        ]
    if degree == 4:
        return [
            0.75 * math.sqrt(35.0 / math.pi) * x * y * (x2 - y2),
            0.75 * math.sqrt(35.0 / (2.0 * math.pi)) * y * z * (3.0 * x2 - y2),
            0.75 * math.sqrt(5.0 / math.pi) * x * y * (7.0 * z2 - 1.0),
            0.75 * math.sqrt(5.0 / (2.0 * math.pi)) * y * z * (7.0 * z2 - 3.0),
            (3.0 / 16.0) * math.sqrt(1.0 / math.pi) * (35.0 * z2 * z2 - 30.0 * z2 + 3.0),
            0.75 * math.sqrt(5.0 / (2.0 * math.pi)) * x * z * (7.0 * z2 - 3.0),
            0.375 * math.sqrt(5.0 / math.pi) * (x2 - y2) * (7.0 * z2 - 1.0),
            0.75 * math.sqrt(35.0 / (2.0 * math.pi)) * x * z * (x2 - 3.0 * y2),
            (3.0 / 16.0) * math.sqrt(35.0 / math.pi) * (x2 * (x2 - 3.0 * y2) - y2 * (3.0 * x2 - y2)),
        ]
    raise ValueError("spherical harmonics are implemented for degrees 0 to 4")


class SphericalHarmonics(nn.Module):
    """Real orthonormal spherical harmonics of unit vectors, degree by degree.

    Output (E, m_tot) with the components of each degree in ``degrees`` stacked
    in order, ``m = -l..l`` within a degree.
    """

    __constants__ = ["degrees"]  # a constant tuple: TorchScript unrolls the loop, also over no degrees

    def __init__(self, degrees: List[int]) -> None:
        super().__init__()
        self.degrees = tuple(int(l) for l in degrees)

    def forward(self, unit_vectors: Tensor) -> Tensor:
        x = unit_vectors[:, 0]
        y = unit_vectors[:, 1]
        z = unit_vectors[:, 2]
        components: List[Tensor] = []
        for degree in self.degrees:
            components.extend(_harmonics_of_degree(degree, x, y, z))
        return torch.stack(components, dim=-1)


def degree_contraction_matrix(degrees: List[int], dtype: torch.dtype = torch.float64) -> Tensor:
    """Constant (m_tot, n_D) matrix ``P`` with ``P[m, l] = (2l+1)^-1/2`` for m in degree l.

    The contraction ``c_l(v) = (2l+1)^-1/2 sum_m (v^l_m)^2`` of a batch of
    vectors is then ``(v * v) @ P``: a squared norm (no square root, smooth at 0).
    """
    m_tot = sum(2 * l + 1 for l in degrees)
    matrix = torch.zeros(m_tot, len(degrees), dtype=dtype)
    start = 0
    for column, degree in enumerate(degrees):
        matrix[start : start + 2 * degree + 1, column] = (2 * degree + 1) ** -0.5
        start += 2 * degree + 1
    return matrix


def degree_expansion_matrix(degrees: List[int], dtype: torch.dtype = torch.float64) -> Tensor:
    """Constant (n_D, m_tot) 0/1 matrix that copies a per-degree value to its 2l+1 components."""
    m_tot = sum(2 * l + 1 for l in degrees)
    matrix = torch.zeros(len(degrees), m_tot, dtype=dtype)
    start = 0
    for row, degree in enumerate(degrees):
        matrix[row, start : start + 2 * degree + 1] = 1.0
        start += 2 * degree + 1
    return matrix
