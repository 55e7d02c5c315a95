"""Unit conversions at the OpenMM boundary are exact."""

import pytest

from so3krates_openmm.units import (
    energy_conversion,
    length_conversion,
    normalise_energy_unit,
)


def test_conversion_factors_are_the_documented_constants():
    assert energy_conversion("eV", "kJ/mol") == 96.4853321
    assert energy_conversion("kcal/mol", "kJ/mol") == 4.184
    assert energy_conversion("kcal/mol", "eV") == pytest.approx(4.184 / 96.4853321, rel=1e-15)
    assert length_conversion("nm", "Angstrom") == 10.0
    assert length_conversion("Angstrom", "nm") == 0.1


def test_unit_spellings_and_unknown_units():
    assert normalise_energy_unit(" KCAL/MOL ") == "kcal/mol"
    assert length_conversion("Å", "nm") == 0.1
    with pytest.raises(ValueError, match="unknown energy unit 'furlong'"):
        energy_conversion("furlong", "eV")
    with pytest.raises(ValueError, match="unknown length unit"):
        length_conversion("parsec", "nm")
