"""Time-step validation: the analysis functions on crafted data, and bench/timestep/validate.py on a tiny run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from so3krates_openmm.md.energy import energy_drift
from so3krates_openmm.md.timestep import (
    DistributionDifference,
    compare_distributions,
    distance_edges,
    drift_ratio,
    drift_standard_error,
    jensen_shannon_divergence,
    ramachandran_histograms,
    timestep_verdict,
)

VALIDATE = Path(__file__).resolve().parents[1] / "bench" / "timestep" / "validate.py"


def test_a_known_drift_and_fluctuation_are_recovered() -> None:
    time_ps = np.linspace(0.0, 20.0, 2001)
    wiggle = np.where(np.arange(len(time_ps)) % 2 == 0, 0.3, -0.3)  # +-0.3 kJ/mol about the line
    drift = energy_drift(time_ps, -1000.0 + 0.042 * time_ps + wiggle, n_atoms=42)  # 0.042 kJ/mol/ps
    assert drift.drift_kj_mol_per_ns_per_atom == pytest.approx(42.0 / 42, rel=1e-3)  # 1 kJ/mol/ns/atom
    assert drift.residual_std_kj_mol == pytest.approx(0.3, rel=1e-3)
    assert drift.duration_ps == 20.0


def test_drift_standard_error_of_white_noise_matches_the_least_squares_formula() -> None:
    time_ps = np.linspace(0.0, 10.0, 4000)
    sigma, n_atoms = 0.5, 10
    exact = sigma * np.sqrt(12.0 / len(time_ps)) / 10.0 * 1000.0 / n_atoms  # kJ/mol/ns/atom
    rng = np.random.default_rng(1)
    estimates = [drift_standard_error(time_ps, 3.0 * time_ps + rng.normal(0.0, sigma, len(time_ps)), n_atoms)
                 for _ in range(300)]
    assert np.mean(estimates) == pytest.approx(0.92 * exact, rel=0.1)  # E[sample std of 4] = 0.92 sigma
    assert drift_standard_error(time_ps, 3.0 * time_ps, n_atoms) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="2 blocks"):
        drift_standard_error(time_ps[:5], time_ps[:5], n_atoms)


def test_jensen_shannon_divergence_bounds() -> None:
    counts = np.array([[3.0, 0.0, 5.0], [1.0, 1.0, 0.0]])
    assert jensen_shannon_divergence(counts, counts) == 0.0
    assert jensen_shannon_divergence(counts, 7 * counts) == pytest.approx(0.0, abs=1e-15)  # normalised
    assert jensen_shannon_divergence([1, 0], [0, 1]) == pytest.approx(1.0)  # disjoint: 1 bit
    assert 0.0 < jensen_shannon_divergence([2, 1], [1, 2]) < 1.0
    with pytest.raises(ValueError, match="different bins"):
        jensen_shannon_divergence([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="at least one sample"):
        jensen_shannon_divergence([0, 0], [1, 2])


def test_ramachandran_histograms_on_the_torus() -> None:
    phi = np.array([[-170.0, 10.0], [179.9, 30.0], [180.0, -90.0]])
    psi = np.array([[-170.0, 10.0], [-179.0, 30.0], [-180.0, 90.0]])
    histograms = ramachandran_histograms(phi, psi, bin_deg=20.0)
    assert histograms.shape == (2, 18, 18)
    assert histograms[0].sum() == 3 and histograms[1].sum() == 3
    assert histograms[0, 0, 0] == 2  # (-170, -170) and (180 = -180, -180)
    assert histograms[0, 17, 0] == 1  # (179.9, -179)
    assert histograms[1, 9, 9] == 1 and histograms[1, 10, 10] == 1
    with pytest.raises(ValueError, match="divide 360"):
        ramachandran_histograms(phi, psi, bin_deg=25.0)


def test_distributions_compared_with_the_reference_and_its_noise_floor() -> None:
    def histogram(samples):
        return np.histogram(samples, bins=edges)[0][None]

    rng = np.random.default_rng(0)
    reference = rng.normal(5.0, 0.2, size=4000)
    same = rng.normal(5.0, 0.2, size=4000)
    shifted = rng.normal(5.6, 0.2, size=4000)
    edges = distance_edges([reference, same, shifted], 0.05)
    assert edges[0] <= min(reference.min(), shifted.min()) and edges[-1] >= max(reference.max(), shifted.max())
    np.testing.assert_allclose(np.diff(edges), 0.05)
    identical = compare_distributions(reference, reference, histogram)
    assert identical.divergence_bits == 0.0 and identical.within_noise
    assert identical.noise_floor_bits > 0.0  # two halves of a finite sample differ a little
    assert compare_distributions(reference, same, histogram).within_noise
    far = compare_distributions(reference, shifted, histogram)
    assert not far.within_noise and far.divergence_bits > 10 * far.noise_floor_bits
    periodic = np.tile([4.9, 5.1], 50)  # halves identical: no noise at all
    assert compare_distributions(periodic, periodic, histogram).noise_floor_bits == 0.0


def test_verdict_follows_the_rule() -> None:
    close = DistributionDifference(0.01, 0.02, 100, 100)
    assert timestep_verdict(stable_fraction=1.0, drift_ratio=1.9, distributions=close).safe
    verdict = timestep_verdict(stable_fraction=0.5, drift_ratio=2.5,
                               distributions=DistributionDifference(0.05, 0.02, 100, 100))
    assert not verdict.safe and verdict.label == "unsafe" and len(verdict.reasons) == 3
    assert not timestep_verdict(stable_fraction=1.0, drift_ratio=None, distributions=close).safe
    assert not timestep_verdict(stable_fraction=1.0, drift_ratio=float("nan"), distributions=close).safe
    assert drift_ratio(-3.0, 1.5) == 2.0
    assert drift_ratio(0.0, 0.0) == 0.0 and drift_ratio(1.0, 0.0) == float("inf")


@pytest.fixture(scope="module")
def validate():
    spec = importlib.util.spec_from_file_location("timestep_validate", VALIDATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_validation_script_on_a_tiny_run_and_its_continuation(tmp_path: Path, validate, peptide_pdb: Path,
                                                              peptide_amber_xml: Path) -> None:
    arguments = ["--system", "ac_ala3_nhme", "--structure", str(peptide_pdb), "--model", str(peptide_amber_xml),
                 "--platform", "Reference", "--threads", "1", "--ps", "0.06", "--nve-ps", "0.024", "--skip-ps", "0",
                 "--frame-interval-fs", "3", "--nve-log-interval-fs", "1.5", "--checkpoint-interval-ps", "0.03",
                 "--output", str(tmp_path / "runs"), "--summary-dir", str(tmp_path / "summary"), "--no-progress",
                 "--no-process-tuning"]
    assert validate.main([*arguments, "--timesteps-fs", "0.5"]) == 0
    reference_log = tmp_path / "runs" / "nvt_0.5fs" / "log.csv"
    stamp = reference_log.stat().st_mtime_ns
    # Run again with a second time step: the finished reference runs are kept, the new ones added.
    assert validate.main([*arguments, "--timesteps-fs", "0.5", "1.5"]) == 0
    assert reference_log.stat().st_mtime_ns == stamp
    summary = json.loads((tmp_path / "summary" / "summary.json").read_text())
    assert (tmp_path / "summary" / "timestep.png").stat().st_size > 0
    assert summary["system"] == "ac_ala3_nhme" and summary["threads"] == 1 and summary["reference_timestep_fs"] == 0.5
    rows = {row["timestep_fs"]: row for row in summary["timesteps"]}
    assert set(rows) == {0.5, 1.5}
    assert rows[0.5]["hydrogen_mass_amu"] is None and rows[1.5]["hydrogen_mass_amu"] == 3.0
    assert rows[0.5]["steps"] == 120 and rows[1.5]["steps"] == 40
    for row in rows.values():
        assert row["simulated_ps"] == pytest.approx(0.06) and row["nve_ps"] == pytest.approx(0.024)
        assert row["stable_fraction"] == 1.0 and row["complete"] and row["nve_complete"]
        assert np.isfinite(row["nve_drift_kJ_mol_per_atom_per_ns"]) and row["nve_fluctuation_kJ_mol"] > 0
        assert row["nve_drift_standard_error_kJ_mol_per_atom_per_ns"] > 0
        assert row["noise_floor_bits"] >= 0 and row["ns_per_day"] > 0 and row["verdict"] in ("safe", "unsafe")
        assert row["frames_compared"] == 20  # a frame every 3 fs over 60 fs
        assert row["potential_energy_noise_floor_bits"] >= 0 and row["potential_energy_std_kJ_mol"] > 0
    assert rows[0.5]["potential_energy_divergence_bits"] == 0.0 and rows[0.5]["potential_energy_mean_shift_kJ_mol"] == 0
    assert 0.0 <= rows[1.5]["potential_energy_divergence_bits"] <= 1.0
    assert np.isfinite(rows[1.5]["potential_energy_mean_shift_kJ_mol"])
    assert rows[0.5]["drift_ratio_to_reference"] == 1.0 and rows[0.5]["distribution_divergence_bits"] == 0.0
    assert rows[1.5]["drift_ratio_to_reference"] == pytest.approx(
        abs(rows[1.5]["nve_drift_kJ_mol_per_atom_per_ns"] / rows[0.5]["nve_drift_kJ_mol_per_atom_per_ns"]))
    run = json.loads((tmp_path / "runs" / "nvt_1.5fs" / "run.json").read_text())
    assert run["settings"]["hydrogen_mass_amu"] == 3.0 and run["settings"]["temperature_K"] == 500.0
    nve = json.loads((tmp_path / "runs" / "nve_1.5fs" / "run.json").read_text())
    assert nve["settings"]["ensemble"] == "nve" and nve["final_step"] == 16
    # --analyse-only writes the same summary from the runs and runs nothing.
    view = tmp_path / "view"
    assert validate.main([*arguments, "--timesteps-fs", "0.5", "1.5", "--analyse-only",
                          "--summary-dir", str(view)]) == 0
    assert json.loads((view / "summary.json").read_text())["timesteps"] == summary["timesteps"]
    assert reference_log.stat().st_mtime_ns == stamp


def test_validation_script_rejects_intervals_that_are_not_whole_steps(validate, capsys) -> None:
    with pytest.raises(SystemExit):
        validate.parse_args(["--system", "ac_ala3_nhme", "--timesteps-fs", "0.5", "2.0", "--frame-interval-fs", "5"])
    assert "not a multiple of the time step 2 fs" in capsys.readouterr().err
