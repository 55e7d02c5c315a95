"""The docosahexaenoic-acid builder (the stability study's flexible molecule, MD22's DHA)."""

from __future__ import annotations

from pathlib import Path

import mdtraj
import numpy as np

from so3krates_openmm.data.builders import build_docosahexaenoic_acid, write_pdb


def test_dha_is_c22h32o2_all_cis_with_bonds(tmp_path: Path) -> None:
    structure = build_docosahexaenoic_acid(relax=False)
    counts = {z: int(np.sum(structure.atomic_numbers == z)) for z in (1, 6, 8)}
    assert counts == {1: 32, 6: 22, 8: 2} and structure.n_atoms == 56
    topology = mdtraj.Topology.from_openmm(structure.topology)
    assert topology.n_bonds == 55  # a tree: 56 atoms, no ring
    # The six C=C double bonds (C3=C4, C6=C7, ..., C18=C19 counted from the methyl end) are cis.
    carbons = {atom.name: atom.index for atom in topology.atoms if atom.element.symbol == "C"}
    quadruplets = [[carbons[f"C{k - 1}"], carbons[f"C{k}"], carbons[f"C{k + 1}"], carbons[f"C{k + 2}"]]
                   for k in (3, 6, 9, 12, 15, 18)]
    trajectory = mdtraj.Trajectory(structure.positions_angstrom[None] / 10.0, topology)
    double_bonds = mdtraj.compute_distances(trajectory, [[q[1], q[2]] for q in quadruplets])[0] * 10.0
    assert np.all(double_bonds < 1.36)  # C=C, not C-C
    dihedrals = np.degrees(mdtraj.compute_dihedrals(trajectory, quadruplets)[0])
    assert np.all(np.abs(dihedrals) < 30.0), dihedrals
    # Written as PDB, it reads back with the same bonds.
    pdb = write_pdb(structure, tmp_path / "dha.pdb")
    assert mdtraj.load(str(pdb)).topology.n_bonds == 55


def test_data_build_command_writes_dha(tmp_path: Path) -> None:
    from so3krates_openmm.cli.data import main

    assert main(["build", "dha", "--output-dir", str(tmp_path), "--no-relax", "--no-process-tuning"]) == 0
    assert mdtraj.load(str(tmp_path / "structure.pdb")).n_atoms == 56
