"""ML/MM: a molecule modelled by SO3krates inside a TIP3P water box modelled by amber14.

The water and the molecule-water interactions come from the classical force
field (amber14 + TIP3P, PME); the molecule's internal energy comes from the
SO3krates checkpoint through openmm-ml's ``createMixedSystem`` (mechanical
embedding), with the ``so3krates`` potential registered by this package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import openmm
from openmm import app, unit


@dataclass
class SolvatedMixedSystem:
    """A periodic ML/MM set-up: topology, positions (nm), System and the ML atom indices."""

    topology: app.Topology
    positions: unit.Quantity
    system: openmm.System
    ml_atoms: list[int]


def solvated_mixed_system(
    structure_pdb: str | Path,
    checkpoint: str | Path,
    *,
    padding_nm: float = 1.0,
    precision: str = "single",
    backend: str = "torchforce",
    kernels: str | None = None,
) -> SolvatedMixedSystem:
    """Solvate the molecule of ``structure_pdb`` in TIP3P and model it with the SO3krates ``checkpoint``.

    Args:
        structure_pdb: the molecule, a PDB whose residues amber14 knows (e.g. the shipped Ac-Ala3-NHMe).
        checkpoint: SO3krates checkpoint (not an exported ``.pt``: openmm-ml exports for the topology).
        padding_nm: water padding around the molecule in nm; the box must stay at least twice the
            model cutoff wide.
        precision: ``"single"`` or ``"double"`` for the ML part.
        backend: ``"torchforce"`` or ``"pythonforce"`` for the ML part.
        kernels: kind of module the checkpoint is scripted as (``None``: ``"reference"``; ``"fused"`` is the fast
            CPU kind), see :func:`so3krates_openmm.openmm_force.create_force`.
    """
    from openmmml import MLPotential

    pdb = app.PDBFile(str(structure_pdb))
    forcefield = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    modeller = app.Modeller(pdb.topology, pdb.positions)
    modeller.addSolvent(forcefield, model="tip3p", padding=padding_nm * unit.nanometer)
    ml_atoms = list(range(pdb.topology.getNumAtoms()))  # Modeller keeps the solute first
    mm_system = forcefield.createSystem(
        modeller.topology,
        nonbondedMethod=app.PME,
        nonbondedCutoff=0.9 * unit.nanometer,
        constraints=None,
        rigidWater=True,
    )
    potential = MLPotential("so3krates", modelPath=str(checkpoint))
    system = potential.createMixedSystem(modeller.topology, mm_system, ml_atoms, precision=precision, backend=backend,
                                         kernels=kernels)
    return SolvatedMixedSystem(modeller.topology, modeller.positions, system, ml_atoms)
