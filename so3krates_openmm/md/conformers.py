"""Starting conformers of a peptide with random backbone dihedrals: a torsion-space search for minima.

Molecular dynamics at high temperature samples the conformations in proportion to their Boltzmann weight,
so a minimum that is rarely visited (high in energy, or behind a high barrier) may never be seen. Starts
with the backbone dihedrals (phi and psi of every residue that has both) drawn uniformly from the circle,
each minimised with the model, reach every combination of Ramachandran basins with the same chance: an
independent check of how many minima the surface has (``bench/minima_large/run.py --torsion-starts``).
Bond lengths and bond angles stay those of the starting structure; so do the peptide bonds (omega), unless
``cis_probability`` turns each of them to the other isomer (trans to cis) with that chance: the amide isomers,
which MD rarely reaches at the temperatures where it stays stable (GFN2-xTB's barrier is about 80 kJ/mol).
"""

from __future__ import annotations

import numpy as np

from so3krates_openmm.data.structures import Structure
from so3krates_openmm.md.stability import bond_graph, bond_graph_components, covalent_bonds

#: Atom pairs more than three bonds apart closer than this (Å) make a start a clash, which is drawn again.
CLASH_DISTANCE_ANGSTROM = 1.5
#: A peptide bond whose omega lies within this many degrees of 0 is cis (otherwise trans).
CIS_OMEGA_MAX_DEG = 90.0


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


def peptide_bond_torsions(structure: Structure) -> np.ndarray:
    """The atom quadruplets (k, 4) X-C-N-Y of the omega dihedrals of the structure's amide bonds, in the order of
    their carbonyl carbons: C bonded to a terminal oxygen and to N, X the other heavy atom on C, Y the first heavy
    atom on N besides C (CA in a residue's atom order). Unlike mdtraj's omega, this includes the caps' amides
    (ACE, NME). Raises ``ValueError`` when there is none.
    """
    numbers = np.asarray(structure.atomic_numbers)
    bonds, _ = covalent_bonds(structure)
    neighbours: list[list[int]] = [[] for _ in range(structure.n_atoms)]
    for a, b in bonds.tolist():
        neighbours[a].append(b)
        neighbours[b].append(a)
    quadruplets = []
    for carbon in np.flatnonzero(numbers == 6):
        bonded = neighbours[carbon]
        carbonyl = [k for k in bonded if numbers[k] == 8 and len(neighbours[k]) == 1]
        nitrogens = [k for k in bonded if numbers[k] == 7]
        others = [k for k in bonded if numbers[k] > 1 and k not in carbonyl and k not in nitrogens]
        if len(carbonyl) != 1 or len(nitrogens) != 1 or len(others) != 1:
            continue
        beyond = sorted(k for k in neighbours[nitrogens[0]] if numbers[k] > 1 and k != carbon)
        if beyond:
            quadruplets.append((others[0], int(carbon), nitrogens[0], beyond[0]))
    if not quadruplets:
        raise ValueError(f"{structure.source}: no amide bond (X-C(=O)-N-Y) found")
    return np.array(quadruplets, dtype=np.int64)


def cis_peptide_bonds(positions_angstrom: np.ndarray, quadruplets: np.ndarray) -> np.ndarray:
    """Whether each peptide bond (``quadruplets`` of :func:`peptide_bond_torsions`) of ``positions_angstrom``
    (atoms, 3) is cis (:data:`CIS_OMEGA_MAX_DEG`)."""
    return np.array([abs(dihedral_deg(positions_angstrom, q)) < CIS_OMEGA_MAX_DEG
                     for q in np.asarray(quadruplets).reshape(-1, 4)], dtype=bool)


def isomer_code(positions_angstrom: np.ndarray, quadruplets: np.ndarray) -> str:
    """The amide isomer of ``positions_angstrom`` (atoms, 3) as :func:`amide_isomer` takes it: ``t`` or ``c`` for
    each peptide bond of ``quadruplets`` (:func:`peptide_bond_torsions`), e.g. ``"tctt"``."""
    return "".join("c" if cis else "t" for cis in cis_peptide_bonds(positions_angstrom, quadruplets))


def amide_isomer(structure: Structure, isomer: str, *, seed: int = 0,
                 clash_distance_angstrom: float = CLASH_DISTANCE_ANGSTROM, max_draws: int = 200_000) -> np.ndarray:
    """The positions (atoms, 3; Å) of ``structure`` with its peptide bonds (:func:`peptide_bond_torsions`, in
    order) in the isomer ``isomer``: one letter per bond, ``t`` trans or ``c`` cis (``"cttt"``: the first bond
    cis). A start of MD in that isomer (which MD leaves only by crossing the amide barrier).

    A bond not yet in the asked isomer is turned by 180 degrees about its C-N axis. When that leaves a clash
    (atoms more than three bonds apart closer than ``clash_distance_angstrom``), the backbone dihedrals (phi,
    psi) are drawn uniformly at random (``seed``) until one draw of ``max_draws`` is free of clashes (all four
    bonds of Ac-Ala3-NHMe cis: about one draw in 10^4, half a minute). Raises
    ``ValueError`` for a string of other letters or length, ``RuntimeError`` when no draw is free.
    """
    omega = peptide_bond_torsions(structure)
    if len(isomer) != len(omega) or set(isomer) - set("ct"):
        raise ValueError(f"the isomer {isomer!r} needs one letter, t (trans) or c (cis), for each of the "
                         f"{len(omega)} peptide bonds of {structure.source}")
    backbone = backbone_torsions(structure)
    driver = TorsionDriver(structure, np.concatenate([omega, backbone]))
    angles = np.array([dihedral_deg(structure.positions_angstrom, q) for q in driver.quadruplets])
    turn = cis_peptide_bonds(structure.positions_angstrom, omega) != np.array([letter == "c" for letter in isomer])
    angles[:len(omega)] += np.where(turn, 180.0, 0.0)
    rng = np.random.default_rng(seed)
    for _ in range(max_draws):
        positions = driver.set_dihedrals(structure.positions_angstrom, angles)
        if not driver.clashes(positions, clash_distance_angstrom):
            return positions
        angles[len(omega):] = rng.uniform(-180.0, 180.0, size=len(backbone))
    raise RuntimeError(f"no backbone of {max_draws} random ones leaves {structure.source} with its peptide bonds "
                       f"as {isomer!r} free of clashes (atoms closer than {clash_distance_angstrom} Å)")


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
                              max_draws: int | None = None, cis_probability: float = 0.0) -> np.ndarray:
    """``n`` conformers (n, atoms, 3; Å) of ``structure`` with uniformly random backbone dihedrals and no clash;
    with ``cis_probability``, each peptide bond is also turned to its other isomer with that chance.

    The same ``structure``, ``n``, ``seed`` and ``cis_probability`` give the same conformers (the first ``n`` of a
    longer draw are those of a shorter one; ``cis_probability=0`` draws as before it existed). Raises
    ``RuntimeError`` when fewer than ``n`` of ``max_draws`` (default ``50 n``) draws are free of clashes.
    """
    if not 0.0 <= cis_probability <= 1.0:
        raise ValueError(f"cis_probability must lie between 0 and 1, got {cis_probability}")
    backbone = backbone_torsions(structure)
    omega = peptide_bond_torsions(structure) if cis_probability > 0.0 else np.zeros((0, 4), dtype=np.int64)
    driver = TorsionDriver(structure, np.concatenate([backbone, omega]))
    omega_deg = np.array([dihedral_deg(structure.positions_angstrom, q) for q in omega])
    rng = np.random.default_rng(seed)
    max_draws = 50 * n if max_draws is None else max_draws
    conformers = []
    for _ in range(max_draws):
        if len(conformers) == n:
            break
        angles = rng.uniform(-180.0, 180.0, size=len(backbone))
        if len(omega):
            flipped = rng.random(len(omega)) < cis_probability
            angles = np.concatenate([angles, omega_deg + np.where(flipped, 180.0, 0.0)])
        positions = driver.set_dihedrals(structure.positions_angstrom, angles)
        if not driver.clashes(positions, clash_distance_angstrom):
            conformers.append(positions)
    if len(conformers) < n:
        raise RuntimeError(f"only {len(conformers)} of {max_draws} random backbone conformers of {structure.source} "
                           f"are free of clashes (atoms closer than {clash_distance_angstrom} Å); ask for fewer or "
                           "lower the clash distance")
    return np.stack(conformers) if conformers else np.zeros((0, structure.n_atoms, 3))
