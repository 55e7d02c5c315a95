"""Energy minimisation: OpenMM's L-BFGS, its float64 retry for float32 models that overflow, and the warning path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openmm as mm
import pytest
from openmm import app, unit

from so3krates_openmm.data.structures import Structure, read_structure
from so3krates_openmm.export import export_checkpoint
from so3krates_openmm.md.minimize import (
    AS_GIVEN,
    DESCENT_FIRST,
    FLOAT64_FALLBACK,
    Minimizer,
    float64_system,
)
from so3krates_openmm.md.protocols import pretrained_files
from so3krates_openmm.md.simulation import (
    SimulationSettings,
    build_simulation,
    model_system,
)


def _energy_kj_mol(system: mm.System, positions_nm: np.ndarray) -> float:
    context = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    context.setPositions(positions_nm)
    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


def test_float64_system_casts_torch_modules_and_clones_the_other_forces(peptide_pdb, peptide_gentle_model):
    import torch
    from openmmtorch import TorchForce

    structure = read_structure(peptide_pdb)
    system = model_system(structure, peptide_gentle_model)
    restraint = mm.CustomExternalForce("0.5*(x^2+y^2+z^2)")
    restraint.addParticle(0, [])
    system.addForce(restraint)
    copy = float64_system(system)
    assert copy is not None and copy.getNumForces() == system.getNumForces() == 2
    modules = [TorchForce.cast(force).getModule() for force in copy.getForces() if TorchForce.isinstance(force)]
    assert [{parameter.dtype for parameter in module.parameters()} for module in modules] == [{torch.float64}]
    # The original keeps computing in float32; both give the same energy to float32 precision.
    original = TorchForce.cast(system.getForce(0)).getModule()
    assert {parameter.dtype for parameter in original.parameters()} == {torch.float32}
    positions = structure.positions_angstrom * 0.1
    assert _energy_kj_mol(copy, positions) == pytest.approx(_energy_kj_mol(system, positions), rel=1e-6)
    # Nothing to gain: no TorchForce, or one that already computes in float64.
    assert float64_system(copy) is None
    plain = mm.System()
    plain.addParticle(1.0)
    assert float64_system(plain) is None


def _nan_system() -> mm.System:
    """Two particles pulled towards x = 1 nm through a region (x > 0.5 nm) where the energy is NaN."""
    system = mm.System()
    force = mm.CustomExternalForce("10*(x-1)^2 + sqrt(0.5 - x)")
    for index in range(2):
        system.addParticle(12.0)
        force.addParticle(index, [])
    system.addForce(force)
    return system


def test_minimisation_that_reaches_nan_keeps_the_starting_structure_with_a_warning():
    """No float32 model to retry in float64: the run starts from the structure, with a warning."""
    structure = Structure(
        atomic_numbers=np.array([6, 6]), positions_angstrom=np.array([[0.0, 0.0, 0.0], [0.0, 1.5, 0.0]])
    )
    settings = SimulationSettings(platform="CPU", threads=1, minimize=True, seed=3)
    with pytest.warns(RuntimeWarning, match="unminimised starting structure"):
        simulation = build_simulation(structure, _nan_system(), settings, set_velocities=False)
    positions = simulation.context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    np.testing.assert_allclose(positions, structure.positions_angstrom)
    context = simulation.context
    with pytest.raises(mm.OpenMMException, match="NaN"):
        Minimizer(context, 1.0)()
    np.testing.assert_allclose(
        context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.angstrom),
        structure.positions_angstrom,
    )


#: The catcher's round-1 model (shipped until 2026-12-04): in float32 it overflows where OpenMM's first L-BFGS trial
#: step puts two carbons 0.25 Å apart (its PROVENANCE.md); the round-2 model that replaced it does not.
CATCHER_ROUND1 = Path(__file__).resolve().parents[1] / "datasets" / "buckyball_catcher" / "round1_checkpoint.pt"


@pytest.mark.artifacts
@pytest.mark.skipif(not CATCHER_ROUND1.is_file(), reason="the catcher's round-1 checkpoint is not present")
@pytest.mark.parametrize("kernels", ["reference", "fused"])
def test_float32_overflow_on_the_first_trial_step_is_minimised_in_float64(kernels, tmp_path):
    """A model that overflows in float32 on OpenMM's first L-BFGS step (the catcher's round-1 model) is minimised with
    a float64 copy.

    Both export kinds get the float64 retry (the fused module keeps its weights as buffers, not parameters).
    """
    files = pretrained_files("buckyball_catcher")
    pdb = app.PDBFile(str(files["structure"]))
    structure = read_structure(files["structure"])
    model = export_checkpoint(CATCHER_ROUND1, tmp_path / f"{kernels}.pt", structure=structure, kernels=kernels)
    system = model_system(structure, model)
    context = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    start = np.array(pdb.positions.value_in_unit(unit.nanometer))
    context.setPositions(start)
    start_energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    with pytest.raises(mm.OpenMMException, match="NaN"):
        mm.LocalEnergyMinimizer.minimize(context, 10.0, 0)
    context.setPositions(start)
    assert Minimizer(context, 10.0)() == FLOAT64_FALLBACK
    state = context.getState(getEnergy=True, getPositions=True)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    moved = np.linalg.norm(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer) - start, axis=1)
    # The GFN2-xTB-relaxed start is close to the model's minimum: a small, finite relaxation.
    assert np.isfinite(energy) and start_energy - 5.0 < energy < start_energy and moved.max() < 0.01
    # A System that minimises without trouble is minimised as given.
    assert Minimizer(context, 10.0)() == AS_GIVEN


@pytest.mark.artifacts
@pytest.mark.skipif(
    not all(path.is_file() for path in pretrained_files("ac_ala3_nhme").values()),
    reason="shipped ac_ala3_nhme model not present",
)
def test_line_search_that_ends_above_the_start_is_redone_after_steepest_descent():
    """Frame 650 (65 ps) of the shipped peptide model's 500 K run: OpenMM's L-BFGS alone stops 760 kJ/mol above it."""
    import mdtraj

    files = pretrained_files("ac_ala3_nhme")
    run = Path(__file__).resolve().parents[1] / "bench" / "stability" / "ac_ala3_nhme_500K" / "trajectory.dcd"
    snapshot = mdtraj.load_frame(str(run), 650, top=str(files["structure"])).xyz[0]
    system = model_system(read_structure(files["structure"]), files["model"])
    context = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("CPU"), {"Threads": "1"})

    def energy_and_rms_force() -> tuple[float, float]:
        state = context.getState(getEnergy=True, getForces=True)
        forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        return state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole), float(np.sqrt(np.mean(forces**2)))

    context.setPositions(snapshot)
    start_energy, _ = energy_and_rms_force()
    mm.LocalEnergyMinimizer.minimize(context, 1.0, 0)
    plain_energy, plain_rms_force = energy_and_rms_force()
    assert plain_energy > start_energy + 100.0 and plain_rms_force > 1000.0
    context.setPositions(snapshot)
    assert Minimizer(context, 1.0)().startswith(DESCENT_FIRST)
    energy, rms_force = energy_and_rms_force()
    assert energy < start_energy - 100.0 and rms_force < 10.0
