"""Every protocol on the shipped models (so3krates_openmm/pretrained/*), a few dozen steps each.

Skipped, with the reason, while a system's ``model.pt`` is not committed yet.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from so3krates_openmm.cli.catcher_distance import main as catcher_distance_main
from so3krates_openmm.cli.langevin_nvt import main as langevin_nvt_main
from so3krates_openmm.cli.minima import main as minima_main
from so3krates_openmm.cli.nve import main as nve_main
from so3krates_openmm.cli.ramachandran import main as ramachandran_main
from so3krates_openmm.cli.spectrum import main as spectrum_main
from so3krates_openmm.md.protocols import pretrained_files
from so3krates_openmm.md.reporters import read_csv_log

COMMON = ["--platform", "CPU", "--threads", "1", "--seed", "5", "--no-progress"]


def shipped(system: str):
    files = pretrained_files(system)
    missing = [str(path) for path in files.values() if not path.is_file()]
    return pytest.mark.skipif(bool(missing), reason=f"shipped {system} files not present yet: {missing}")


@shipped("ac_ala3_nhme")
def test_peptide_langevin_stays_stable(tmp_path):
    output = tmp_path / "nvt"
    assert langevin_nvt_main(["--steps", "40", "--log-interval", "10", "--trajectory-interval", "10",
                              "--stability-interval", "10", "--output", str(output), *COMMON]) == 0
    stability = json.loads((output / "stability.json").read_text())
    assert stability["stable"] and stability["max_bond_stretch"] < 1.3
    log = read_csv_log(output / "log.csv")
    assert np.all(np.isfinite(log["potential_energy_kJ/mol"])) and np.all(log["temperature_K"] < 1000)


@pytest.mark.slow  # six model loads and warm-ups: ~2 minutes on a loaded 2-core machine
@shipped("ac_ala3_nhme")
def test_peptide_analysis_protocols(tmp_path):
    assert nve_main(["--steps", "20", "--equilibration-steps", "10", "--log-interval", "5",
                     "--output", str(tmp_path / "nve"), *COMMON]) == 0
    assert json.loads((tmp_path / "nve" / "energy_drift.json").read_text())["n_atoms"] == 42
    assert spectrum_main(["--steps", "40", "--equilibration-steps", "0", "--velocity-interval", "1",
                          "--max-lag-ps", "0.005", "--output", str(tmp_path / "spectrum"), *COMMON]) == 0
    assert (tmp_path / "spectrum" / "spectrum.png").exists()
    assert ramachandran_main(["--steps", "20", "--trajectory-interval", "10", "--output", str(tmp_path / "rama"), *COMMON]) == 0
    angles = np.loadtxt(tmp_path / "rama" / "ramachandran.csv", delimiter=",", skiprows=1)
    assert angles.shape == (2, 7)
    assert minima_main(["--steps", "20", "--snapshot-interval", "10", "--workers", "1", "--max-iterations", "20",
                        "--output", str(tmp_path / "minima"), *COMMON]) == 0
    assert json.loads((tmp_path / "minima" / "minima.json").read_text())["snapshots"] == 2


@shipped("buckyball_catcher")
def test_catcher_ball_stays_in(tmp_path):
    output = tmp_path / "catcher"
    assert catcher_distance_main(["--steps", "20", "--trajectory-interval", "10", "--output", str(output), *COMMON]) == 0
    summary = json.loads((output / "catcher_distance.json").read_text())
    assert summary["ball_atoms"] == 60 and summary["host_atoms"] == 88
    assert abs(summary["max_distance_angstrom"] - summary["start_distance_angstrom"]) < 1.0
