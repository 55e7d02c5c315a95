"""openmm-ml plugin, PythonForce backend and ASE calculator."""

from __future__ import annotations

import platform

import numpy as np
import openmm
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_stress
from ase.optimize import BFGS
from conftest import page_faults_in_child, randomise, small_config
from openmm import app, unit

from so3krates_openmm import SO3krates, SO3kratesCalculator, create_system, export_checkpoint
from so3krates_openmm.data.structures import Structure, write_xyz
from so3krates_openmm.model.checkpoint import save_checkpoint
from so3krates_openmm.openmm_force import positions_nm

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
    topology.setPeriodicBoxVectors(
        [openmm.Vec3(box_nm, 0, 0), openmm.Vec3(0, box_nm, 0), openmm.Vec3(0, 0, box_nm)] * unit.nanometer
    )
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
        nonbonded.addParticle(
            charges[int(structure.atomic_numbers[index])] if included else 0.0, 0.3, 0.5 if included else 0.0
        )
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


def checkpoint_energy(checkpoint, molecule, **options) -> float:
    from openmmml import MLPotential

    system = MLPotential("so3krates", modelPath=str(checkpoint)).createSystem(molecule.openmm_topology(), **options)
    return energy_forces(system, positions_nm(molecule))[0]


@pytest.mark.parametrize("checkpoint_dtype", ["float32", "float64"])
def test_mlpotential_precision_none_keeps_the_checkpoint_dtype(tmp_path, molecule, checkpoint_dtype):
    model = randomise(SO3krates(small_config(dtype=checkpoint_dtype))).eval()
    checkpoint = save_checkpoint(model, tmp_path / f"{checkpoint_dtype}.pt")
    energies = {
        precision: checkpoint_energy(checkpoint, molecule, precision=precision)
        for precision in (None, "single", "double")
    }
    same = "double" if checkpoint_dtype == "float64" else "single"
    other = "single" if same == "double" else "double"
    assert energies[None] == energies[same]
    assert energies[None] != energies[other]  # float32 and float64 really differ in the last digits
    assert abs(energies[None] - energies[other]) < 1e-4 * abs(energies[other])
    with pytest.raises(ValueError, match="precision must be None"):
        checkpoint_energy(checkpoint, molecule, precision="half")


def test_mlpotential_device_as_in_openmm_ml(small_model, checkpoint, molecule):
    from openmmml import MLPotential

    potential = MLPotential("so3krates", modelPath=str(checkpoint))
    topology = molecule.openmm_topology()
    expected_energy, expected_forces = reference(small_model, molecule)
    for device in ("cpu", torch.device("cpu")):
        system = potential.createSystem(topology, backend="pythonforce", device=device, precision="double")
        energy, forces = energy_forces(system, positions_nm(molecule))
        assert abs(energy - expected_energy) < 1e-9 * abs(expected_energy)
        np.testing.assert_allclose(forces, expected_forces, rtol=1e-8, atol=1e-8)
    with pytest.warns(UserWarning, match="'device' applies to backend='pythonforce' only"):
        potential.createSystem(topology, device="cpu")


def test_create_system_from_an_openmm_topology(tmp_path, small_model, checkpoint, molecule):
    """Elements and box from the Topology, positions set on the Context (as openmm-ml's createSystem)."""
    box = np.diag([6.4, 6.4, 6.4])
    periodic = Structure(molecule.atomic_numbers, molecule.positions_angstrom + 1.0, box_angstrom=box)
    pdb_file = tmp_path / "periodic.pdb"
    with open(pdb_file, "w") as handle:
        app.PDBFile.writeFile(periodic.openmm_topology(), positions_nm(periodic), handle)
    pdb = app.PDBFile(str(pdb_file))
    exported = export_checkpoint(
        checkpoint, tmp_path / "periodic.pt", structure=periodic, periodic=True, dtype="float64"
    )
    expected_energy, expected_forces = reference(small_model, periodic, box)
    for model_path in (checkpoint, exported):
        system = create_system(pdb.topology, model_path, dtype="float64")
        assert system.usesPeriodicBoundaryConditions()
        np.testing.assert_allclose(
            [v.value_in_unit(unit.angstrom) for v in system.getDefaultPeriodicBoxVectors()], box, atol=1e-9
        )
        masses = [system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles())]
        assert masses[0] == pytest.approx(12.011, abs=1e-3) and masses[3] == pytest.approx(1.008, abs=1e-3)
        energy, forces = energy_forces(system, pdb.positions)
        assert abs(energy - expected_energy) < 1e-6 * abs(expected_energy)  # PDB coordinates have 3 decimals
        np.testing.assert_allclose(forces, expected_forces, rtol=1e-5, atol=1e-3)
    # A structure file and a Structure give the same System as the Topology.
    xyz_file = tmp_path / "molecule.xyz"
    write_xyz(xyz_file, molecule)
    for structure_input in (xyz_file, str(xyz_file), molecule):
        system = create_system(structure_input, checkpoint, dtype="float64")
        assert not system.usesPeriodicBoundaryConditions() and system.getNumParticles() == molecule.n_atoms


def test_create_system_rejects_topologies_the_model_cannot_model(tmp_path, checkpoint, molecule):
    exported = export_checkpoint(checkpoint, tmp_path / "model.pt", structure=molecule)
    iron = molecule.openmm_topology()
    list(iron.atoms())[4].element = app.Element.getBySymbol("Fe")
    for model_path in (checkpoint, exported):
        with pytest.raises(
            ValueError, match=r"does not know element\(s\) Fe \(first: atom 4, Fe\); it was trained on H, C, N, O"
        ):
            create_system(iron, model_path)
    no_element = molecule.openmm_topology()
    list(no_element.atoms())[2].element = None
    with pytest.raises(ValueError, match=r"atom 2 \('O3' of residue MOL 1\) has no element"):
        create_system(no_element, checkpoint)
    with pytest.raises(TypeError, match="takes an openmm.app.Topology, a Structure or a structure file"):
        create_system(molecule.positions_angstrom, checkpoint)


@pytest.mark.parametrize("source", ["checkpoint", "exported"])
def test_pythonforce_and_torchforce_give_the_same_energy_and_forces(tmp_path, checkpoint, molecule, source):
    model_path = (
        checkpoint
        if source == "checkpoint"
        else export_checkpoint(checkpoint, tmp_path / "m.pt", structure=molecule, dtype="float64")
    )
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
    eager = energy_forces(
        create_system(molecule, checkpoint, backend="pythonforce", dtype="float64"), positions_nm(molecule)
    )
    compiled = energy_forces(
        create_system(molecule, checkpoint, backend="pythonforce", dtype="float64", compile_model=True),
        positions_nm(molecule),
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
    np.testing.assert_allclose(
        rotated.get_forces(), forces @ np.linalg.inv(cell) @ rotated.cell.array, rtol=1e-7, atol=1e-8
    )


def test_ase_calculator_rejects_unknown_elements(checkpoint):
    atoms = Atoms("FeH", positions=[[0, 0, 0], [1.5, 0, 0]])
    atoms.calc = SO3kratesCalculator(checkpoint)
    with pytest.raises(ValueError, match="does not know element.*Fe"):
        atoms.get_potential_energy()


def test_ase_stress_equals_finite_differences_of_the_energy_under_strain(checkpoint, molecule):
    cell = np.array([[6.4, 0.0, 0.0], [1.2, 6.3, 0.0], [-1.0, 1.5, 6.2]])
    atoms = Atoms(numbers=molecule.atomic_numbers, positions=molecule.positions_angstrom + 1.0, cell=cell, pbc=True)
    atoms.rotate(35, "z", rotate_cell=True)  # a cell not in reduced form
    atoms.calc = SO3kratesCalculator(checkpoint)
    stress = atoms.get_stress()
    assert stress.shape == (6,) and np.abs(stress).max() > 1e-4
    # ASE's own central differences: E(cell (1 + e), scaled positions kept) / volume, Voigt xx yy zz yz xz xy.
    numerical = calculate_numerical_stress(atoms, eps=1e-5, voigt=True, force_consistent=False)
    np.testing.assert_allclose(stress, numerical, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(atoms.get_stress(voigt=False), atoms.get_stress(voigt=False).T)
    isolated = Atoms(numbers=molecule.atomic_numbers, positions=molecule.positions_angstrom)
    isolated.calc = SO3kratesCalculator(checkpoint)
    with pytest.raises(PropertyNotImplementedError, match="stress needs a periodic cell"):
        isolated.get_stress()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_constructing_the_ase_calculator_leaves_malloc_alone(checkpoint):
    """No process-wide tuning from a library object: freed large blocks still go back to the kernel
    (page faults on reuse) after the calculator was built, as in a process that never saw it."""
    setup = f"from so3krates_openmm import SO3kratesCalculator\nSO3kratesCalculator({str(checkpoint)!r})"
    setup += "\napplied = None"
    assert page_faults_in_child(setup)["faults_per_step"] > 500  # about 3100 with glibc's defaults, < 10 after mallopt
