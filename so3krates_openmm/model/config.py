"""Hyperparameters of an SO3krates model (``SO3kratesConfig``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

from so3krates_openmm.elements import atomic_number
from so3krates_openmm.units import normalise_energy_unit, normalise_length_unit

#: Highest spherical-harmonic degree implemented (explicit real harmonics).
MAX_DEGREE = 4
CUTOFF_FUNCTIONS = ("cosine", "polynomial")
DTYPES = ("float32", "float64")


@dataclass
class SO3kratesConfig:
    """Every hyperparameter of the architecture, with the paper's defaults.

    Attributes:
        elements: atomic numbers the model knows (sorted, unique).
        features: invariant feature width F (paper: 132). Must divide by
            ``heads``, by the number of degrees and by 4.
        layers: number of SO3krates layers T (paper: 3).
        heads: attention heads H of the invariant block (paper: 4).
        degrees: spherical-harmonic degrees of the Euclidean variables (paper: (1, 2, 3));
            empty for the paper's invariant ablation (no Euclidean variables and attention,
            filters of the radial basis only, everything else identical).
        radial_basis_size: number K of PhysNet radial functions (paper: 32).
        cutoff: cutoff radius r_c in Å (paper: 5.0).
        cutoff_function: ``"cosine"`` (paper) or ``"polynomial"`` (C2-smooth PhysNet
            polynomial, better NVE energy conservation).
        dtype: ``"float32"`` (paper, MD) or ``"float64"``.
        energy_unit: energy unit of the training data and of the model output.
        length_unit: length unit of the model input; the radial basis is defined in Å,
            so this is always ``"Angstrom"`` (data in other units is converted on load).
    """

    elements: Sequence[int] = (1, 6, 7, 8)
    features: int = 132
    layers: int = 3
    heads: int = 4
    degrees: Sequence[int] = (1, 2, 3)
    radial_basis_size: int = 32
    cutoff: float = 5.0
    cutoff_function: str = "cosine"
    dtype: str = "float32"
    energy_unit: str = "eV"
    length_unit: str = "Angstrom"

    def __post_init__(self) -> None:
        self.elements = tuple(sorted({atomic_number(z) for z in self.elements}))
        self.degrees = tuple(int(l) for l in self.degrees)
        self.energy_unit = normalise_energy_unit(self.energy_unit)
        self.length_unit = normalise_length_unit(self.length_unit)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent hyperparameter."""
        if not self.elements:
            raise ValueError("config.elements is empty: the model must know at least one element")
        if len(set(self.degrees)) != len(self.degrees):
            raise ValueError(
                f"config.degrees must be distinct degrees (or empty: the invariant model), got {self.degrees}"
            )
        if any(not 0 <= l <= MAX_DEGREE for l in self.degrees):
            raise ValueError(f"config.degrees must lie in 0..{MAX_DEGREE}, got {self.degrees}")
        if self.layers < 1 or self.heads < 1 or self.features < 1 or self.radial_basis_size < 1:
            raise ValueError("config.layers, heads, features and radial_basis_size must be positive")
        for divisor, name in ((self.heads, "heads"), (max(len(self.degrees), 1), "the number of degrees"), (4, "4")):
            if self.features % divisor:
                raise ValueError(f"config.features={self.features} must be divisible by {name} ({divisor})")
        if not self.cutoff > 0:
            raise ValueError(f"config.cutoff must be positive (Å), got {self.cutoff}")
        if self.cutoff_function not in CUTOFF_FUNCTIONS:
            raise ValueError(f"config.cutoff_function must be one of {CUTOFF_FUNCTIONS}, got {self.cutoff_function!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"config.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.length_unit != "Angstrom":
            raise ValueError("config.length_unit must be 'Angstrom': convert positions to Å when loading data")

    @property
    def equivariant(self) -> bool:
        """False for the invariant ablation (``degrees=()``): no Euclidean variables, no Euclidean
        attention, filters of the radial basis only."""
        return len(self.degrees) > 0

    @property
    def m_tot(self) -> int:
        """Number of Euclidean-variable components, sum over degrees of 2l+1."""
        return sum(2 * l + 1 for l in self.degrees)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form for checkpoints and JSON."""
        data = asdict(self)
        data["elements"] = list(self.elements)
        data["degrees"] = list(self.degrees)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SO3kratesConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SO3krates config keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)
