"""The shipped GFN2-xTB data sets: layout, atom order, units, provenance, and labels that are GFN2-xTB's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from so3krates_openmm.data.formats import load_dataset
from so3krates_openmm.data.structures import read_structure
from so3krates_openmm.units import energy_conversion

PRETRAINED = Path(__file__).resolve().parents[1] / "so3krates_openmm" / "pretrained"


def test_peptide_data_set_covers_300_to_700_kelvin_in_the_structure_atom_order():
    path = PRETRAINED / "ac_ala3_nhme" / "dataset.npz"
    data = load_dataset(path)
    structure = read_structure(PRETRAINED / "ac_ala3_nhme" / "structure.pdb")
    assert len(data) >= 2000 and data.energy_unit == "kcal/mol"
    z, positions, energies, forces = data.stacked()
    np.testing.assert_array_equal(z, structure.atomic_numbers)
    with np.load(path) as raw:
        assert raw["E"].dtype == np.float64
    assert "GFN2-xTB" in data.metadata["theory"]
    temperatures = [part["settings"]["temperatures_K"] for part in data.metadata["parts"]]
    assert temperatures == [[300.0], [500.0], [700.0]]
    assert sum(part["frames"] for part in data.metadata["parts"]) == len(data)
    # Hotter blocks sit higher in energy; no frame is a duplicate.
    blocks = energies.reshape(3, -1).mean(axis=1)
    assert blocks[0] < blocks[1] < blocks[2]
    assert len(np.unique(energies)) == len(energies)
    # Bonds stay intact in every frame (no broken molecule in the training data).
    bonds = np.array([(a.index, b.index) for a, b in structure.topology.bonds()])
    lengths = np.linalg.norm(positions[:, bonds[:, 0]] - positions[:, bonds[:, 1]], axis=-1)
    assert lengths.max() < 1.9 and lengths.min() > 0.85


def test_peptide_labels_are_gfn2_xtb_energies_and_forces():
    from ase import Atoms
    from tblite.ase import TBLite

    data = load_dataset(PRETRAINED / "ac_ala3_nhme" / "dataset.npz")
    to_kcal = energy_conversion("eV", "kcal/mol")
    for index in (0, 1500):
        frame = data[index]
        atoms = Atoms(numbers=frame.atomic_numbers, positions=frame.positions)
        atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
        # Positions and forces are stored as float32: agreement to ~1e-3 kcal/mol(/Angstrom).
        assert frame.energy == pytest.approx(atoms.get_potential_energy() * to_kcal, abs=5e-3)
        np.testing.assert_allclose(frame.forces, atoms.get_forces() * to_kcal, rtol=0, atol=5e-3)


def test_catcher_data_so_far_matches_the_structure():
    directory = PRETRAINED / "buckyball_catcher"
    files = sorted(directory.glob("dataset*.npz"))
    assert files, f"no data set or partial (resumable) file in {directory}"
    structure = read_structure(directory / "structure.pdb")
    for path in files:
        data = load_dataset(path)
        assert len(data) >= 5 and data.energy_unit == "kcal/mol"
        np.testing.assert_array_equal(data.stacked()[0], structure.atomic_numbers)
        assert "GFN2-xTB" in data.metadata["theory"]
