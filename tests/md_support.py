"""Builders for the MD tests (their session fixtures are in ``conftest.py``).

- Ac-Ala3-NHMe built from its SMILES with RDKit, named ACE/ALA/NME by walking the
  backbone, hydrogens added by OpenMM's Modeller (so the PDB has residues and bonds);
- a classical amber14 System for it, serialised to XML (a stable stand-in for a
  trained model where the test needs physical dynamics);
- small SO3krates models with random weights, exported to TorchScript;
- a C60 + benzene "catcher" structure without topology (bonds from covalent radii).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openmm as mm
import torch
from openmm import app, unit

from so3krates_openmm import SO3krates, SO3kratesConfig
from so3krates_openmm.data.structures import Structure, write_xyz
from so3krates_openmm.export import export_checkpoint
from so3krates_openmm.model.checkpoint import save_checkpoint

REPOSITORY = Path(__file__).resolve().parents[1]
PROTOCOLS = REPOSITORY / "md_protocols"
PRETRAINED = REPOSITORY / "so3krates_openmm" / "pretrained"

PEPTIDE_SMILES = "CC(=O)N[C@@H](C)C(=O)N[C@@H](C)C(=O)N[C@@H](C)C(=O)NC"
#: Heavy atoms in SMILES order, as (residue, atom names).
PEPTIDE_RESIDUES = [("ACE", ["CH3", "C", "O"])] + [("ALA", ["N", "CA", "CB", "C", "O"])] * 3 + [("NME", ["N", "C"])]


def write_peptide_pdb(path: Path, seed: int = 7) -> Path:
    """Ac-Ala3-NHMe (42 atoms) minimised with amber14, as a PDB with residues and bonds."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    molecule = Chem.AddHs(Chem.MolFromSmiles(PEPTIDE_SMILES))
    AllChem.EmbedMolecule(molecule, randomSeed=seed)
    AllChem.MMFFOptimizeMolecule(molecule)
    coordinates = molecule.GetConformer().GetPositions()
    topology = app.Topology()
    chain = topology.addChain()
    positions, k = [], 0
    for residue_name, atom_names in PEPTIDE_RESIDUES:
        residue = topology.addResidue(residue_name, chain)
        for name in atom_names:
            element = app.Element.getBySymbol(molecule.GetAtomWithIdx(k).GetSymbol())
            topology.addAtom(name, element, residue)
            positions.append(coordinates[k])
            k += 1
    topology.createStandardBonds()
    modeller = app.Modeller(topology, np.array(positions) * 0.1 * unit.nanometer)
    forcefield = app.ForceField("amber14-all.xml")
    modeller.addHydrogens(forcefield)
    system = forcefield.createSystem(modeller.topology)
    simulation = app.Simulation(
        modeller.topology, system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference")
    )
    simulation.context.setPositions(modeller.positions)
    simulation.minimizeEnergy()
    with open(path, "w") as handle:
        app.PDBFile.writeFile(modeller.topology, simulation.context.getState(getPositions=True).getPositions(), handle)
    return path


def write_amber_system(structure_pdb: Path, path: Path) -> Path:
    """amber14 (vacuum, no cutoff) System for a PDB, serialised to XML."""
    pdb = app.PDBFile(str(structure_pdb))
    system = app.ForceField("amber14-all.xml").createSystem(pdb.topology, nonbondedMethod=app.NoCutoff)
    path.write_text(mm.XmlSerializer.serialize(system))
    return path


def export_random_model(structure: Structure, directory: Path, *, energy_unit: str = "eV", seed: int = 0) -> Path:
    """A small SO3krates (F=24, one layer) with random weights, exported for ``structure``."""
    torch.manual_seed(seed)
    config = SO3kratesConfig(
        elements=sorted(set(int(z) for z in structure.atomic_numbers)),
        features=24,
        layers=1,
        radial_basis_size=8,
        cutoff=3.0,
        energy_unit=energy_unit,
    )
    directory.mkdir(parents=True, exist_ok=True)
    checkpoint = save_checkpoint(SO3krates(config), directory / "random_checkpoint.pt")
    return export_checkpoint(checkpoint, directory / "model.pt", structure=structure)


def write_catcher_like_xyz(path: Path) -> Path:
    """C60 with a benzene 6 Å from its centre, as XYZ (no topology: bonds come from covalent radii)."""
    from ase.build import molecule

    ball, host = molecule("C60"), molecule("C6H6")
    ball.translate(-ball.get_center_of_mass())
    host.translate(-host.get_center_of_mass() + np.array([0.0, 0.0, 6.0]))
    numbers = np.concatenate([host.numbers, ball.numbers])
    positions = np.concatenate([host.positions, ball.positions])
    write_xyz(path, Structure(numbers, positions), comment="benzene + C60")
    return path
