"""The invariant SO3krates (``degrees=()``), the paper's ablation: the same model without Euclidean variables.

Its symmetries and forces are checked with the equivariant model in tests/test_model_physics.py, its fast path
(``--kernels analytic|fused``) against the reference in tests/test_model_fast.py; here: what it has and lacks,
export (``so3krates-export``, every kind) into OpenMM, and training through so3krates-train with a YAML file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ETHANOL_WATER_NUMBERS, ETHANOL_WATER_POSITIONS, randomise, small_config

from so3krates_openmm import SO3krates, create_system
from so3krates_openmm.cli.export import main as export_main
from so3krates_openmm.data.structures import Structure, write_xyz
from so3krates_openmm.export import read_export_metadata
from so3krates_openmm.model.checkpoint import load_model, save_checkpoint
from so3krates_openmm.model.config import SO3kratesConfig


def test_invariant_model_has_no_euclidean_parts() -> None:
    equivariant = SO3krates(small_config())
    invariant = SO3krates(small_config(degrees=()))
    assert not invariant.config.equivariant and invariant.config.m_tot == 0
    names = {name for name, _ in invariant.named_parameters()}
    assert not any("euclidean" in name or "spherical" in name for name in names)
    # everything else is identical: the same parameters as the equivariant model minus the Euclidean ones
    shared = {name for name, _ in equivariant.named_parameters() if "euclidean_" not in name and "spherical" not in name
              and "exchange" not in name}
    assert shared <= names
    assert sum(p.numel() for p in invariant.parameters()) < sum(p.numel() for p in equivariant.parameters())
    with pytest.raises(ValueError, match="distinct"):
        SO3kratesConfig(degrees=(1, 1))


@pytest.mark.parametrize("kernels", ["reference", "analytic", "fused"])
def test_invariant_checkpoint_exports_and_runs_in_openmm(tmp_path: Path, kernels: str) -> None:
    """``so3krates-export --kernels KIND`` of an invariant checkpoint runs in OpenMM (TorchForce) with the
    model's energy and forces, whatever the kind."""
    model = randomise(SO3krates(small_config(degrees=())), seed=3).eval()
    checkpoint = save_checkpoint(model, tmp_path / "invariant.pt")
    assert load_model(checkpoint).config.degrees == ()
    molecule = Structure(ETHANOL_WATER_NUMBERS, ETHANOL_WATER_POSITIONS)
    structure_file = tmp_path / "molecule.xyz"
    write_xyz(structure_file, molecule)
    exported = tmp_path / "model.pt"
    arguments = [str(checkpoint), "--structure", str(structure_file), "-o", str(exported), "--dtype", "float64"]
    assert export_main([*arguments, "--kernels", kernels, "--no-process-tuning"]) == 0
    assert read_export_metadata(exported)["kernels"] == kernels
    import openmm
    from openmm import unit

    system = create_system(molecule, exported)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(ETHANOL_WATER_POSITIONS / 10.0)
    state = context.getState(getEnergy=True, getForces=True)
    energy, forces = model.energy_and_forces(torch.tensor(ETHANOL_WATER_NUMBERS), torch.tensor(ETHANOL_WATER_POSITIONS))
    kj = 4.184  # small_config is in kcal/mol
    np.testing.assert_allclose(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole), float(energy) * kj,
                               rtol=1e-9)
    np.testing.assert_allclose(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer),
                               forces.numpy() * kj * 10.0, rtol=1e-8, atol=1e-8)


def test_so3krates_train_trains_the_invariant_model_from_a_yaml_file(tmp_path: Path) -> None:
    from ase.build import molecule

    from so3krates_openmm.cli.train import main as train_main
    from so3krates_openmm.data.formats import save_npz
    from so3krates_openmm.training.synthetic import teacher_dataset

    atoms = molecule("H2O")
    data = save_npz(teacher_dataset(atoms.numbers, atoms.positions, 30, displacement=0.1, force_rms=20.0,
                                    shifts={1: -310.0, 8: -47100.0}), tmp_path / "water.npz")
    config = tmp_path / "invariant.yaml"
    config.write_text(f"data: [{data}]\noutput: {tmp_path / 'run'}\ndegrees: []\nfeatures: 16\nlayers: 1\nheads: 2\n"
                      "radial_basis_size: 8\ncutoff: 4.0\nmax_epochs: 1\ntrain_size: 20\nvalid_size: 5\n"
                      "batch_size: 5\nthreads: 1\nprogress: false\n")
    assert train_main(["--config", str(config), "--no-process-tuning"]) == 0
    assert load_model(tmp_path / "run" / "best_checkpoint.pt").config.degrees == ()
