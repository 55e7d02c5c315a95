"""Minima at scale: RMSD helpers on crafted structures, the energy-window deduplication, the distance to training."""

from __future__ import annotations

import numpy as np
import pytest

from so3krates_openmm.data.structures import read_structure
from so3krates_openmm.md.minima import (
    MinimizedSnapshot,
    deduplicate,
    heavy_atom_indices,
    nearest_rmsd_angstrom,
    paired_rmsd_angstrom,
)


def rotation(angle: float, axis: int = 2) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    matrix = np.eye(3)
    i, j = [k for k in range(3) if k != axis]
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


def test_nearest_and_paired_rmsd_superpose_and_measure_the_heavy_atoms(peptide_pdb):
    structure = read_structure(peptide_pdb)
    x = structure.positions_angstrom
    heavy = heavy_atom_indices(structure)
    rng = np.random.default_rng(3)
    # Training frames: the structure rotated and shifted (distance 0), and the structure with every heavy atom
    # displaced by 0.3 Å along a random direction of its own (distance 0.3 Å up to the superposition's gain).
    shifted = x.copy()
    directions = rng.normal(size=(len(heavy), 3))
    shifted[heavy] += 0.3 * directions / np.linalg.norm(directions, axis=1, keepdims=True)
    training = np.stack([x @ rotation(1.1).T + 5.0, shifted @ rotation(-0.4, axis=0).T - 2.0])
    # Queries: the structure itself (nearest: frame 0 at 0 Å), the shifted one (frame 1 at 0 Å), and the structure
    # with its hydrogens scrambled (heavy atoms unchanged: 0 Å heavy-atom RMSD, not 0 over all atoms).
    scrambled = x.copy()
    hydrogens = np.flatnonzero(structure.atomic_numbers == 1)
    scrambled[hydrogens] += rng.normal(scale=0.8, size=(len(hydrogens), 3))
    queries = np.stack([x @ rotation(2.0, axis=1).T, shifted, scrambled])
    distance, nearest = nearest_rmsd_angstrom(queries, training, heavy)
    np.testing.assert_allclose(distance, [0.0, 0.0, 0.0], atol=5e-3)  # float32 RMSD: ~1e-3 Å near 0
    assert nearest.tolist() == [0, 1, 0]
    all_atoms, _ = nearest_rmsd_angstrom(queries[2:], training)
    assert all_atoms[0] > 0.3
    # Only the frame 0.3 Å away: the distance is at most 0.3 Å (the superposition can only lower it) and close to it.
    distance, _ = nearest_rmsd_angstrom(x[None], training[1:], heavy)
    assert 0.2 < distance[0] <= 0.3 + 1e-3
    pairs = paired_rmsd_angstrom(queries[:2], training[[1, 1]], heavy)
    assert pairs[1] == pytest.approx(0.0, abs=5e-3) and pairs[0] == pytest.approx(distance[0], abs=2e-3)
    with pytest.raises(ValueError, match="atoms"):
        nearest_rmsd_angstrom(queries[:, :10], training)
    with pytest.raises(ValueError, match="frames to pair"):
        paired_rmsd_angstrom(queries, training)


def test_deduplication_separates_close_minima_and_merges_their_copies(peptide_pdb):
    structure = read_structure(peptide_pdb)
    x = structure.positions_angstrom
    heavy = heavy_atom_indices(structure)
    rng = np.random.default_rng(7)
    # 40 distinct "minima" (heavy atoms moved by 0.4 Å each, bonds kept within the checker's limits), each seen
    # 1-6 times, rotated, with 0.01 Å noise and energies within 0.05 kJ/mol of the minimum's.
    snapshots, truth = [], []
    for minimum in range(40):
        geometry = x.copy()
        geometry[heavy] += rng.normal(scale=0.04, size=(len(heavy), 3))
        energy = rng.uniform(0.0, 30.0)
        for _ in range(rng.integers(1, 7)):
            copy = geometry + rng.normal(scale=0.01, size=geometry.shape)
            copy = copy @ rotation(rng.uniform(0, 6)).T
            snapshots.append(MinimizedSnapshot(len(snapshots), 10 * len(snapshots), energy + rng.uniform(0, 0.05),
                                               copy))
            truth.append(minimum)
    minima, rejected = deduplicate(snapshots, structure, rmsd_threshold_angstrom=0.05)
    assert not rejected and len(minima) == 40
    for minimum in minima:
        assert len({truth[k] for k in minimum.snapshots}) == 1
    assert sorted(k for m in minima for k in m.snapshots) == list(range(len(snapshots)))


def test_snapshots_of_a_tiny_so3krates_model_minimised_on_two_workers_and_resumed(tmp_path, peptide_pdb,
                                                                                   peptide_gentle_model):
    import json

    from so3krates_openmm.md.minima import ModelSystemFactory, minimize_snapshots
    from so3krates_openmm.tasks import JournalMismatch

    structure = read_structure(peptide_pdb)
    rng = np.random.default_rng(0)
    snapshots = np.stack([structure.positions_angstrom + rng.normal(scale=0.02, size=(structure.n_atoms, 3))
                          for _ in range(4)])
    factory = ModelSystemFactory(str(peptide_pdb), str(peptide_gentle_model))
    journal = tmp_path / "minimised.jsonl"
    first = minimize_snapshots(snapshots, [0, 10, 20, 30], factory, journal, workers=2, max_iterations=20)
    assert [s.index for s in first] == [0, 1, 2, 3] and [s.step for s in first] == [0, 10, 20, 30]
    assert all(s.problem is None and np.isfinite(s.energy_kj_mol) and s.seconds > 0 for s in first)
    # A kill tore the journal's last line: only that snapshot is minimised again, the others come from the journal.
    lines = journal.read_text().splitlines()
    marked = json.loads(lines[1])
    marked["result"]["seconds"] = 1234.0
    journal.write_text("\n".join([lines[0], json.dumps(marked), *lines[2:4]]) + "\n" + lines[4][:25])
    again = minimize_snapshots(snapshots, [0, 10, 20, 30], factory, journal, workers=2, max_iterations=20)
    assert sorted(s.seconds for s in again)[-1] == 1234.0
    for a, b in zip(first, again, strict=True):
        assert a.energy_kj_mol == pytest.approx(b.energy_kj_mol, abs=1e-6)
    with pytest.raises(JournalMismatch, match="max_iterations"):
        minimize_snapshots(snapshots, [0, 10, 20, 30], factory, journal, workers=2, max_iterations=5)
