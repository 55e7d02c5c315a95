"""openmm-ml plugin, PythonForce backend and ASE calculator."""

from __future__ import annotations

import numpy as np
import openmm
import pytest
import torch
from ase import Atoms
from ase.optimize import BFGS
from openmm import unit

from so3krates_openmm import SO3kratesCalculator
from so3krates_openmm.data.structures import Structure
from so3krates_openmm.export import export_checkpoint
from so3krates_openmm.openmm_force import create_system, positions_nm

KJ_PER_KCAL = 4.184
EV_PER_KCAL = 4.184 / 96.4853321


def reference(model, structure: Structure, box=None):
    """Eager energy (kJ/mol) and forces (kJ/mol/nm)."""
    boxes = None if box is None else torch.tensor(box)
    energy, forces = model.energy_and_forces(
        torch.tensor(structure.atomic_numbers), torch.tensor(structure.positions_angstrom), boxes=boxes
    )
    return float(energy) * KJ_PER_KCAL, forces.numpy() * KJ_PER_KCAL * 10.0


def energy_forces(system: openmm.System, positions, parameters: dict | None = None):
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    for name, value in (parameters or {}).items():
        context.setParameter(name, value)
    state = context.getState(getEnergy=True, getForces=True)
    return (
        state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
        state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer),
    )


def test_mlpotential_create_system_equals_direct_evaluation(small_model, checkpoint, molecule):
    from openmmml import MLPotential

    potential = MLPotential("so3krates", modelPath=str(checkpoint))
    system = potential.createSystem(molecule.openmm_topology(), precision="double")
    energy, forces = energy_forces(system, positions_nm(molecule))
    expected_energy, expected_forces = reference(small_model, molecule)
    assert abs(energy - expected_energy) < 1e-9 * abs(expected_energy)
    np.testing.assert_allclose(forces, expected_forces, rtol=1e-8, atol=1e-8)


def test_mlpotential_periodic_energy_unchanged_when_molecule_is_split_across_the_boundary(checkpoint, molecule):
    from openmmml import MLPotential

    box_nm = 0.64
    topology = molecule.openmm_topology()
    topology.setPeriodicBoxVectors([openmm.Vec3(box_nm, 0, 0), openmm.Vec3(0, box_nm, 0), openmm.Vec3(0, 0, box_nm)] * unit.nanometer)
    system = MLPotential("so3krates", modelPath=str(checkpoint)).createSystem(topology, precision="double")
    inside = molecule.positions_angstrom / 10.0 + 0.1
    energy, forces = energy_forces(system, inside)
    split = np.mod(inside + np.array([0.45, 0.3, 0.0]), box_nm)  # some atoms wrap to the other side
    assert np.ptp(split[:, 0]) > box_nm / 2  # really split across the boundary
    split_energy, split_forces = energy_forces(system, split)
    assert abs(split_energy - energy) < 1e-9 * abs(energy)
    np.testing.assert_allclose(split_forces, forces, rtol=1e-7, atol=1e-7)


def mm_system(structure: Structure, atoms: list[int] | None = None) -> openmm.System:
    """A simple classical System (charges, Lennard-Jones, bonds) over ``atoms`` (default all)."""
    atoms = list(range(structure.n_atoms)) if atoms is None else atoms
    positions = structure.positions_angstrom / 10.0
    charges = {1: 0.2, 6: -0.1, 8: -0.4}
    system = openmm.System()
    nonbonded = openmm.NonbondedForce()
    bonds = openmm.HarmonicBondForce()
    for index in range(structure.n_atoms):
        system.addParticle(12.0)
        included = index in atoms
        nonbonded.addParticle(charges[int(structure.atomic_numbers[index])] if included else 0.0, 0.3, 0.5 if included else 0.0)
    for i in atoms:
        for j in atoms:
            distance = float(np.linalg.norm(positions[i] - positions[j]))
            if i < j and distance < 0.125:
                nonbonded.addException(i, j, 0.0, 0.3, 0.0)
                bonds.addBond(i, j, distance * 1.02, 2.0e5)
    system.addForce(nonbonded)
    system.addForce(bonds)
    return system


def test_mlpotential_mixed_system_matches_at_lambda_0_and_1(small_model, checkpoint, molecule):
    from openmmml import MLPotential

    ml_atoms = list(range(9))  # ethanol; the water stays MM
    topology = molecule.openmm_topology()
    full_mm = mm_system(molecule)
    mixed = MLPotential("so3krates", modelPath=str(checkpoint)).createMixedSystem(
        topology, full_mm, ml_atoms, interpolate=True, precision="double"
    )
    positions = positions_nm(molecule)
    mm_energy, mm_forces = energy_forces(full_mm, positions)
    at_zero, forces_zero = energy_forces(mixed, positions, {"lambda_interpolate": 0.0})
    assert abs(at_zero - mm_energy) < 1e-8 * max(1.0, abs(mm_energy))
    np.testing.assert_allclose(forces_zero, mm_forces, rtol=1e-7, atol=1e-6)
    ethanol = Structure(molecule.atomic_numbers[:9], molecule.positions_angstrom[:9])
    ml_energy, _ = reference(small_model, ethanol)
    ethanol_mm_energy, _ = energy_forces(mm_system(molecule, ml_atoms), positions)
    at_one, _ = energy_forces(mixed, positions, {"lambda_interpolate": 1.0})
    assert abs(at_one - (mm_energy - ethanol_mm_energy + ml_energy)) < 1e-7 * abs(at_one)


@pytest.mark.parametrize("source", ["checkpoint", "exported"])
def test_pythonforce_and_torchforce_give_the_same_energy_and_forces(tmp_path, checkpoint, molecule, source):
    model_path = checkpoint if source == "checkpoint" else export_checkpoint(checkpoint, tmp_path / "m.pt", structure=molecule, dtype="float64")
    results = {}
    for backend in ("torchforce", "pythonforce"):
        system = create_system(molecule, model_path, backend=backend, dtype="float64")
        kinds = {type(force).__name__ for force in system.getForces()}
        assert ("PythonForce" in kinds) == (backend == "pythonforce")
        results[backend] = energy_forces(system, positions_nm(molecule))
    assert abs(results["torchforce"][0] - results["pythonforce"][0]) < 1e-9 * abs(results["torchforce"][0])
    np.testing.assert_allclose(results["pythonforce"][1], results["torchforce"][1], rtol=1e-8, atol=1e-8)


@pytest.mark.slow
def test_pythonforce_with_torch_compile_matches_eager(checkpoint, molecule):
    eager = energy_forces(create_system(molecule, checkpoint, backend="pythonforce", dtype="float64"), positions_nm(molecule))
    compiled = energy_forces(
        create_system(molecule, checkpoint, backend="pythonforce", dtype="float64", compile_model=True), positions_nm(molecule)
    )
    assert abs(compiled[0] - eager[0]) < 1e-8 * abs(eager[0])
    np.testing.assert_allclose(compiled[1], eager[1], rtol=1e-6, atol=1e-6)


def test_ase_calculator_energies_and_forces_in_ev(small_model, checkpoint, molecule):
    atoms = Atoms(numbers=molecule.atomic_numbers, positions=molecule.positions_angstrom)
    atoms.calc = SO3kratesCalculator(checkpoint)
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    expected_energy, expected_forces = small_model.energy_and_forces(
        torch.tensor(molecule.atomic_numbers), torch.tensor(molecule.positions_angstrom)
    )
    assert abs(energy - float(expected_energy) * EV_PER_KCAL) < 1e-9 * abs(energy)
    np.testing.assert_allclose(forces, expected_forces.numpy() * EV_PER_KCAL, rtol=1e-9, atol=1e-10)
    assert abs(atoms.get_potential_energies().sum() - energy) < 1e-9 * abs(energy)


def test_ase_calculator_with_optimiser_and_rotated_periodic_cell(checkpoint, molecule):
    atoms = Atoms(numbers=molecule.atomic_numbers, positions=molecule.positions_angstrom)
    atoms.calc = SO3kratesCalculator(checkpoint)
    start = atoms.get_potential_energy()
    assert np.abs(atoms.get_forces()).max() > 0.01
    BFGS(atoms, logfile=None).run(fmax=0.01, steps=15)
    assert atoms.get_potential_energy() < start
    # A periodic cell given in a rotated frame equals the same cell in reduced form.
    cell = np.array([[6.4, 0.0, 0.0], [1.2, 6.3, 0.0], [-1.0, 1.5, 6.2]])
    periodic = Atoms(numbers=molecule.atomic_numbers, positions=molecule.positions_angstrom + 1.0, cell=cell, pbc=True)
    periodic.calc = SO3kratesCalculator(checkpoint)
    energy, forces = periodic.get_potential_energy(), periodic.get_forces()
    rotated = periodic.copy()
    rotated.rotate(35, "z", rotate_cell=True)
    rotated.rotate(20, "x", rotate_cell=True)
    rotated.calc = SO3kratesCalculator(checkpoint)
    assert abs(rotated.get_potential_energy() - energy) < 1e-9 * abs(energy)
    np.testing.assert_allclose(rotated.get_forces(), forces @ np.linalg.inv(cell) @ rotated.cell.array, rtol=1e-7, atol=1e-8)


def test_ase_calculator_rejects_unknown_elements(checkpoint):
    atoms = Atoms("FeH", positions=[[0, 0, 0], [1.5, 0, 0]])
    atoms.calc = SO3kratesCalculator(checkpoint)
    with pytest.raises(ValueError, match="does not know element.*Fe"):
        atoms.get_potential_energy()
