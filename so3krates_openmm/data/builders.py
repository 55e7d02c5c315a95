"""Offline builders of the paper's showcase molecules, relaxed with GFN2-xTB.

* :func:`build_ac_ala3_nhme`: Ac-Ala3-NHMe (C12H22N4O4, 42 atoms) from a
  SMILES with RDKit (ETKDG embedding with a fixed seed, MMFF pre-optimisation),
  with PDB residues ACE, ALA x3, NME, standard (Amber/PDB) atom names and
  bonds, so that mdtraj finds its phi/psi dihedrals and OpenMM's amber14
  templates match; then relaxed with GFN2-xTB.
* :func:`build_buckyball_catcher`: C60 inside the C60H28 "buckycatcher"
  (148 atoms). The catcher comes from a SMILES (RDKit, MMFF), the fullerene
  from ``ase.build.molecule("C60")``; the ball is placed where the axes of the
  two corannulene bowls meet, and the complex is relaxed with GFN2-xTB.

* :func:`build_docosahexaenoic_acid`: docosahexaenoic acid (DHA, C22H32O2,
  56 atoms, all-cis 22:6 n-3; an MD22 molecule), from a SMILES (RDKit, MMFF),
  one residue ``DHA`` with atoms named by element and index; then relaxed with GFN2-xTB.

All return a :class:`~so3krates_openmm.data.structures.Structure` whose
``topology`` is an OpenMM ``Topology`` with residues and bonds; write it with
:func:`write_pdb` (PDB with CONECT records) and
:func:`~so3krates_openmm.data.structures.write_xyz`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from so3krates_openmm.data.structures import Structure, write_xyz
from so3krates_openmm.units import ANGSTROM_PER_NM

AC_ALA3_NHME_SMILES = "CC(=O)N[C@@H](C)C(=O)N[C@@H](C)C(=O)N[C@@H](C)C(=O)NC"
"""Ac-Ala3-NHMe with L-alanines; the heavy-atom order is used to name the atoms."""

BUCKYCATCHER_SMILES = (
    "c1ccc2c(c1)-c1cc3c(cc1-c1ccccc1-c1cc4c(cc1-2)c1ccc2ccc5ccc6ccc4c4c6c5c2c14)"
    "c1ccc2ccc4ccc5ccc3c3c5c4c2c13"
)
"""The C60H28 catcher: tetraphenylene with a corannulene fused on two opposite benzo rings."""

DHA_SMILES = "CC/C=C\\C/C=C\\C/C=C\\C/C=C\\C/C=C\\C/C=C\\CCC(=O)O"
"""Docosahexaenoic acid, (4Z,7Z,10Z,13Z,16Z,19Z)-docosa-4,7,10,13,16,19-hexaenoic acid (C22H32O2)."""

# (residue index, residue name, atom name) of each heavy atom of AC_ALA3_NHME_SMILES, in SMILES order.
_PEPTIDE_HEAVY = [
    (0, "ACE", "CH3"), (0, "ACE", "C"), (0, "ACE", "O"),
    (1, "ALA", "N"), (1, "ALA", "CA"), (1, "ALA", "CB"), (1, "ALA", "C"), (1, "ALA", "O"),
    (2, "ALA", "N"), (2, "ALA", "CA"), (2, "ALA", "CB"), (2, "ALA", "C"), (2, "ALA", "O"),
    (3, "ALA", "N"), (3, "ALA", "CA"), (3, "ALA", "CB"), (3, "ALA", "C"), (3, "ALA", "O"),
    (4, "NME", "N"), (4, "NME", "C"),
]
_PEPTIDE_HEAVY_ELEMENTS = "CCONCCCONCCCONCCCONC"
# Names of the hydrogens bound to each named heavy atom.
_HYDROGEN_NAMES = {
    ("ACE", "CH3"): ["H1", "H2", "H3"],
    ("ALA", "N"): ["H"],
    ("ALA", "CA"): ["HA"],
    ("ALA", "CB"): ["HB1", "HB2", "HB3"],
    ("NME", "N"): ["H"],
    ("NME", "C"): ["H1", "H2", "H3"],
}
# Atom order inside each residue in the written PDB.
_RESIDUE_ORDER = {
    "ACE": ["H1", "CH3", "H2", "H3", "C", "O"],
    "ALA": ["N", "H", "CA", "HA", "CB", "HB1", "HB2", "HB3", "C", "O"],
    "NME": ["N", "H", "C", "H1", "H2", "H3"],
}


def _log_default(message: str) -> None:
    print(message, flush=True)


def relax_with_xtb(
    numbers: np.ndarray,
    positions: np.ndarray,
    fmax: float = 0.01,
    max_steps: int = 2000,
    method: str = "GFN2-xTB",
    optimizer: str = "BFGS",
    log: Callable[[str], None] = _log_default,
    label: str = "",
) -> tuple[np.ndarray, float, int]:
    """Minimise a molecule with GFN2-xTB until the largest force is below ``fmax`` eV/Å.

    Returns:
        (relaxed positions in Å, final energy in eV, number of optimiser steps).

    Raises:
        RuntimeError: not converged within ``max_steps``.
    """
    from ase import Atoms
    from ase.optimize import BFGS, FIRE, LBFGS
    from tblite.ase import TBLite

    atoms = Atoms(numbers=numbers, positions=positions)
    atoms.calc = TBLite(method=method, verbosity=0)
    optimiser_class = {"BFGS": BFGS, "LBFGS": LBFGS, "FIRE": FIRE}[optimizer]
    optimiser = optimiser_class(atoms, logfile=None)
    started = time.perf_counter()
    last_report = started
    steps = 0
    for converged in optimiser.irun(fmax=fmax, steps=max_steps):
        steps = optimiser.nsteps
        now = time.perf_counter()
        if now - last_report > 30:
            force = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
            log(f"  {label} {optimizer} step {steps}: E = {atoms.get_potential_energy():.6f} eV, "
                f"max |F| = {force:.4f} eV/Angstrom ({now - started:.0f} s)")
            last_report = now
        if converged:
            break
    force = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
    if force > fmax:
        raise RuntimeError(f"{label}: GFN2-xTB relaxation did not converge in {max_steps} steps "
                           f"(max |F| = {force:.4f} eV/Angstrom > {fmax})")
    log(f"  {label} relaxed with {method}/{optimizer} in {steps} steps, {time.perf_counter() - started:.0f} s: "
        f"E = {atoms.get_potential_energy():.6f} eV, max |F| = {force:.4f} eV/Angstrom")
    return atoms.get_positions(), float(atoms.get_potential_energy()), steps


def _embed(smiles: str, seed: int, n_conformers: int = 1):
    """RDKit molecule with hydrogens, ETKDGv3-embedded (fixed seed) and MMFF-optimised."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    molecule = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    params.numThreads = 1
    conformer_ids = list(AllChem.EmbedMultipleConfs(molecule, numConfs=n_conformers, params=params))
    if not conformer_ids:
        raise RuntimeError(f"RDKit could not embed {smiles!r} with seed {seed}")
    AllChem.MMFFOptimizeMoleculeConfs(molecule, numThreads=1, maxIters=2000)
    return molecule, conformer_ids


def _topology(residues: list[tuple[str, list[tuple[str, int]]]], bonds: list[tuple[int, int]]):
    """OpenMM Topology from [(residue name, [(atom name, atomic number), ...]), ...] and 0-based bonds."""
    from openmm import app

    topology = app.Topology()
    chain = topology.addChain("A")
    atoms = []
    for residue_name, residue_atoms in residues:
        residue = topology.addResidue(residue_name, chain)
        for atom_name, z in residue_atoms:
            atoms.append(topology.addAtom(atom_name, app.Element.getByAtomicNumber(int(z)), residue))
    for i, j in bonds:
        topology.addBond(atoms[i], atoms[j])
    return topology


def write_pdb(structure: Structure, path: str | Path) -> Path:
    """Write a structure with a topology as PDB (OpenMM writer; CONECT records for non-standard residues)."""
    from openmm import app, unit

    if structure.topology is None:
        raise ValueError("write_pdb needs a Structure with an OpenMM topology (residues and bonds)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        app.PDBFile.writeFile(structure.topology, structure.positions_angstrom / ANGSTROM_PER_NM * unit.nanometer,
                              handle, keepIds=False)
    return path


#: A water molecule (Å): O at the origin, O-H 0.9572 Å, H-O-H 104.52 degrees (TIP3P geometry).
WATER_ANGSTROM = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2399872, 0.9266272, 0.0]])
#: Volume per molecule of liquid water at 300 K, Å³ (0.0334 molecules per Å³).
WATER_VOLUME_ANGSTROM3 = 29.9


def build_water(n_molecules: int, *, periodic: bool = False, seed: int = 0) -> Structure:
    """``n_molecules`` randomly oriented waters on a cubic grid at liquid density, a system for scaling studies.

    Periodic (``periodic=True``): ``n_molecules`` must be a cube s³; the box is the grid's cube
    (s x 29.9^(1/3) Å wide). Otherwise a cluster: the ``n_molecules`` sites of the smallest cube grid
    that holds them closest to its centre (a roughly spherical droplet), no box. Residues ``HOH``
    (atoms O, H1, H2) with their O-H bonds, so the PDB works with OpenMM, openmm-ml and mdtraj.
    """
    n_molecules = int(n_molecules)
    if n_molecules < 1:
        raise ValueError(f"n_molecules must be at least 1, got {n_molecules}")
    per_side = round(n_molecules ** (1.0 / 3.0))
    if periodic and per_side**3 != n_molecules:
        raise ValueError(f"a periodic water box needs a cube number of molecules (e.g. {per_side**3} or "
                         f"{(per_side + 1) ** 3}), got {n_molecules}")
    if per_side**3 < n_molecules:
        per_side += 1
    spacing = WATER_VOLUME_ANGSTROM3 ** (1.0 / 3.0)
    generator = np.random.default_rng(seed)
    sites = np.array(list(np.ndindex(per_side, per_side, per_side)), dtype=np.float64)
    rotations = [np.linalg.qr(generator.normal(size=(3, 3)))[0] for _ in range(len(sites))]
    order = np.argsort(np.linalg.norm(sites - (per_side - 1) / 2.0, axis=1), kind="stable")
    chosen = np.arange(n_molecules) if periodic else np.sort(order[:n_molecules])
    positions = np.concatenate([WATER_ANGSTROM @ rotations[k].T + (sites[k] + 0.5) * spacing for k in chosen])
    residues = [("HOH", [("O", 8), ("H1", 1), ("H2", 1)])] * n_molecules
    bonds = [bond for k in range(n_molecules) for bond in ((3 * k, 3 * k + 1), (3 * k, 3 * k + 2))]
    topology = _topology(residues, bonds)
    box = None
    if periodic:
        from openmm import unit

        box = np.eye(3) * per_side * spacing
        topology.setPeriodicBoxVectors(box / ANGSTROM_PER_NM * unit.nanometer)
    return Structure(np.tile([8, 1, 1], n_molecules), positions, box_angstrom=box, topology=topology,
                     source=f"{n_molecules} waters" + (" (periodic)" if periodic else ""))


def build_ac_ala3_nhme(
    seed: int = 7, relax: bool = True, fmax: float = 0.01, log: Callable[[str], None] = _log_default
) -> Structure:
    """Ac-Ala3-NHMe (42 atoms) with residues ACE, ALA x3, NME and bonds, relaxed with GFN2-xTB.

    Args:
        seed: RDKit ETKDG random seed (the conformer depends on it).
        relax: relax with GFN2-xTB (BFGS until max |F| < ``fmax`` eV/Å); else
            return the MMFF geometry.
        fmax: force threshold in eV/Å.

    Returns:
        A Structure in PDB atom order (residue by residue) with an OpenMM topology.
    """
    molecule, conformer_ids = _embed(AC_ALA3_NHME_SMILES, seed)
    heavy = [atom for atom in molecule.GetAtoms() if atom.GetAtomicNum() > 1]
    elements = "".join(atom.GetSymbol() for atom in heavy)
    if elements != _PEPTIDE_HEAVY_ELEMENTS:
        raise RuntimeError(f"unexpected heavy-atom order {elements} from RDKit; expected {_PEPTIDE_HEAVY_ELEMENTS}")

    label_of: dict[int, tuple[int, str, str]] = {}
    for atom, (residue_index, residue_name, atom_name) in zip(heavy, _PEPTIDE_HEAVY, strict=True):
        label_of[atom.GetIdx()] = (residue_index, residue_name, atom_name)
        hydrogens = sorted(n.GetIdx() for n in atom.GetNeighbors() if n.GetAtomicNum() == 1)
        names = _HYDROGEN_NAMES.get((residue_name, atom_name), [])
        if len(hydrogens) != len(names):
            raise RuntimeError(f"{residue_name}{residue_index} {atom_name} has {len(hydrogens)} hydrogens, "
                               f"expected {len(names)}")
        for h, name in zip(hydrogens, names, strict=True):
            label_of[h] = (residue_index, residue_name, name)

    residue_names = ["ACE", "ALA", "ALA", "ALA", "NME"]
    order: list[int] = []
    residues = []
    for residue_index, residue_name in enumerate(residue_names):
        by_name = {name: idx for idx, (r, _, name) in label_of.items() if r == residue_index}
        names = _RESIDUE_ORDER[residue_name]
        order.extend(by_name[name] for name in names)
        residues.append((residue_name, [(name, molecule.GetAtomWithIdx(by_name[name]).GetAtomicNum())
                                        for name in names]))
    if sorted(order) != list(range(molecule.GetNumAtoms())):
        raise RuntimeError("atom naming of Ac-Ala3-NHMe did not cover every atom exactly once")
    new_index = {old: new for new, old in enumerate(order)}
    bonds = [(new_index[b.GetBeginAtomIdx()], new_index[b.GetEndAtomIdx()]) for b in molecule.GetBonds()]

    numbers = np.array([molecule.GetAtomWithIdx(i).GetAtomicNum() for i in order], dtype=np.int64)
    positions = molecule.GetConformer(conformer_ids[0]).GetPositions()[order]
    if relax:
        log("relaxing Ac-Ala3-NHMe with GFN2-xTB")
        positions, _, _ = relax_with_xtb(numbers, positions, fmax=fmax, log=log, label="Ac-Ala3-NHMe")
    return Structure(numbers, positions, topology=_topology(residues, bonds),
                     source="build_ac_ala3_nhme", comment=f"Ac-Ala3-NHMe, RDKit seed {seed}, GFN2-xTB relaxed={relax}")


def build_docosahexaenoic_acid(
    seed: int = 7, relax: bool = True, fmax: float = 0.01, log: Callable[[str], None] = _log_default
) -> Structure:
    """Docosahexaenoic acid (56 atoms, all six double bonds cis), relaxed with GFN2-xTB.

    One residue ``DHA``; atoms named by element and running index in SMILES order
    (C1 the methyl end ... C22 the carboxyl carbon, then O1, O2 and the hydrogens
    H1...H32, each after the heavy atoms), bonds from RDKit.

    Args:
        seed: RDKit ETKDG random seed (the conformer of the flexible chain depends on it).
        relax: relax with GFN2-xTB (BFGS until max |F| < ``fmax`` eV/Å); else the MMFF geometry.
        fmax: force threshold in eV/Å.
    """
    from rdkit import Chem

    molecule, conformer_ids = _embed(DHA_SMILES, seed)
    if Chem.rdMolDescriptors.CalcMolFormula(molecule) != "C22H32O2":
        raise RuntimeError(f"RDKit made {Chem.rdMolDescriptors.CalcMolFormula(molecule)} from the DHA SMILES")
    numbers = np.array([atom.GetAtomicNum() for atom in molecule.GetAtoms()], dtype=np.int64)
    counts: dict[str, int] = {}
    names = []
    for atom in molecule.GetAtoms():
        counts[atom.GetSymbol()] = counts.get(atom.GetSymbol(), 0) + 1
        names.append((f"{atom.GetSymbol()}{counts[atom.GetSymbol()]}", atom.GetAtomicNum()))
    bonds = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in molecule.GetBonds()]
    positions = molecule.GetConformer(conformer_ids[0]).GetPositions()
    if relax:
        log("relaxing docosahexaenoic acid with GFN2-xTB")
        positions, _, _ = relax_with_xtb(numbers, positions, fmax=fmax, log=log, label="DHA")
    return Structure(numbers, positions, topology=_topology([("DHA", names)], bonds),
                     source="build_docosahexaenoic_acid",
                     comment=f"DHA C22H32O2, RDKit seed {seed}, GFN2-xTB relaxed={relax}")


def corannulene_bowls(numbers: np.ndarray, bonds: list[tuple[int, int]]) -> list[dict[str, np.ndarray]]:
    """The corannulene units of a molecular graph: hub (5-ring), spoke and rim carbon indices.

    A hub is a 5-membered carbon ring; its spokes are the carbons bonded to
    it outside the ring and its rim the carbons bonded to the spokes.
    """
    import networkx as nx

    graph = nx.Graph(bonds)
    bowls = []
    five_rings = [c for c in nx.simple_cycles(graph, length_bound=5) if len(c) == 5]
    for ring in five_rings:
        ring_set = set(ring)
        if any(numbers[i] != 6 for i in ring):
            continue
        spokes = sorted({n for i in ring for n in graph[i] if n not in ring_set and numbers[n] == 6})
        rim = sorted({n for s in spokes for n in graph[s] if n not in ring_set and n not in spokes and numbers[n] == 6})
        bowls.append({"hub": np.array(sorted(ring)), "spokes": np.array(spokes), "rim": np.array(rim)})
    return bowls


def _bowl_axis(positions: np.ndarray, bowl: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(hub centroid, unit vector from the hub towards the bowl's opening, i.e. into its concave side)."""
    hub = positions[bowl["hub"]].mean(axis=0)
    rim = positions[bowl["rim"]].mean(axis=0)
    # Normal of the hub ring, oriented towards the rim (the concave side).
    centred = positions[bowl["hub"]] - hub
    normal = np.linalg.svd(centred)[2][-1]
    if np.dot(rim - hub, normal) < 0:
        normal = -normal
    return hub, normal


def _c60_bonds(positions: np.ndarray) -> list[tuple[int, int]]:
    from scipy.spatial.distance import pdist, squareform

    distances = squareform(pdist(positions))
    bonds = [(i, j) for i in range(len(positions)) for j in range(i + 1, len(positions)) if distances[i, j] < 1.6]
    if len(bonds) != 90:
        raise RuntimeError(f"C60 should have 90 bonds, found {len(bonds)}")
    return bonds


def place_c60_in_catcher(
    catcher_numbers: np.ndarray,
    catcher_positions: np.ndarray,
    catcher_bonds: list[tuple[int, int]],
    c60_positions: np.ndarray,
) -> tuple[np.ndarray, float]:
    """Put C60 (positions in Å) between the two corannulene bowls of the catcher.

    The ball starts at the midpoint of the two bowls' centroids and is moved
    on a 0.25 Å grid (up to 2 Å away) to the point with the largest shortest
    distance to the catcher's atoms.

    Returns:
        (C60 positions in Å, shortest C60-catcher distance in Å).

    Raises:
        RuntimeError: the catcher does not have two bowls whose concave sides face the ball.
    """
    bowls = corannulene_bowls(catcher_numbers, catcher_bonds)
    if len(bowls) != 2:
        raise RuntimeError(f"the catcher should have 2 corannulene bowls, found {len(bowls)}")
    centroids = [catcher_positions[np.concatenate([b["hub"], b["spokes"], b["rim"]])].mean(axis=0) for b in bowls]
    start = 0.5 * (centroids[0] + centroids[1])
    ball = c60_positions - c60_positions.mean(axis=0)

    def shortest(centre: np.ndarray) -> float:
        return float(np.min(np.linalg.norm((ball + centre)[:, None, :] - catcher_positions[None], axis=-1)))

    grid = np.arange(-2.0, 2.0001, 0.25)
    candidates = start + np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), axis=-1).reshape(-1, 3)
    scores = [shortest(c) for c in candidates]
    centre = candidates[int(np.argmax(scores))]
    for bowl in bowls:
        hub, normal = _bowl_axis(catcher_positions, bowl)
        if np.dot(centre - hub, normal) <= 0:
            raise RuntimeError("a corannulene bowl of this catcher conformer turns its convex side to the ball")
    return ball + centre, float(max(scores))


def build_buckyball_catcher(
    seed: int = 7,
    relax: bool = True,
    fmax: float = 0.01,
    n_conformers: int = 10,
    log: Callable[[str], None] = _log_default,
) -> Structure:
    """C60@C60H28 (148 atoms: catcher first, then the fullerene), relaxed with GFN2-xTB.

    The catcher conformers are embedded with RDKit (ETKDGv3, ``seed``) and
    MMFF-optimised; the conformer whose bowls face each other and leave the
    most room for the ball is used, C60 is put where the bowl axes meet, and
    the complex is relaxed with GFN2-xTB (BFGS to ``fmax`` eV/Å).

    Returns:
        A Structure with an OpenMM topology: residue ``CAT`` (88 atoms, names
        C1.., H1..) and residue ``C60`` (60 atoms), bonds from the molecular graphs.
    """
    from ase.build import molecule as ase_molecule

    catcher, conformer_ids = _embed(BUCKYCATCHER_SMILES, seed, n_conformers=n_conformers)
    catcher_numbers = np.array([a.GetAtomicNum() for a in catcher.GetAtoms()], dtype=np.int64)
    catcher_bonds = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in catcher.GetBonds()]
    c60 = ase_molecule("C60")
    c60_positions = c60.get_positions()
    radius = float(np.linalg.norm(c60_positions - c60_positions.mean(axis=0), axis=1).mean())

    best = None
    for conformer_id in conformer_ids:
        positions = catcher.GetConformer(conformer_id).GetPositions()
        try:
            placed, shortest = place_c60_in_catcher(catcher_numbers, positions, catcher_bonds, c60_positions)
        except RuntimeError:
            continue
        if best is None or shortest > best[2]:
            best = (positions, placed, shortest, conformer_id)
    if best is None:
        raise RuntimeError(f"no catcher conformer (seed {seed}, {n_conformers} conformers) has its bowls "
                           "facing each other; try another seed")
    catcher_positions, placed, shortest, conformer_id = best
    log(f"C60 (radius {radius:.2f} Angstrom) placed in catcher conformer {conformer_id}: shortest "
        f"C60-catcher distance {shortest:.2f} Angstrom before relaxation")

    numbers = np.concatenate([catcher_numbers, c60.numbers.astype(np.int64)])
    positions = np.concatenate([catcher_positions, placed])
    if relax:
        log("relaxing C60@catcher (148 atoms) with GFN2-xTB; a few minutes")
        positions, _, _ = relax_with_xtb(numbers, positions, fmax=fmax, log=log, label="buckyball catcher")

    catcher_names, counters = [], {}
    for z in catcher_numbers:
        symbol = "C" if z == 6 else "H"
        counters[symbol] = counters.get(symbol, 0) + 1
        catcher_names.append((f"{symbol}{counters[symbol]}", int(z)))
    ball_names = [(f"C{i + 1}", 6) for i in range(60)]
    offset = len(catcher_numbers)
    bonds = catcher_bonds + [(i + offset, j + offset) for i, j in _c60_bonds(positions[offset:])]
    topology = _topology([("CAT", catcher_names), ("C60", ball_names)], bonds)
    return Structure(numbers, positions, topology=topology, source="build_buckyball_catcher",
                     comment=f"C60@C60H28 buckyball catcher, RDKit seed {seed}, GFN2-xTB relaxed={relax}")


BUILDERS = {"ac_ala3_nhme": build_ac_ala3_nhme, "buckyball_catcher": build_buckyball_catcher,
            "dha": build_docosahexaenoic_acid}


def build_and_write(
    name: str, output_dir: str | Path, seed: int = 7, relax: bool = True, fmax: float = 0.01,
    log: Callable[[str], None] = _log_default,
) -> tuple[Path, Path]:
    """Build ``name`` (a key of :data:`BUILDERS`) and write ``structure.pdb`` and ``structure.xyz`` in
    ``output_dir``."""
    if name not in BUILDERS:
        raise ValueError(f"unknown molecule {name!r}; choose one of {sorted(BUILDERS)}")
    started = time.perf_counter()
    structure = BUILDERS[name](seed=seed, relax=relax, fmax=fmax, log=log)
    output_dir = Path(output_dir)
    pdb = write_pdb(structure, output_dir / "structure.pdb")
    xyz = output_dir / "structure.xyz"
    write_xyz(xyz, structure, comment=structure.comment)
    log(f"wrote {pdb} and {xyz} ({structure.n_atoms} atoms) in {time.perf_counter() - started:.0f} s")
    return pdb, xyz
