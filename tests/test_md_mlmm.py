"""ML/MM protocol: the peptide in SO3krates, TIP3P water in amber14, periodic."""

from __future__ import annotations

import json

import numpy as np

from so3krates_openmm.cli.mlmm_solvated import main as mlmm_solvated_main
from so3krates_openmm.md.mlmm import solvated_mixed_system
from so3krates_openmm.md.reporters import read_csv_log


def test_solvated_mixed_system_models_only_the_peptide_with_so3krates(peptide_pdb, peptide_gentle_model):
    checkpoint = peptide_gentle_model.parent / "random_checkpoint.pt"
    setup = solvated_mixed_system(peptide_pdb, checkpoint, padding_nm=0.5)
    assert setup.ml_atoms == list(range(42))
    assert setup.topology.getNumAtoms() > 300 and setup.system.usesPeriodicBoundaryConditions()
    residues = {residue.name for residue in setup.topology.residues()}
    assert {"ACE", "ALA", "NME", "HOH"} <= residues
    names = [type(force).__name__ for force in setup.system.getForces()]
    assert "NonbondedForce" in names and "Force" in names  # the TorchForce comes back as a plain Force proxy


def test_mlmm_protocol_runs_and_writes_its_log(tmp_path, peptide_pdb, peptide_gentle_model, capsys):
    output = tmp_path / "mlmm"
    code = mlmm_solvated_main([
        "--structure", str(peptide_pdb), "--checkpoint", str(peptide_gentle_model.parent / "random_checkpoint.pt"),
        "--padding-nm", "0.5", "--steps", "20", "--log-interval", "10", "--trajectory-interval", "10",
        "--no-stability-check", "--no-minimize", "--platform", "CPU", "--threads", "1", "--seed", "5", "--no-progress",
        "--output", str(output),
    ])
    assert code == 0
    assert "42 ML atoms" in capsys.readouterr().out
    log = read_csv_log(output / "log.csv")
    assert log["step"].tolist() == [10, 20] and np.all(np.isfinite(log["potential_energy_kJ/mol"]))
    assert json.loads((output / "run.json").read_text())["final_step"] == 20


def test_mlmm_protocol_rejects_a_missing_checkpoint(tmp_path, peptide_pdb, capsys):
    code = mlmm_solvated_main(["--structure", str(peptide_pdb), "--checkpoint", str(tmp_path / "none.pt"),
                               "--output", str(tmp_path / "x")])
    assert code == 2 and "none.pt" in capsys.readouterr().err
