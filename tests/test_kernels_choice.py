"""The kind of module a checkpoint runs as (``kernels``) in create_force/create_system, the MD protocols
(``--kernels``) and model_system; an exported .pt keeps its own kind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openmm as mm
import pytest
from openmm import unit

from so3krates_openmm import create_system
from so3krates_openmm.cli.langevin_nvt import main as langevin_nvt_main
from so3krates_openmm.data.structures import read_structure
from so3krates_openmm.md.simulation import model_system
from so3krates_openmm.openmm_force import create_force, positions_nm

PEPTIDE = Path(__file__).resolve().parents[1] / "so3krates_openmm" / "pretrained" / "ac_ala3_nhme"


def energy_and_forces(system: mm.System, positions) -> tuple[float, np.ndarray]:
    context = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True)
    return (state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))


def test_fused_checkpoint_through_create_system_equals_reference() -> None:
    structure = read_structure(PEPTIDE / "structure.pdb")
    checkpoint = PEPTIDE / "best_checkpoint.pt"
    results = {kind: energy_and_forces(create_system(structure, checkpoint, dtype="float64", kernels=kind),
                                       positions_nm(structure))
               for kind in ("reference", "fused")}
    (e_ref, f_ref), (e_fused, f_fused) = results["reference"], results["fused"]
    assert e_fused == pytest.approx(e_ref, rel=1e-10)
    assert np.max(np.abs(f_fused - f_ref)) <= 1e-8 * np.max(np.abs(f_ref))
    default = energy_and_forces(create_system(structure, checkpoint, dtype="float64"), positions_nm(structure))
    assert default[0] == e_ref  # no kernels: the reference module, as before


def test_exported_pt_keeps_its_kind(peptide_pdb: Path, peptide_gentle_model: Path) -> None:
    numbers = read_structure(peptide_pdb).atomic_numbers
    assert isinstance(create_force(peptide_gentle_model, numbers, kernels="reference"), mm.Force)
    with pytest.raises(ValueError, match=r"exported with kernels 'reference', not 'fused'.*so3krates-export"):
        create_force(peptide_gentle_model, numbers, kernels="fused")
    with pytest.raises(ValueError, match="unknown kernels 'fast'"):
        create_force(peptide_gentle_model, numbers, kernels="fast")


def test_pythonforce_runs_the_scripted_fast_module(checkpoint: Path, molecule) -> None:
    eager = energy_and_forces(create_system(molecule, checkpoint, backend="pythonforce", dtype="float64"),
                              positions_nm(molecule))
    analytic = energy_and_forces(create_system(molecule, checkpoint, backend="pythonforce", dtype="float64",
                                               kernels="analytic"), positions_nm(molecule))
    assert analytic[0] == pytest.approx(eager[0], rel=1e-10)
    np.testing.assert_allclose(analytic[1], eager[1], rtol=1e-8, atol=1e-8 * np.max(np.abs(eager[1])))
    with pytest.raises(ValueError, match="torch.compile needs the eager model"):
        create_system(molecule, checkpoint, backend="pythonforce", kernels="fused", compile_model=True)


def test_a_serialised_system_takes_no_kernels(peptide_pdb: Path, peptide_amber_xml: Path) -> None:
    with pytest.raises(ValueError, match="serialised OpenMM System: leave kernels unset"):
        model_system(read_structure(peptide_pdb), peptide_amber_xml, kernels="fused")


def test_protocol_runs_a_checkpoint_with_fused_kernels(tmp_path: Path, capsys) -> None:
    common = ["--system", "ac_ala3_nhme", "--steps", "4", "--no-progress", "--threads", "1", "--seed", "3",
              "--no-minimize", "--log-interval", "2", "--no-process-tuning"]
    output = tmp_path / "fused"
    code = langevin_nvt_main([*common, "--model", str(PEPTIDE / "best_checkpoint.pt"), "--kernels", "fused",
                              "--output", str(output)])
    assert code == 0
    assert "kernels: fused" in (output / "protocol_resolved.yaml").read_text()
    assert json.loads((output / "run.json").read_text())["final_step"] == 4
    # The shipped model.pt is a reference export: asking for another kind is a one-line error (exit code 2).
    code = langevin_nvt_main([*common, "--kernels", "fused", "--output", str(tmp_path / "pt")])
    assert code == 2
    assert "exported with kernels 'reference', not 'fused'" in capsys.readouterr().err
