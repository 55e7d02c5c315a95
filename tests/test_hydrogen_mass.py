"""Hydrogen mass repartitioning: masses moved from heavy atoms to their hydrogens, total mass kept, in every
protocol through --hydrogen-mass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openmm as mm
import pytest
from openmm import unit

from so3krates_openmm.cli.langevin_nvt import main as langevin_nvt_main
from so3krates_openmm.data.structures import read_structure
from so3krates_openmm.md.simulation import repartition_hydrogen_mass
from so3krates_openmm.md.stability import covalent_bonds


def masses(system: mm.System) -> np.ndarray:
    return np.array([system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles())])


def test_repartitioning_moves_mass_from_partners_to_hydrogens(peptide_pdb: Path, peptide_amber_xml: Path) -> None:
    structure = read_structure(peptide_pdb)
    system = mm.XmlSerializer.deserialize(peptide_amber_xml.read_text())
    before = masses(system)
    bonds, _ = covalent_bonds(structure)
    changed = repartition_hydrogen_mass(system, bonds, 3.0)
    after = masses(system)
    hydrogens = structure.atomic_numbers == 1
    assert changed == int(hydrogens.sum()) == 22
    np.testing.assert_allclose(after[hydrogens], 3.0)
    assert after.sum() == pytest.approx(before.sum(), rel=1e-12)  # the total mass is kept
    methyl_carbon = next(int(i) for i in np.flatnonzero(structure.atomic_numbers == 6)
                         if sum(1 for a, b in bonds if i in (a, b) and structure.atomic_numbers[a + b - i] == 1) == 3)
    assert after[methyl_carbon] == pytest.approx(before[methyl_carbon] - 3 * (3.0 - before[hydrogens][0]), rel=1e-9)
    # Applying it again changes nothing (the hydrogens are no longer light).
    assert repartition_hydrogen_mass(system, bonds, 3.0) == 0
    np.testing.assert_array_equal(masses(system), after)
    # A mass that would leave a methyl carbon with less than 1 amu is refused, naming the atom.
    fresh = mm.XmlSerializer.deserialize(peptide_amber_xml.read_text())
    with pytest.raises(ValueError, match="choose a smaller hydrogen mass"):
        repartition_hydrogen_mass(fresh, bonds, 5.0)


def test_protocol_runs_2_fs_steps_with_repartitioned_hydrogens(tmp_path: Path, peptide_pdb: Path,
                                                                peptide_amber_xml: Path) -> None:
    output = tmp_path / "hmr"
    code = langevin_nvt_main([
        "--structure", str(peptide_pdb), "--model", str(peptide_amber_xml), "--steps", "200", "--timestep-fs", "2",
        "--hydrogen-mass", "3", "--minimize", "--output", str(output), "--no-progress", "--platform", "Reference",
        "--threads", "1", "--seed", "5", "--log-interval", "10", "--trajectory-interval", "10",
        "--no-process-tuning"])
    assert code == 0
    run = json.loads((output / "run.json").read_text())
    assert run["settings"]["hydrogen_mass_amu"] == 3.0 and run["timestep_fs"] == 2.0
    # Resuming with another hydrogen mass would be another run: refused.
    code = langevin_nvt_main([
        "--structure", str(peptide_pdb), "--model", str(peptide_amber_xml), "--steps", "400", "--timestep-fs", "2",
        "--hydrogen-mass", "4", "--no-minimize", "--output", str(output), "--no-progress", "--platform", "Reference",
        "--threads", "1", "--seed", "5", "--resume", "--no-process-tuning"])
    assert code == 2
