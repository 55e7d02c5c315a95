"""Checkpoints, TorchScript export, and the model inside OpenMM."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile

import numpy as np
import openmm
import pytest
import torch
from openmm import unit

from so3krates_openmm import SO3kratesConfig
from so3krates_openmm.cli.export import main as export_main
from so3krates_openmm.data.structures import Structure, read_structure, write_xyz
from so3krates_openmm.export import ExportError, export_checkpoint, read_export_metadata
from so3krates_openmm.model.checkpoint import (
    CHECKPOINT_FORMAT_VERSION,
    CheckpointError,
    checkpoint_dict,
    file_sha256,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from so3krates_openmm.openmm_force import create_system, create_torch_force, positions_nm

KJ_PER_KCAL = 4.184


def test_checkpoint_round_trip(small_model, checkpoint, molecule):
    loaded = load_model(checkpoint)
    assert loaded.config == small_model.config
    assert loaded.energy_shifts.dtype == torch.float64
    torch.testing.assert_close(loaded.energy_shifts, small_model.energy_shifts, rtol=0, atol=0)
    numbers, positions = torch.tensor(molecule.atomic_numbers), torch.tensor(molecule.positions_angstrom)
    e0, f0 = small_model.energy_and_forces(numbers, positions)
    e1, f1 = loaded.energy_and_forces(numbers, positions)
    assert torch.equal(e0, e1) and torch.equal(f0, f1)


def test_not_a_checkpoint_and_newer_format_are_clear_errors(tmp_path, small_model, checkpoint):
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a so3krates-openmm checkpoint"):
        load_model(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": small_model.state_dict()}, foreign)
    with pytest.raises(CheckpointError, match="another model"):
        load_model(foreign)
    newer = tmp_path / "newer.pt"
    data = checkpoint_dict(small_model)
    data["format_version"] = CHECKPOINT_FORMAT_VERSION + 1
    torch.save(data, newer)
    with pytest.raises(CheckpointError, match="newer"):
        load_model(newer)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing.pt")


def test_bad_inputs_are_clear_errors(small_model, molecule):
    numbers, positions = torch.tensor(molecule.atomic_numbers), torch.tensor(molecule.positions_angstrom)
    with pytest.raises(ValueError, match="does not know element.*Fe"):
        small_model.energy_and_forces(torch.cat([numbers[:-1], torch.tensor([26])]), positions)
    nan_positions = positions.clone()
    nan_positions[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"atoms \[3\] are NaN"):
        small_model.energy_and_forces(numbers, nan_positions)
    overlapping = positions.clone()
    overlapping[5] = overlapping[4]
    with pytest.raises(ValueError, match="on top of each other"):
        small_model.energy_and_forces(numbers, overlapping)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_structure("no/such/structure.pdb")


def evaluate_module(module, positions_nm: torch.Tensor, box_nm=None):
    positions = positions_nm.clone().requires_grad_(True)
    output = module(positions) if box_nm is None else module(positions, box_nm)
    if isinstance(output, tuple):
        return output[0].detach(), output[1].detach()
    (gradient,) = torch.autograd.grad(output, positions)
    return output.detach(), -gradient


@pytest.mark.parametrize("outputs_forces", [False, True])
def test_exported_module_equals_eager_model_in_openmm_units(
    tmp_path, small_model, checkpoint, molecule, outputs_forces
):
    path = export_checkpoint(
        checkpoint, tmp_path / "model.pt", structure=molecule, dtype="float64", outputs_forces=outputs_forces
    )
    module = torch.jit.load(str(path))
    perturbed = molecule.positions_angstrom + np.random.default_rng(5).normal(scale=0.03, size=(molecule.n_atoms, 3))
    energy, forces = evaluate_module(module, torch.tensor(perturbed / 10.0))
    reference_energy, reference_forces = small_model.energy_and_forces(
        torch.tensor(molecule.atomic_numbers), torch.tensor(perturbed)
    )
    assert abs(float(energy) - float(reference_energy) * KJ_PER_KCAL) < 1e-9 * abs(float(energy))
    torch.testing.assert_close(forces, reference_forces * KJ_PER_KCAL * 10.0, rtol=1e-9, atol=1e-9)
    metadata = read_export_metadata(path)
    assert (
        metadata["checkpoint_energy_unit"] == "kcal/mol" and metadata["kj_per_mol_per_checkpoint_energy_unit"] == 4.184
    )
    assert metadata["atomic_numbers"] == molecule.atomic_numbers.tolist() and metadata["periodic"] is False
    assert len(metadata["checkpoint_sha256"]) == 64


def test_export_of_a_sub_system_gives_zero_force_on_other_particles(tmp_path, small_model, checkpoint, molecule):
    atoms = list(range(9))  # ethanol only; the water is "MM"
    path = export_checkpoint(
        checkpoint, tmp_path / "ml.pt", structure=molecule, atom_indices=atoms, dtype="float64", outputs_forces=True
    )
    energy, forces = evaluate_module(torch.jit.load(str(path)), torch.tensor(molecule.positions_angstrom / 10.0))
    reference_energy, reference_forces = small_model.energy_and_forces(
        torch.tensor(molecule.atomic_numbers[:9]), torch.tensor(molecule.positions_angstrom[:9])
    )
    assert abs(float(energy) - float(reference_energy) * KJ_PER_KCAL) < 1e-9 * abs(float(energy))
    assert torch.equal(forces[9:], torch.zeros(3, 3, dtype=torch.float64))
    torch.testing.assert_close(forces[:9], reference_forces * KJ_PER_KCAL * 10.0, rtol=1e-9, atol=1e-9)


def test_export_writes_nothing_when_the_self_check_fails(tmp_path, checkpoint, molecule, monkeypatch):
    import so3krates_openmm.export as export_module

    monkeypatch.setattr(export_module, "_relative_difference", lambda value, reference: 1.0)
    output = tmp_path / "model.pt"
    with pytest.raises(ExportError, match="self-check failed"):
        export_checkpoint(checkpoint, output, structure=molecule)
    assert not output.exists() and not list(tmp_path.glob(".model.pt*"))


def test_export_command_line(tmp_path, checkpoint, molecule, capsys):
    structure_file = tmp_path / "molecule.xyz"
    write_xyz(structure_file, molecule)
    output = tmp_path / "cli.pt"
    assert export_main([str(checkpoint), "--structure", str(structure_file), "-o", str(output)]) == 0
    assert "self-check passed" in capsys.readouterr().out
    assert read_export_metadata(output)["dtype"] == "float32"
    with zipfile.ZipFile(output) as archive:
        assert any(name.endswith("extra/so3krates_metadata.json") for name in archive.namelist())
    assert export_main([str(output), "--structure", str(structure_file), "-o", str(tmp_path / "again.pt")]) == 2
    assert "exported TorchScript model, not a checkpoint" in capsys.readouterr().err
    assert export_main([str(checkpoint), "--atomic-numbers", "6,1,Xx", "-o", str(tmp_path / "x.pt")]) == 2
    assert "unknown element symbol 'Xx'" in capsys.readouterr().err


def openmm_energy_forces(system, positions, platform_name, box=None):
    integrator = openmm.VerletIntegrator(0.0005)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform_name))
    if box is not None:
        context.setPeriodicBoxVectors(*box)
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True)
    return (
        state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
        state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer),
    )


@pytest.mark.parametrize("platform_name", ["Reference", "CPU"])
@pytest.mark.parametrize("outputs_forces", [False, True])
def test_openmm_energy_and_forces_equal_the_eager_model(
    tmp_path, small_model, checkpoint, molecule, platform_name, outputs_forces
):
    path = export_checkpoint(
        checkpoint, tmp_path / "model.pt", structure=molecule, dtype="float64", outputs_forces=outputs_forces
    )
    system = create_system(molecule, path)
    energy, forces = openmm_energy_forces(system, positions_nm(molecule), platform_name)
    reference_energy, reference_forces = small_model.energy_and_forces(
        torch.tensor(molecule.atomic_numbers), torch.tensor(molecule.positions_angstrom)
    )
    assert abs(energy - float(reference_energy) * KJ_PER_KCAL) < 1e-9 * abs(energy)
    np.testing.assert_allclose(forces, reference_forces.numpy() * KJ_PER_KCAL * 10.0, rtol=1e-8, atol=1e-8)


def test_periodic_model_in_openmm(tmp_path, small_model, checkpoint, molecule):
    box = np.diag([6.4, 6.4, 6.4])
    periodic = Structure(molecule.atomic_numbers, molecule.positions_angstrom + 1.0, box_angstrom=box)
    path = export_checkpoint(checkpoint, tmp_path / "periodic.pt", structure=periodic, periodic=True, dtype="float64")
    assert read_export_metadata(path)["periodic"] is True
    system = create_system(periodic, path)
    assert system.usesPeriodicBoundaryConditions()
    energy, forces = openmm_energy_forces(system, positions_nm(periodic), "Reference")
    reference_energy, reference_forces = small_model.energy_and_forces(
        torch.tensor(periodic.atomic_numbers), torch.tensor(periodic.positions_angstrom), boxes=torch.tensor(box)
    )
    assert abs(energy - float(reference_energy) * KJ_PER_KCAL) < 1e-9 * abs(energy)
    np.testing.assert_allclose(forces, reference_forces.numpy() * KJ_PER_KCAL * 10.0, rtol=1e-8, atol=1e-8)
    too_small = Structure(periodic.atomic_numbers, periodic.positions_angstrom, box_angstrom=np.diag([5.0, 6.4, 6.4]))
    with pytest.raises(ValueError, match="exceeds half the smallest box width"):
        create_system(too_small, path)


def test_exported_model_for_another_structure_is_rejected(tmp_path, checkpoint, molecule):
    path = export_checkpoint(checkpoint, tmp_path / "model.pt", structure=molecule)
    swapped = Structure(molecule.atomic_numbers[::-1], molecule.positions_angstrom)
    with pytest.raises(ValueError, match="exported for another structure"):
        create_system(swapped, path)
    shorter = Structure(molecule.atomic_numbers[:5], molecule.positions_angstrom[:5])
    with pytest.raises(ValueError, match="exported for 12 particles"):
        create_system(shorter, path)


def test_openmm_forces_equal_finite_differences_of_openmm_energy(tmp_path, checkpoint, molecule):
    """The user's view: a TorchForce loaded from the .pt, forces vs finite differences of the energy."""
    import openmmtorch

    path = export_checkpoint(checkpoint, tmp_path / "model.pt", structure=molecule, dtype="float64")
    system = openmm.System()
    for _ in range(molecule.n_atoms):
        system.addParticle(12.0)
    system.addForce(openmmtorch.TorchForce(str(path)))
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    base = molecule.positions_angstrom / 10.0
    context.setPositions(base)
    forces = (
        context.getState(getForces=True).getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    )
    step = 1e-6
    for atom, axis in [(0, 0), (2, 1), (10, 2)]:
        energies = []
        for sign in (1, -1):
            moved = base.copy()
            moved[atom, axis] += sign * step
            context.setPositions(moved)
            energies.append(
                context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            )
        assert abs(-(energies[0] - energies[1]) / (2 * step) - forces[atom, axis]) < 1e-5 * max(
            1.0, abs(forces[atom, axis])
        )


def test_200_langevin_steps_stay_finite(tmp_path, checkpoint, molecule):
    path = export_checkpoint(checkpoint, tmp_path / "model.pt", structure=molecule, dtype="float32")
    system = create_system(molecule, path)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1.0 / unit.picosecond, 0.5 * unit.femtosecond)
    integrator.setRandomNumberSeed(1)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"))
    context.setPositions(positions_nm(molecule))
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    integrator.step(200)
    state = context.getState(getEnergy=True, getPositions=True)
    assert np.isfinite(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    assert np.all(np.isfinite(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)))


def test_metadata_round_trips_through_a_checkpoint_file_and_an_exported_pt(tmp_path, small_model, molecule):
    """What training writes into a checkpoint comes back from the file, and what the export writes
    into the .pt describes that checkpoint (config, hash, units, atoms) and survives openmm-torch loading it."""
    import openmmtorch

    extra = {"training": {"epoch": 7, "valid_loss": 0.125}, "data": ["dataset.npz"]}
    small_model.set_energy_shifts({1: -0.1234567890123, 6: -37.8, 7: -54.5, 8: -75.0000000001})
    path = save_checkpoint(small_model, tmp_path / "run" / "best_checkpoint.pt", extra=extra)
    data = read_checkpoint(path)
    assert data["extra"] == extra and data["config"] == small_model.config.to_dict()
    assert data["energy_unit"] == "kcal/mol" and data["length_unit"] == small_model.config.length_unit
    assert data["energy_shifts"] == {1: -0.1234567890123, 6: -37.8, 7: -54.5, 8: -75.0000000001}  # float64 exactly
    loaded = load_model(path)
    assert loaded.config == small_model.config and torch.equal(loaded.energy_shifts, small_model.energy_shifts)
    for name, value in small_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name

    exported = export_checkpoint(
        path, tmp_path / "model.pt", structure=molecule, atom_indices=range(9), outputs_forces=True
    )
    metadata = read_export_metadata(exported)
    assert SO3kratesConfig.from_dict(metadata["config"]) == small_model.config
    assert metadata["checkpoint"] == "best_checkpoint.pt"
    assert metadata["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() == file_sha256(path)
    assert metadata["atomic_numbers"] == molecule.atomic_numbers[:9].tolist() and metadata["atom_indices"] == list(
        range(9)
    )
    assert metadata["n_particles"] == 12 and metadata["elements"] == list(small_model.config.elements)
    assert (
        metadata["cutoff_nm"] == small_model.config.cutoff / 10.0
        and metadata["kj_per_mol_per_checkpoint_energy_unit"] == 4.184
    )
    assert (metadata["dtype"], metadata["periodic"], metadata["outputs_forces"], metadata["static_pairs"]) == (
        "float32",
        False,
        True,
        False,
    )
    # torch.jit.load reads the same metadata, and the glue sets openmm-torch's flags from it.
    extra_files = {"so3krates_metadata.json": ""}
    torch.jit.load(str(exported), _extra_files=extra_files)
    assert json.loads(extra_files["so3krates_metadata.json"]) == metadata
    force = create_torch_force(exported)
    assert isinstance(force, openmmtorch.TorchForce)
    assert force.getOutputsForces() and not force.usesPeriodicBoundaryConditions()
    # A different checkpoint (one weight changed) is told apart by the hash in the export.
    with torch.no_grad():
        small_model.embedding.weight[0, 0] += 1e-6
    other = export_checkpoint(save_checkpoint(small_model, tmp_path / "other.pt"), tmp_path / "other_model.pt",
                              structure=molecule)
    assert read_export_metadata(other)["checkpoint_sha256"] != metadata["checkpoint_sha256"]


def test_static_pair_export_equals_pruned_export(tmp_path, checkpoint, molecule):
    """The all-pairs module (for CUDA graphs) gives the same energy and forces as the pruned one."""
    positions = torch.tensor(molecule.positions_angstrom / 10.0)
    results = []
    for static_pairs in (False, True):
        path = export_checkpoint(
            checkpoint, tmp_path / f"m{static_pairs}.pt", structure=molecule, dtype="float64", static_pairs=static_pairs
        )
        assert read_export_metadata(path)["static_pairs"] is static_pairs
        results.append(evaluate_module(torch.jit.load(str(path)), positions))
    assert abs(float(results[0][0] - results[1][0])) < 1e-9 * abs(float(results[0][0]))
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-9, atol=1e-9)


def test_torchforce_import_prints_no_simtk_notice_and_leaves_logging_alone():
    # openmm-torch's wrapper imports simtk.openmm, whose shim logs a deprecation warning: not shown to users.
    code = ("import logging, sys; from so3krates_openmm.openmm_force import openmmtorch_module; "
            "force = openmmtorch_module().TorchForce; assert logging.getLogger().filters == []; "
            "logging.getLogger().warning('other warnings still show')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "simtk" not in result.stderr and "other warnings still show" in result.stderr


def test_model_identity_is_the_same_for_two_exports_of_one_checkpoint(tmp_path, checkpoint, molecule):
    from so3krates_openmm.export import model_identity
    from so3krates_openmm.md.minima import MinimizerRecipe, journal_header

    first = export_checkpoint(checkpoint, tmp_path / "a.pt", structure=molecule)
    second = export_checkpoint(checkpoint, tmp_path / "elsewhere" / "b.pt", structure=molecule)
    assert model_identity(first) == model_identity(second)
    assert model_identity(first)["checkpoint_sha256"] == file_sha256(checkpoint)
    xml = tmp_path / "system.xml"
    xml.write_text("<System/>")
    assert model_identity(xml) == {"sha256": file_sha256(xml)}

    # so a journal of minimised snapshots continues with the model exported again on a new machine
    class Factory:
        def __init__(self, model_path):
            self.model_path = model_path

        def __repr__(self):
            return "Factory()"

    snapshots = np.zeros((2, 3, 3))
    headers = [journal_header(snapshots, [0, 1], MinimizerRecipe(Factory(path))) for path in (first, second)]
    assert headers[0] == headers[1] and headers[0]["model"]["kernels"] == "reference"
