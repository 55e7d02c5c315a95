"""so3krates_openmm.md.conformers: backbone dihedrals set exactly, the rest of the geometry kept, reproducible draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from so3krates_openmm.data.structures import Structure, read_structure
from so3krates_openmm.md.conformers import (
    TorsionDriver,
    amide_isomer,
    backbone_torsions,
    cis_peptide_bonds,
    dihedral_deg,
    isomer_code,
    peptide_bond_torsions,
    random_torsion_conformers,
)
from so3krates_openmm.md.stability import covalent_bonds


def test_dihedrals_are_set_and_bonds_and_angles_kept(peptide_pdb: Path) -> None:
    import mdtraj

    structure = read_structure(peptide_pdb)
    quadruplets = backbone_torsions(structure)
    assert quadruplets.shape == (6, 4)  # phi and psi of the three alanines
    driver = TorsionDriver(structure, quadruplets)
    targets = np.array([-150.0, -80.0, 60.0, 150.0, 80.0, -40.0])
    positions = driver.set_dihedrals(structure.positions_angstrom, targets)
    measured = np.degrees(mdtraj.compute_dihedrals(
        mdtraj.Trajectory(positions[None] / 10.0, mdtraj.Topology.from_openmm(structure.topology)), quadruplets))[0]
    assert measured == pytest.approx(targets, abs=1e-3)  # mdtraj in float32
    assert [dihedral_deg(positions, q) for q in quadruplets] == pytest.approx(targets, abs=1e-6)
    # Only dihedrals turn: every distance within two bonds (bond lengths and angles) stays.
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import shortest_path

    bonds = driver.bonds
    hops = shortest_path(coo_matrix((np.ones(len(bonds)), (bonds[:, 0], bonds[:, 1])), shape=(structure.n_atoms,) * 2),
                         directed=False, unweighted=True)
    i, j = np.nonzero(np.triu(hops <= 2, k=1))
    before = np.linalg.norm(structure.positions_angstrom[i] - structure.positions_angstrom[j], axis=1)
    after = np.linalg.norm(positions[i] - positions[j], axis=1)
    assert after == pytest.approx(before, abs=1e-9)
    with pytest.raises(ValueError, match="5 angles for 6 dihedrals"):
        driver.set_dihedrals(structure.positions_angstrom, targets[:5])


def test_random_conformers_are_reproducible_and_free_of_clashes(peptide_pdb: Path) -> None:
    structure = read_structure(peptide_pdb)
    conformers = random_torsion_conformers(structure, 12, seed=4)
    assert conformers.shape == (12, structure.n_atoms, 3)
    assert np.array_equal(random_torsion_conformers(structure, 5, seed=4), conformers[:5])
    assert not np.array_equal(random_torsion_conformers(structure, 5, seed=5), conformers[:5])
    driver = TorsionDriver(structure, backbone_torsions(structure))
    assert not any(driver.clashes(x) for x in conformers)
    angles = np.array([[dihedral_deg(x, q) for q in driver.quadruplets] for x in conformers])
    assert angles.std(axis=0).min() > 40.0  # spread over the circle, not near the start
    with pytest.raises(RuntimeError, match="free of clashes .* lower the clash distance"):
        random_torsion_conformers(structure, 3, clash_distance_angstrom=10.0, max_draws=20)


def test_starts_with_cis_peptide_bonds(peptide_pdb: Path) -> None:
    """The four amide bonds (the caps' too) are found; with ``cis_probability`` some starts have cis ones, each
    omega exactly cis or trans, and ``cis_probability=0`` draws the same starts as before the option."""
    structure = read_structure(peptide_pdb)
    omega = peptide_bond_torsions(structure)
    names = [atom.name for atom in structure.topology.atoms()]
    assert [[names[k] for k in q] for q in omega] == [["CH3", "C", "N", "CA"], ["CA", "C", "N", "CA"],
                                                      ["CA", "C", "N", "CA"], ["CA", "C", "N", "C"]]
    assert not cis_peptide_bonds(structure.positions_angstrom, omega).any()
    assert np.array_equal(random_torsion_conformers(structure, 4, seed=4, cis_probability=0.0),
                          random_torsion_conformers(structure, 4, seed=4))
    starts = random_torsion_conformers(structure, 40, seed=1, cis_probability=0.5)
    assert np.array_equal(random_torsion_conformers(structure, 10, seed=1, cis_probability=0.5), starts[:10])
    cis = np.array([cis_peptide_bonds(x, omega) for x in starts])
    assert 0 < cis.sum(axis=1).mean() < 4 and cis.any(axis=0).all()  # each bond cis in some starts
    started = [dihedral_deg(structure.positions_angstrom, q) for q in omega]
    for x, flags in zip(starts, cis, strict=True):
        turned = np.array([dihedral_deg(x, q) for q in omega]) - started
        assert np.abs((turned + 180.0) % 360.0 - 180.0) == pytest.approx(np.where(flags, 180.0, 0.0), abs=1e-6)
    assert not any(TorsionDriver(structure, backbone_torsions(structure)).clashes(x) for x in starts)
    with pytest.raises(ValueError, match="cis_probability must lie between 0 and 1"):
        random_torsion_conformers(structure, 2, cis_probability=1.5)


def test_an_amide_isomer_as_a_start(peptide_pdb: Path) -> None:
    """Each of the 16 isomers is reached, bonds kept; a turn that clashes draws the backbone again (reproducibly by
    seed); the all-trans isomer of an all-trans structure is the structure itself."""
    structure = read_structure(peptide_pdb)
    omega = peptide_bond_torsions(structure)
    assert isomer_code(structure.positions_angstrom, omega) == "tttt"
    assert amide_isomer(structure, "tttt") == pytest.approx(structure.positions_angstrom, abs=1e-9)
    bonds, _ = covalent_bonds(structure)
    length = np.linalg.norm(np.subtract(*structure.positions_angstrom[bonds.T]), axis=-1)
    driver = TorsionDriver(structure, backbone_torsions(structure))
    for isomer in ("cttt", "tctc", "ttcc", "cccc"):
        positions = amide_isomer(structure, isomer, seed=3)
        assert isomer_code(positions, omega) == isomer and not driver.clashes(positions)
        assert np.linalg.norm(np.subtract(*positions[bonds.T]), axis=-1) == pytest.approx(length, abs=1e-9)
    assert np.array_equal(amide_isomer(structure, "ttcc", seed=3), amide_isomer(structure, "ttcc", seed=3))
    for isomer in ("ttc", "ttxc", "TTTT"):
        with pytest.raises(ValueError, match="one letter, t .trans. or c .cis., for each of the 4 peptide bonds"):
            amide_isomer(structure, isomer)
    with pytest.raises(RuntimeError, match="free of clashes"):
        amide_isomer(structure, "cccc", clash_distance_angstrom=10.0, max_draws=5)


def test_clear_errors_without_a_topology_or_for_a_ring_bond() -> None:
    from openmm import app

    ring = 1.4 * np.array([[np.cos(a), np.sin(a), 0.0] for a in np.linspace(0, 2 * np.pi, 6, endpoint=False)])
    with pytest.raises(ValueError, match="no topology .* PDB"):
        backbone_torsions(Structure(np.full(6, 6), ring, source="ring.xyz"))
    topology = app.Topology()
    residue = topology.addResidue("RNG", topology.addChain())
    atoms = [topology.addAtom(f"C{k}", app.element.carbon, residue) for k in range(6)]
    for k in range(6):
        topology.addBond(atoms[k], atoms[(k + 1) % 6])
    structure = Structure(np.full(6, 6), ring, topology=topology, source="ring.pdb")
    with pytest.raises(ValueError, match="no backbone dihedral"):
        backbone_torsions(structure)
    with pytest.raises(ValueError, match="no amide bond"):
        peptide_bond_torsions(structure)
    with pytest.raises(ValueError, match="lies in a ring"):
        TorsionDriver(structure, np.array([[0, 1, 2, 3]]))
