"""A short run of every protocol in md_protocols/ (through the scripts' entry points)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from so3krates_openmm.cli.catcher_distance import main as catcher_distance_main
from so3krates_openmm.cli.common import EXIT_BAD_INPUT
from so3krates_openmm.cli.langevin_nvt import main as langevin_nvt_main
from so3krates_openmm.cli.minima import main as minima_main
from so3krates_openmm.cli.nve import main as nve_main
from so3krates_openmm.cli.ramachandran import main as ramachandran_main
from so3krates_openmm.cli.spectrum import main as spectrum_main
from so3krates_openmm.data.trajectory import read_dcd
from so3krates_openmm.md.report import markdown_table, summarize_run
from so3krates_openmm.md.reporters import read_csv_log

QUIET = ["--no-progress", "--platform", "Reference", "--threads", "1", "--seed", "11"]


def test_langevin_nvt_200_steps_stay_finite_and_write_everything(tmp_path, peptide_pdb, peptide_gentle_model, capsys):
    output = tmp_path / "nvt"
    code = langevin_nvt_main([
        "--structure", str(peptide_pdb), "--model", str(peptide_gentle_model), "--steps", "200",
        "--log-interval", "20", "--trajectory-interval", "50", "--checkpoint-interval", "100",
        "--no-minimize", "--no-stability-check", "--output", str(output), *QUIET,
    ])
    assert code == 0
    log = read_csv_log(output / "log.csv")
    assert log["step"].tolist() == list(range(20, 201, 20))
    for column in ("potential_energy_kJ/mol", "kinetic_energy_kJ/mol", "temperature_K", "ns_per_day"):
        assert np.all(np.isfinite(log[column])), column
    np.testing.assert_allclose(log["time_ps"], log["step"] * 0.5e-3)
    assert np.all(log["temperature_K"] > 50) and np.all(log["temperature_K"] < 1000)
    trajectory = read_dcd(output / "trajectory.dcd")
    assert trajectory.n_frames == 4 and np.all(np.isfinite(trajectory.positions_angstrom))
    assert trajectory.frame_interval_ps == pytest.approx(0.025, rel=1e-6)
    for name in ("final_state.xml", "final.pdb", "checkpoint.zip", "run.json", "energy.png"):
        assert (output / name).stat().st_size > 0, name
    info = json.loads((output / "run.json").read_text())
    assert info["seed"] == 11 and info["final_step"] == 200 and info["platform"] == "Reference"
    assert "200/200 steps on Reference, seed 11" in capsys.readouterr().out
    row = summarize_run(output)
    assert row["steps"] == 200 and row["simulated_ps"] == pytest.approx(0.1) and row["frames"] == 4
    assert row["bonds"]["C-H"]["bonds"] == 18 and row["bonds"]["N-H"]["bonds"] == 4
    assert "c60_distance_angstrom" not in row and "| nvt | 300 | 0.5 | 0.1 |" in markdown_table([row])
    # The same directory as it was while running (no run.json or stability.json yet): summarised from
    # its checkpoint and log, marked in progress; a directory that is no run is named in the error.
    running = tmp_path / "running"
    shutil.copytree(output, running, ignore=shutil.ignore_patterns("run.json", "stability.json"))
    row = summarize_run(running)
    assert row["in_progress"] and row["steps"] == 200 and row["stable_fraction"] is None and row["frames"] == 4
    assert row["ns_per_day"] == pytest.approx(float(np.median(log["ns_per_day"])))
    assert "| running | 300 | 0.5 | 0.1 |" in markdown_table([row]) and "| in progress |" in markdown_table([row])
    with pytest.raises(FileNotFoundError, match="neither run.json .* nor checkpoint.zip"):
        summarize_run(tmp_path)
    # A second run into the same directory must not silently overwrite it.
    again = langevin_nvt_main(["--structure", str(peptide_pdb), "--model", str(peptide_gentle_model),
                               "--steps", "10", "--output", str(output), *QUIET])
    assert again == 2 and "--resume" in capsys.readouterr().err


def test_nve_drift_is_small_for_a_conservative_force_field(tmp_path, peptide_pdb, peptide_amber_xml):
    output = tmp_path / "nve"
    code = nve_main([
        "--structure", str(peptide_pdb), "--model", str(peptide_amber_xml), "--steps", "2000",
        "--equilibration-steps", "200", "--log-interval", "10", "--output", str(output), *QUIET,
    ])
    assert code == 0
    drift = json.loads((output / "energy_drift.json").read_text())
    assert drift["n_atoms"] == 42 and drift["n_points"] == 200
    assert drift["duration_ps"] == pytest.approx(0.995)
    # amber14 at 0.5 fs conserves energy: over 1 ps the fit is dominated by the fluctuation
    # (~0.05 kJ/mol); 10 kJ/mol/ns/atom would be a 0.4 kJ/mol rise, against ~150 kJ/mol kinetic energy.
    assert abs(drift["drift_kj_mol_per_ns_per_atom"]) < 10.0
    assert drift["residual_std_kj_mol"] < 0.5
    log = read_csv_log(output / "log.csv")
    assert np.ptp(log["total_energy_kJ/mol"]) < 0.05 * np.ptp(log["potential_energy_kJ/mol"])
    assert (output / "energy_drift.png").stat().st_size > 10_000
    assert (output / "equilibration" / "final_state.xml").exists()
    # Analysis only, from the existing log:
    assert nve_main(["--structure", str(peptide_pdb), "--log", str(output / "log.csv"),
                     "--output", str(tmp_path / "again")]) == 0
    assert json.loads((tmp_path / "again" / "energy_drift.json").read_text()) == drift


def test_spectrum_has_the_bond_stretch_peaks(tmp_path, peptide_pdb, peptide_amber_xml):
    output = tmp_path / "spectrum"
    code = spectrum_main([
        "--structure", str(peptide_pdb), "--model", str(peptide_amber_xml), "--steps", "4000",
        "--equilibration-steps", "200", "--velocity-interval", "2", "--max-lag-ps", "0.5",
        "--output", str(output), *QUIET,
    ])
    assert code == 0
    with open(output / "spectrum.csv") as handle:
        assert "integrator velocities" in handle.readline()
        rows = list(csv.DictReader(handle))
    wavenumber = np.array([float(r["wavenumber_cm-1"]) for r in rows])
    intensity = np.array([float(r["intensity"]) for r in rows])
    assert 3990 < wavenumber.max() <= 4000  # grid spacing 8.3 cm^-1 for a 0.5 ps VACF
    # X-H stretches of amber14 (C-H, N-H) lie between 2800 and 3700 cm^-1, far above the mean spectrum.
    stretch = (wavenumber > 2800) & (wavenumber < 3700)
    gap = (wavenumber > 2000) & (wavenumber < 2600)
    assert intensity[stretch].max() > 10 * intensity[gap].max()
    assert (output / "spectrum.png").exists() and (output / "vacf.csv").exists()
    # From positions (finite differences of the DCD) the X-H band is still there, if damped.
    assert spectrum_main(["--structure", str(peptide_pdb), "--dcd", str(output / "trajectory.dcd"),
                          "--max-lag-ps", "0.2", "--output", str(tmp_path / "from_dcd")]) == 0
    assert "finite differences" in (tmp_path / "from_dcd" / "spectrum.csv").read_text().splitlines()[0]


def test_catcher_distance_run_and_existing_dcd(tmp_path, catcher_xyz, catcher_gentle_model):
    output = tmp_path / "catcher"
    code = catcher_distance_main([
        "--structure", str(catcher_xyz), "--model", str(catcher_gentle_model), "--steps", "40",
        "--trajectory-interval", "10", "--no-minimize", "--no-stability-check", "--output", str(output), *QUIET,
    ])
    assert code == 0
    summary = json.loads((output / "catcher_distance.json").read_text())
    assert summary["ball_atoms"] == 60 and summary["host_atoms"] == 12 and summary["frames"] == 4
    assert summary["start_distance_angstrom"] == pytest.approx(6.0, abs=1e-6)
    assert 5.0 < summary["min_distance_angstrom"] <= summary["max_distance_angstrom"] < 7.0
    table = np.loadtxt(output / "catcher_distance.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(table[:, 0], [0.005, 0.010, 0.015, 0.020])
    assert (output / "catcher_distance.png").exists()
    assert summarize_run(output)["c60_distance_angstrom"]["max"] == pytest.approx(summary["max_distance_angstrom"])
    assert catcher_distance_main(["--structure", str(catcher_xyz), "--dcd", str(output / "trajectory.dcd"),
                                  "--output", str(tmp_path / "again")]) == 0
    again = np.loadtxt(tmp_path / "again" / "catcher_distance.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(again, table)


def test_ramachandran_three_alanines(tmp_path, peptide_pdb, peptide_amber_xml):
    output = tmp_path / "rama"
    code = ramachandran_main([
        "--structure", str(peptide_pdb), "--model", str(peptide_amber_xml), "--steps", "400",
        "--trajectory-interval", "20", "--output", str(output), *QUIET,
    ])
    assert code == 0
    with open(output / "ramachandran.csv") as handle:
        header = handle.readline().strip().split(",")
    assert header == ["time_ps", "phi_ALA2_deg", "psi_ALA2_deg", "phi_ALA3_deg", "psi_ALA3_deg",
                      "phi_ALA4_deg", "psi_ALA4_deg"]
    angles = np.loadtxt(output / "ramachandran.csv", delimiter=",", skiprows=1)
    assert angles.shape == (20, 7)
    assert np.all(np.abs(angles[:, 1:]) <= 180.0)
    assert np.all(np.std(angles[:, 1:], axis=0) > 0.1)  # the backbone moves
    assert (output / "ramachandran.png").stat().st_size > 10_000


def test_minima_in_two_worker_processes(tmp_path, peptide_pdb, peptide_amber_xml):
    output = tmp_path / "minima"
    code = minima_main([
        "--structure", str(peptide_pdb), "--model", str(peptide_amber_xml), "--temperature", "600",
        "--steps", "3000", "--snapshot-interval", "500", "--workers", "2", "--rmsd-threshold", "0.05",
        "--output", str(output), *QUIET,
    ])
    assert code == 0
    summary = json.loads((output / "minima.json").read_text())
    assert summary["snapshots"] == 6 and summary["workers"] == 2
    assert summary["minimisation_worker_seconds"] > 0.0
    with open(output / "minima.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == summary["distinct_minima"] >= 1
    assert sum(int(r["n_snapshots"]) for r in rows) + summary["rejected_snapshots"] == 6
    energies = [float(r["energy_kJ/mol"]) for r in rows]
    assert energies == sorted(energies) and float(rows[0]["relative_energy_kJ/mol"]) == 0.0
    # Minimised energies lie below every snapshot's MD energy at 600 K.
    md_log = read_csv_log(output / "md" / "log.csv")
    assert max(energies) < md_log["potential_energy_kJ/mol"].min()
    assert (output / "minima.pdb").read_text().count("MODEL") == len(rows)
    assert (output / "minima_energies.png").exists()

    # Minimise every second frame of the run's own trajectory instead of running MD again.
    rerun = tmp_path / "from_dcd"
    arguments = ["--structure", str(peptide_pdb), "--model", str(peptide_amber_xml),
                 "--dcd", str(output / "md" / "trajectory.dcd"), "--workers", "1", "--rmsd-threshold", "0.05",
                 "--output", str(rerun), *QUIET]
    assert minima_main([*arguments, "--snapshot-interval", "1000"]) == 0
    assert json.loads((rerun / "minima.json").read_text())["snapshots"] == 3
    assert not (rerun / "md").exists()
    assert minima_main([*arguments, "--snapshot-interval", "700"]) == EXIT_BAD_INPUT

    # Killed while minimising: the journal keeps the snapshots done (the last line cut by the kill);
    # --resume minimises only the rest and ends with the same minima.
    journal = rerun / "minimised_snapshots.jsonl"
    lines = journal.read_text().splitlines()
    assert len(lines) == 4 and len(json.loads(lines[0])["header"]["steps"]) == 3
    expected = (rerun / "minima.csv").read_text()
    kept = json.loads(lines[1])
    journal.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:40])
    (rerun / "minima.csv").unlink()
    # Neither --resume nor --overwrite.
    assert minima_main([*arguments, "--snapshot-interval", "1000"]) == EXIT_BAD_INPUT
    assert minima_main([*arguments, "--snapshot-interval", "1000", "--resume"]) == 0
    assert (rerun / "minima.csv").read_text() == expected
    entries = [json.loads(line) for line in journal.read_text().splitlines()[1:]]
    assert sorted(entry["key"] for entry in entries) == ["0", "1", "2"]  # each snapshot once
    assert entries[0] == kept  # the snapshot minimised before the kill was not redone
    # A journal of other settings is refused, not mixed in.
    other_settings = [*arguments, "--snapshot-interval", "1000", "--resume", "--max-iterations", "5"]
    assert minima_main(other_settings) == EXIT_BAD_INPUT
    assert minima_main([*arguments, "--snapshot-interval", "1000", "--overwrite", "--max-iterations", "5"]) == 0


def test_langevin_backends_torchforce_and_pythonforce_give_the_same_run(tmp_path, peptide_pdb, peptide_gentle_model):
    logs = {}
    for backend in ("torchforce", "pythonforce"):
        output = tmp_path / backend
        code = langevin_nvt_main([
            "--structure", str(peptide_pdb), "--model", str(peptide_gentle_model), "--steps", "40",
            "--log-interval", "10", "--trajectory-interval", "20", "--no-minimize", "--no-stability-check",
            "--backend", backend, "--output", str(output), *QUIET,
        ])
        assert code == 0
        logs[backend] = read_csv_log(output / "log.csv")
    for column in ("potential_energy_kJ/mol", "kinetic_energy_kJ/mol"):
        np.testing.assert_allclose(logs["pythonforce"][column], logs["torchforce"][column], rtol=1e-6)
