"""Showcase molecules: the shipped Ac-Ala3-NHMe and buckyball-catcher structures and their builders.

The buckyball catcher is checked against ``../shared/data/buckycatcher_reference.xyz``
(Grimme's geometry), which is read here for validation only and never copied.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_file

from so3krates_openmm.data.builders import (
    WATER_VOLUME_ANGSTROM3,
    build_ac_ala3_nhme,
    build_buckyball_catcher,
    build_water,
    corannulene_bowls,
    write_pdb,
)
from so3krates_openmm.data.structures import read_structure

REPOSITORY = Path(__file__).resolve().parents[1]
PRETRAINED = REPOSITORY / "so3krates_openmm" / "pretrained"
PEPTIDE_PDB = PRETRAINED / "ac_ala3_nhme" / "structure.pdb"
CATCHER_PDB = PRETRAINED / "buckyball_catcher" / "structure.pdb"


def bond_graph_from_distances(numbers: np.ndarray, positions: np.ndarray):
    """Covalent bonds by distance: C-C/C-N/C-O < 1.75 Å, X-H < 1.25 Å (no H-H)."""
    import networkx as nx
    from scipy.spatial.distance import pdist, squareform

    distances = squareform(pdist(positions))
    graph = nx.Graph()
    for i, z in enumerate(numbers):
        graph.add_node(i, element=int(z))
    for i in range(len(numbers)):
        for j in range(i + 1, len(numbers)):
            hydrogen = numbers[i] == 1 or numbers[j] == 1
            if numbers[i] == 1 and numbers[j] == 1:
                continue
            if distances[i, j] < (1.25 if hydrogen else 1.75):
                graph.add_edge(i, j)
    return graph


def topology_graph(structure):
    import networkx as nx

    graph = nx.Graph()
    for atom in structure.topology.atoms():
        graph.add_node(atom.index, element=atom.element.atomic_number)
    graph.add_edges_from((a.index, b.index) for a, b in structure.topology.bonds())
    return graph


def check_peptide_pdb(path: Path) -> None:
    import mdtraj
    from openmm import app

    structure = read_structure(path)
    assert Counter(structure.atomic_numbers.tolist()) == {6: 12, 1: 22, 7: 4, 8: 4}
    residues = [r.name for r in structure.topology.residues()]
    assert residues == ["ACE", "ALA", "ALA", "ALA", "NME"]
    assert structure.topology.getNumBonds() == 41  # acyclic, 42 atoms
    trajectory = mdtraj.load(str(path))
    phi_atoms, phi = mdtraj.compute_phi(trajectory)
    psi_atoms, psi = mdtraj.compute_psi(trajectory)
    assert phi.shape == (1, 3) and psi.shape == (1, 3)
    names = {atom.index: atom.name for atom in trajectory.topology.atoms}
    assert [[names[i] for i in quad] for quad in phi_atoms] == [["C", "N", "CA", "C"]] * 3
    assert [[names[i] for i in quad] for quad in psi_atoms] == [["N", "CA", "C", "N"]] * 3
    system = app.ForceField("amber14-all.xml").createSystem(app.PDBFile(str(path)).topology)
    assert system.getNumParticles() == 42
    # Bonds by distance are exactly the topology's bonds (the geometry is a sane molecule).
    import networkx as nx

    distance_graph = bond_graph_from_distances(structure.atomic_numbers, structure.positions_angstrom)
    assert set(map(frozenset, distance_graph.edges)) == set(map(frozenset, topology_graph(structure).edges))
    # L-alanines: RDKit assigns S to every CA from the 3-D coordinates (L-Ala is S).
    from rdkit import Chem

    molecule = Chem.MolFromPDBFile(str(path), removeHs=False)
    Chem.AssignStereochemistryFrom3D(molecule)
    labels = [(a.GetPDBResidueInfo().GetName().strip(), a.GetProp("_CIPCode"))
              for a in molecule.GetAtoms() if a.HasProp("_CIPCode")]
    assert labels == [("CA", "S")] * 3
    assert nx.is_connected(distance_graph)


@pytest.mark.artifacts
def test_shipped_peptide_has_residues_bonds_dihedrals_and_amber_templates():
    check_peptide_pdb(PEPTIDE_PDB)
    xyz = read_structure(PEPTIDE_PDB.with_suffix(".xyz"))
    np.testing.assert_allclose(xyz.positions_angstrom, read_structure(PEPTIDE_PDB).positions_angstrom, atol=6e-4)


@pytest.mark.artifacts
def test_peptide_builder_names_atoms_like_the_shipped_structure(tmp_path):
    built = build_ac_ala3_nhme(relax=False, log=lambda m: None)  # RDKit only: fast
    path = write_pdb(built, tmp_path / "peptide.pdb")
    check_peptide_pdb(path)
    shipped = read_structure(PEPTIDE_PDB)
    built_atoms = [(a.residue.name, a.name) for a in read_structure(path).topology.atoms()]
    assert built_atoms == [(a.residue.name, a.name) for a in shipped.topology.atoms()]


@pytest.mark.slow
@pytest.mark.artifacts
def test_peptide_builder_with_xtb_relaxation_reproduces_the_shipped_structure(tmp_path):
    built = build_ac_ala3_nhme(log=lambda m: None)
    shipped = read_structure(PEPTIDE_PDB)
    np.testing.assert_allclose(built.positions_angstrom, shipped.positions_angstrom, atol=2e-3)


def reference_catcher():
    return read_structure(shared_file("data/buckycatcher_reference.xyz"))


def split_ball_and_catcher(graph):
    import networkx as nx

    components = sorted(nx.connected_components(graph), key=len)
    assert [len(c) for c in components] == [60, 88], "expected two molecules: C60 and C60H28"
    return sorted(components[0]), sorted(components[1])


def check_catcher(structure) -> None:
    import networkx as nx
    from networkx.algorithms.isomorphism import categorical_node_match

    reference = reference_catcher()
    assert Counter(structure.atomic_numbers.tolist()) == Counter(reference.atomic_numbers.tolist()) == {6: 120, 1: 28}
    built_graph = bond_graph_from_distances(structure.atomic_numbers, structure.positions_angstrom)
    reference_graph = bond_graph_from_distances(reference.atomic_numbers, reference.positions_angstrom)
    assert built_graph.number_of_edges() == reference_graph.number_of_edges() == 194
    assert nx.is_isomorphic(built_graph, reference_graph, node_match=categorical_node_match("element", 0))
    # The PDB's bonds are the molecular graph.
    if structure.topology is not None:
        assert set(map(frozenset, topology_graph(structure).edges)) == set(map(frozenset, built_graph.edges))

    # C60 sits in the cleft: its centre is close to the catcher's centre, as in the reference,
    # it touches neither bowl, and both bowls embrace it (their hubs face the ball's centre).
    def geometry(s, graph):
        ball, catcher = split_ball_and_catcher(graph)
        p = s.positions_angstrom
        offset = np.linalg.norm(p[ball].mean(axis=0) - p[catcher].mean(axis=0))
        shortest = np.min(np.linalg.norm(p[ball][:, None] - p[catcher][None], axis=-1))
        return ball, catcher, offset, shortest

    ball, catcher, offset, shortest = geometry(structure, built_graph)
    _, _, reference_offset, reference_shortest = geometry(reference, reference_graph)
    assert abs(offset - reference_offset) < 1.0, (offset, reference_offset)
    assert 2.5 < shortest < 3.6, f"shortest C60-catcher distance {shortest:.2f} Angstrom (no overlap, in contact)"
    assert reference_shortest > 2.8
    centre = structure.positions_angstrom[ball].mean(axis=0)
    catcher_set = set(catcher)
    bowls = corannulene_bowls(structure.atomic_numbers,
                              [(i, j) for i, j in built_graph.edges if i in catcher_set and j in catcher_set])
    assert len(bowls) == 2
    for bowl in bowls:
        hub = structure.positions_angstrom[bowl["hub"]].mean(axis=0)
        assert 6.0 < np.linalg.norm(hub - centre) < 7.5, "each corannulene hub stacks on the ball (~6.7 Angstrom)"


@pytest.mark.artifacts
def test_shipped_buckyball_catcher_matches_the_reference_graph_and_holds_the_ball():
    structure = read_structure(CATCHER_PDB)
    residues = [(r.name, len(list(r.atoms()))) for r in structure.topology.residues()]
    assert residues == [("CAT", 88), ("C60", 60)]
    check_catcher(structure)
    xyz = read_structure(CATCHER_PDB.with_suffix(".xyz"))
    np.testing.assert_allclose(xyz.positions_angstrom, structure.positions_angstrom, atol=6e-4)


@pytest.mark.artifacts
def test_reference_geometry_is_not_copied_into_the_project():
    reference = reference_catcher()
    shipped = read_structure(CATCHER_PDB).positions_angstrom
    distances = np.linalg.norm(shipped[:, None] - reference.positions_angstrom[None], axis=-1)
    assert np.sum(distances.min(axis=1) < 0.01) < 5, "shipped atoms coincide with the validation reference"
    for path in (REPOSITORY / "so3krates_openmm").rglob("*"):
        if path.is_file() and path.suffix in (".xyz", ".pdb", ".py", ".md"):
            text = path.read_text(errors="ignore")
            assert "CFLOW" not in text or path.suffix in (".py", ".md"), f"{path} looks copied from the reference"


@pytest.mark.slow
def test_buckyball_catcher_builder_relaxed_with_xtb(tmp_path):
    built = build_buckyball_catcher(log=lambda m: None)
    check_catcher(built)


@pytest.mark.parametrize("n_molecules", [1, 7, 64, 100])
def test_water_clusters_and_boxes_for_the_scaling_benchmark(tmp_path, n_molecules):
    from openmm import app
    from scipy.spatial.distance import cdist

    cluster = build_water(n_molecules)
    assert cluster.n_atoms == 3 * n_molecules and cluster.box_angstrom is None
    assert cluster.atomic_numbers.tolist() == [8, 1, 1] * n_molecules
    x = cluster.positions_angstrom.reshape(n_molecules, 3, 3)
    np.testing.assert_allclose(np.linalg.norm(x[:, 1:] - x[:, :1], axis=2), 0.9572, atol=1e-6)
    if n_molecules > 1:
        oxygens = x[:, 0]
        distances = cdist(oxygens, oxygens) + np.eye(n_molecules) * 1e9
        assert distances.min() == pytest.approx(WATER_VOLUME_ANGSTROM3 ** (1 / 3))  # grid spacing, 3.10 Å
        # a compact droplet: its radius of gyration is that of a sphere at liquid density (within 25 %)
        gyration = np.sqrt(((oxygens - oxygens.mean(0)) ** 2).sum(1).mean())
        sphere = np.sqrt(3 / 5) * (3 * n_molecules * WATER_VOLUME_ANGSTROM3 / (4 * np.pi)) ** (1 / 3)
        assert gyration < 1.25 * sphere
    path = write_pdb(cluster, tmp_path / "water.pdb")
    pdb = app.PDBFile(str(path))
    assert pdb.topology.getNumBonds() == 2 * n_molecules and pdb.topology.getPeriodicBoxVectors() is None
    assert read_structure(path).n_atoms == 3 * n_molecules
    if round(n_molecules ** (1 / 3)) ** 3 == n_molecules and n_molecules > 1:
        box = build_water(n_molecules, periodic=True)
        side = round(n_molecules ** (1 / 3)) * WATER_VOLUME_ANGSTROM3 ** (1 / 3)
        np.testing.assert_allclose(box.box_angstrom, np.eye(3) * side)
        assert np.prod(np.diag(box.box_angstrom)) / n_molecules == pytest.approx(WATER_VOLUME_ANGSTROM3)
        written = app.PDBFile(str(write_pdb(box, tmp_path / "box.pdb")))
        assert written.topology.getPeriodicBoxVectors() is not None
        np.testing.assert_allclose(read_structure(tmp_path / "box.pdb").box_angstrom, box.box_angstrom, atol=1e-3)
    elif n_molecules == 100:
        with pytest.raises(ValueError, match="cube number of molecules"):
            build_water(n_molecules, periodic=True)
