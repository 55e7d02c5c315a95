"""Reading and writing single molecular structures (PDB, XYZ and anything ASE reads).

A :class:`Structure` is what the export, the OpenMM glue and the MD protocols
share: atomic numbers, positions in Å, an optional periodic box in Å and, for
PDB input, the OpenMM ``Topology`` with residues and bonds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from so3krates_openmm.elements import atomic_number, symbol
from so3krates_openmm.units import ANGSTROM_PER_NM


@dataclass
class Structure:
    """One molecular structure.

    Attributes:
        atomic_numbers: (N,) int64.
        positions_angstrom: (N, 3) float64, Å.
        box_angstrom: (3, 3) float64 box vectors as rows in Å, or ``None`` if not periodic.
        topology: ``openmm.app.Topology`` when read from a PDB (residues, bonds), else ``None``.
        source: the file the structure was read from, for messages.
    """

    atomic_numbers: np.ndarray
    positions_angstrom: np.ndarray
    box_angstrom: np.ndarray | None = None
    topology: object = None
    source: str = "<memory>"
    comment: str = field(default="")

    def __post_init__(self) -> None:
        self.atomic_numbers = np.asarray(self.atomic_numbers, dtype=np.int64).reshape(-1)
        self.positions_angstrom = np.asarray(self.positions_angstrom, dtype=np.float64)
        n_atoms = len(self.atomic_numbers)
        if self.positions_angstrom.shape != (n_atoms, 3):
            raise ValueError(
                f"{self.source}: positions have shape {self.positions_angstrom.shape}, "
                f"expected ({n_atoms}, 3) for {n_atoms} atoms"
            )
        if not np.all(np.isfinite(self.positions_angstrom)):
            bad = np.flatnonzero(~np.all(np.isfinite(self.positions_angstrom), axis=1))
            raise ValueError(f"{self.source}: positions of atoms {bad[:10].tolist()} are NaN or infinite")
        for z in self.atomic_numbers:
            atomic_number(int(z))
        if self.box_angstrom is not None:
            self.box_angstrom = np.asarray(self.box_angstrom, dtype=np.float64).reshape(3, 3)

    @property
    def n_atoms(self) -> int:
        return len(self.atomic_numbers)

    @property
    def symbols(self) -> list[str]:
        return [symbol(int(z)) for z in self.atomic_numbers]

    def to_ase(self):
        """This structure as an ``ase.Atoms`` object."""
        from ase import Atoms

        atoms = Atoms(numbers=self.atomic_numbers, positions=self.positions_angstrom)
        if self.box_angstrom is not None:
            atoms.set_cell(self.box_angstrom)
            atoms.set_pbc(True)
        return atoms

    def openmm_topology(self):
        """The PDB topology if there is one, else a one-residue topology without bonds."""
        if self.topology is not None:
            return self.topology
        from openmm import app, unit

        topology = app.Topology()
        chain = topology.addChain()
        residue = topology.addResidue("MOL", chain)
        for index, z in enumerate(self.atomic_numbers):
            element = app.Element.getByAtomicNumber(int(z))
            topology.addAtom(f"{element.symbol}{index + 1}", element, residue)
        if self.box_angstrom is not None:
            topology.setPeriodicBoxVectors(self.box_angstrom / ANGSTROM_PER_NM * unit.nanometer)
        return topology


def read_structure(path: str | Path, index: int = 0) -> Structure:
    """Read one structure from a PDB, XYZ/extended-XYZ or any ASE-readable file.

    PDB files are read with OpenMM's ``PDBFile`` so that residues and bonds are
    kept (CONECT records and standard residue templates). Other formats go
    through ASE; ``index`` selects a frame of a multi-frame file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"structure file {str(path)!r} does not exist")
    if path.suffix.lower() == ".pdb":
        return _read_pdb(path)
    from ase.io import read

    try:
        atoms = read(str(path), index=index)
    except Exception as error:  # ASE raises many types for unreadable input
        raise ValueError(f"could not read a structure from {str(path)!r}: {error}") from error
    box = np.asarray(atoms.cell.array) if atoms.pbc.all() else None
    return Structure(
        atomic_numbers=atoms.numbers,
        positions_angstrom=atoms.positions,
        box_angstrom=box,
        source=str(path),
    )


def _read_pdb(path: Path) -> Structure:
    from openmm import app, unit

    try:
        pdb = app.PDBFile(str(path))
    except Exception as error:
        raise ValueError(f"could not read PDB file {str(path)!r}: {error}") from error
    numbers = []
    for atom in pdb.topology.atoms():
        if atom.element is None:
            raise ValueError(
                f"{path}: atom {atom.name!r} of residue {atom.residue.name} has no element; "
                "add element symbols in columns 77-78"
            )
        numbers.append(atom.element.atomic_number)
    positions = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.angstrom))
    vectors = pdb.topology.getPeriodicBoxVectors()
    box = None if vectors is None else np.asarray(vectors.value_in_unit(unit.angstrom))
    return Structure(numbers, positions, box, topology=pdb.topology, source=str(path))


def write_xyz(path: str | Path, structure: Structure, comment: str = "") -> None:
    """Write a structure as a plain XYZ file (Å)."""
    lines = [str(structure.n_atoms), comment or structure.comment]
    for sym, (x, y, z) in zip(structure.symbols, structure.positions_angstrom, strict=True):
        lines.append(f"{sym:2s} {x:16.10f} {y:16.10f} {z:16.10f}")
    Path(path).write_text("\n".join(lines) + "\n")
