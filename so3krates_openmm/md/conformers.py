"""Starting conformers of a peptide with random backbone dihedrals: a torsion-space search for minima.

Molecular dynamics at high temperature samples the conformations in proportion to their Boltzmann weight,
so a minimum that is rarely visited (high in energy, or behind a high barrier) may never be seen. Starts
with the backbone dihedrals (phi and psi of every residue that has both) drawn uniformly from the circle,
each minimised with the model, reach every combination of Ramachandran basins with the same chance: an
independent check of how many minima the surface has (``bench/minima_large/run.py --torsion-starts``).
Bond lengths, bond angles and the peptide bonds (omega) stay those of the starting structure.
"""

from __future__ import annotations

import numpy as np

from so3krates_openmm.data.structures import Structure
from so3krates_openmm.md.stability import bond_graph, bond_graph_components, covalent_bonds

#: Atom pairs more than three bonds apart closer than this (Å) make a start a clash, which is drawn again.
CLASH_DISTANCE_ANGSTROM = 1.5


def backbone_torsions(structure: Structure) -> np.ndarray:
    """The atom quadruplets (k, 4) of phi (C-N-CA-C) and psi (N-CA-C-N) of the structure's residues, with mdtraj.

    Raises ``ValueError`` for a structure without a topology (not read from a PDB) or without backbone atom
    names (N, CA, C).
    """
    import mdtraj

    if structure.topology is None:
        raise ValueError(f"{structure.source}: no topology (residues, atom names); give the structure as a PDB "
                         "with backbone atom names N, CA, C")
    trajectory = mdtraj.Trajectory(structure.positions_angstrom[None] / 10.0,
                                   mdtraj.Topology.from_openmm(structure.topology))
    phi, _ = mdtraj.compute_phi(trajectory)
    psi, _ = mdtraj.compute_psi(trajectory)
    quadruplets = np.concatenate([phi.reshape(-1, 4), psi.reshape(-1, 4)]).astype(np.int64)
    if not len(quadruplets):
        raise ValueError(f"{structure.source}: no backbone dihedral (phi, psi) found; the structure needs a peptide "
                         "backbone with atom names N, CA, C")
    return quadruplets


def dihedral_deg(positions: np.ndarray, quadruplet: np.ndarray) -> float:
    """The dihedral angle (degrees, -180 to 180) of four atoms of ``positions`` (atoms, 3)."""
    p0, p1, p2, p3 = np.asarray(positions, dtype=np.float64)[np.asarray(quadruplet)]
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1 = b1 / np.linalg.norm(b1)
    v, w = b0 - np.dot(b0, b1) * b1, b2 - np.dot(b2, b1) * b1
    return float(np.degrees(np.arctan2(np.dot(np.cross(b1, v), w), np.dot(v, w))))


class TorsionDriver:
    """Sets dihedral angles of one molecule by rigid rotation of the atoms on one side of the central bond."""

    def __init__(self, structure: Structure, quadruplets: np.ndarray):
        self.n_atoms = structure.n_atoms
        self.bonds, _ = covalent_bonds(structure)
        self.quadruplets = np.asarray(quadruplets, dtype=np.int64).reshape(-1, 4)
        self.moving: list[np.ndarray] = []
        for a, b, c, d in self.quadruplets:
            kept = [bond for bond in self.bonds.tolist() if sorted(bond) != sorted((b, c))]
            side = next(component for component in bond_graph_components(self.n_atoms, np.array(kept))
                        if c in component)
            if b in side:
                raise ValueError(f"the bond {b}-{c} of dihedral {a}-{b}-{c}-{d} lies in a ring: it cannot be turned")
            self.moving.append(side)
        self.far_pairs = self._pairs_beyond_three_bonds()

    def _pairs_beyond_three_bonds(self) -> tuple[np.ndarray, np.ndarray]:
        from scipy.sparse.csgraph import shortest_path

        hops = shortest_path(bond_graph(self.n_atoms, self.bonds), directed=False, unweighted=True)
        return np.nonzero(np.triu(hops > 3, k=1))

    def set_dihedrals(self, positions_angstrom: np.ndarray, angles_deg: np.ndarray) -> np.ndarray:
        """A copy of ``positions_angstrom`` (atoms, 3) with dihedral k at ``angles_deg[k]``, in order."""
        positions = np.array(positions_angstrom, dtype=np.float64)
        angles_deg = np.asarray(angles_deg, dtype=np.float64).reshape(-1)
        if len(angles_deg) != len(self.quadruplets):
            raise ValueError(f"{len(angles_deg)} angles for {len(self.quadruplets)} dihedrals")
        for quadruplet, side, target in zip(self.quadruplets, self.moving, angles_deg, strict=True):
            origin = positions[quadruplet[1]]
            axis = positions[quadruplet[2]] - origin
            axis /= np.linalg.norm(axis)
            turn = np.radians(target - dihedral_deg(positions, quadruplet))
            # Rodrigues' rotation of the moving side about the central bond, by the angle still missing.
            relative = positions[side] - origin
            cos, sin = np.cos(turn), np.sin(turn)
            positions[side] = origin + (relative * cos + np.cross(axis, relative) * sin
                                        + np.outer(relative @ axis, axis) * (1.0 - cos))
        return positions

    def clashes(self, positions_angstrom: np.ndarray, distance_angstrom: float = CLASH_DISTANCE_ANGSTROM) -> bool:
        """Whether two atoms more than three bonds apart are closer than ``distance_angstrom``."""
        i, j = self.far_pairs
        return bool(np.any(np.linalg.norm(positions_angstrom[i] - positions_angstrom[j], axis=1) < distance_angstrom))


def random_torsion_conformers(structure: Structure, n: int, *, seed: int = 0,
                              clash_distance_angstrom: float = CLASH_DISTANCE_ANGSTROM,
                              max_draws: int | None = None) -> np.ndarray:
    """``n`` conformers (n, atoms, 3; Å) of ``structure`` with uniformly random backbone dihedrals and no clash.

    The same ``structure``, ``n`` and ``seed`` give the same conformers (the first ``n`` of a longer draw are
    those of a shorter one). Raises ``RuntimeError`` when fewer than ``n`` of ``max_draws`` (default ``50 n``)
    draws are free of clashes.
    """
    driver = TorsionDriver(structure, backbone_torsions(structure))
    rng = np.random.default_rng(seed)
    max_draws = 50 * n if max_draws is None else max_draws
    conformers = []
    for _ in range(max_draws):
        if len(conformers) == n:
            break
        angles = rng.uniform(-180.0, 180.0, size=len(driver.quadruplets))
        positions = driver.set_dihedrals(structure.positions_angstrom, angles)
        if not driver.clashes(positions, clash_distance_angstrom):
            conformers.append(positions)
    if len(conformers) < n:
        raise RuntimeError(f"only {len(conformers)} of {max_draws} random backbone conformers of {structure.source} "
                           f"are free of clashes (atoms closer than {clash_distance_angstrom} Å); ask for fewer or "
                           "lower the clash distance")
    return np.stack(conformers) if conformers else np.zeros((0, structure.n_atoms, 3))
