"""Energy and length units, and exact conversions between them.

The model works internally in Å and in the energy unit of its training data
(recorded in the checkpoint). OpenMM works in nm and kJ/mol. Every number that
crosses that boundary goes through the factors defined here.
"""

from __future__ import annotations

#: kJ/mol per unit of energy. 1 eV = 96.4853321 kJ/mol (CODATA via N_A e),
#: 1 kcal = 4.184 kJ (thermochemical calorie), 1 Hartree = 2625.4996394799 kJ/mol.
KJ_PER_MOL_PER_ENERGY_UNIT: dict[str, float] = {
    "kJ/mol": 1.0,
    "kcal/mol": 4.184,
    "eV": 96.4853321,
    "meV": 0.0964853321,
    "Hartree": 2625.4996394799,
}

#: Å per unit of length.
ANGSTROM_PER_LENGTH_UNIT: dict[str, float] = {
    "Angstrom": 1.0,
    "nm": 10.0,
    "Bohr": 0.529177210903,
}

#: Å per nm, the factor at every boundary between the model (Å) and OpenMM (nm).
ANGSTROM_PER_NM: float = ANGSTROM_PER_LENGTH_UNIT["nm"]

#: ps per AKMA time unit (CHARMM's, in which a DCD header gives the time step).
PS_PER_AKMA_TIME: float = 0.04888821

_ENERGY_ALIASES = {
    "kj/mol": "kJ/mol",
    "kcal/mol": "kcal/mol",
    "ev": "eV",
    "mev": "meV",
    "hartree": "Hartree",
    "ha": "Hartree",
}
_LENGTH_ALIASES = {
    "angstrom": "Angstrom",
    "å": "Angstrom",
    "a": "Angstrom",
    "ang": "Angstrom",
    "nm": "nm",
    "bohr": "Bohr",
}


def _normalise(unit: str, aliases: dict[str, str], known: dict[str, float], kind: str) -> str:
    canonical = aliases.get(unit.strip().lower())
    if canonical is None:
        raise ValueError(f"unknown {kind} unit {unit!r}; use one of {sorted(known)}")
    return canonical


def normalise_energy_unit(unit: str) -> str:
    """Return the canonical spelling of an energy unit, or raise ``ValueError``."""
    return _normalise(unit, _ENERGY_ALIASES, KJ_PER_MOL_PER_ENERGY_UNIT, "energy")


def normalise_length_unit(unit: str) -> str:
    """Return the canonical spelling of a length unit, or raise ``ValueError``."""
    return _normalise(unit, _LENGTH_ALIASES, ANGSTROM_PER_LENGTH_UNIT, "length")


def energy_conversion(from_unit: str, to_unit: str) -> float:
    """Factor that converts an energy in ``from_unit`` to ``to_unit``."""
    source = KJ_PER_MOL_PER_ENERGY_UNIT[normalise_energy_unit(from_unit)]
    target = KJ_PER_MOL_PER_ENERGY_UNIT[normalise_energy_unit(to_unit)]
    return source / target


def length_conversion(from_unit: str, to_unit: str) -> float:
    """Factor that converts a length in ``from_unit`` to ``to_unit``."""
    source = ANGSTROM_PER_LENGTH_UNIT[normalise_length_unit(from_unit)]
    target = ANGSTROM_PER_LENGTH_UNIT[normalise_length_unit(to_unit)]
    return source / target
