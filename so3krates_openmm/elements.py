"""Chemical elements: symbols, atomic numbers and masses (from ASE's tables)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ase.data import atomic_masses, atomic_numbers, chemical_symbols

MAX_ATOMIC_NUMBER = 118


def atomic_number(symbol_or_number: str | int) -> int:
    """Atomic number of an element given as a symbol ("C", "cl") or a number.

    Raises ``ValueError`` naming the offending input when it is not an element.
    """
    if isinstance(symbol_or_number, str):
        text = symbol_or_number.strip()
        if text.isdigit():
            return atomic_number(int(text))
        key = text[:1].upper() + text[1:].lower()
        if key not in atomic_numbers or key == "X":
            raise ValueError(f"unknown element symbol {symbol_or_number!r}")
        return atomic_numbers[key]
    number = int(symbol_or_number)
    if not 1 <= number <= MAX_ATOMIC_NUMBER:
        raise ValueError(f"atomic number {number} is not an element (1..{MAX_ATOMIC_NUMBER})")
    return number


def atomic_numbers_of(elements: Iterable[str | int]) -> list[int]:
    """Atomic numbers for a sequence of element symbols or numbers."""
    return [atomic_number(element) for element in elements]


def symbol(number: int) -> str:
    """Element symbol of an atomic number."""
    return chemical_symbols[atomic_number(number)]


def masses_dalton(numbers: Sequence[int]) -> list[float]:
    """Standard atomic masses in Da (g/mol) for a sequence of atomic numbers."""
    return [float(atomic_masses[atomic_number(z)]) for z in numbers]


def formula(numbers: Sequence[int]) -> str:
    """Hill-order chemical formula, e.g. ``C12H22N4O4``."""
    counts: dict[str, int] = {}
    for z in numbers:
        counts[symbol(z)] = counts.get(symbol(z), 0) + 1
    order = [s for s in ("C", "H") if s in counts] + sorted(s for s in counts if s not in ("C", "H"))
    return "".join(f"{s}{counts[s] if counts[s] > 1 else ''}" for s in order)
