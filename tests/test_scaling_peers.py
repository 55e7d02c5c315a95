"""bench/scaling_peers.py on tiny water clusters: SO3krates timed, peers without venvs reported, a peer that runs
out of time not tried at larger sizes, slopes and ratios in the JSON and the figures."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "scaling_peers.py"


def load_script():
    spec = importlib.util.spec_from_file_location("scaling_peers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scaling_against_peers_smoke(tmp_path: Path, monkeypatch) -> None:
    script = load_script()
    compare = sys.modules["compare"]
    calls = []
    snapshots = []
    output = tmp_path / "out"

    def fake_run_peer(peer, paths, threads, repeats, warmup, extra_args=(), timeout_s=0.0):
        atoms = int(paths[0].stem.split("_")[1])
        calls.append((peer, atoms, tuple(extra_args)))
        if peer == "nequip":
            # the points so far are on disk before the next peer starts (a stopped run keeps them)
            partial = json.loads((output / "scaling_peers.json").read_text())
            snapshots.append((partial["complete"], sorted({r["model"] for r in partial["records"]})))
            raise FileNotFoundError(f"the {peer} venv is missing (x): create it with `bash setup_venvs.sh {peer}`")
        model = extra_args[1]
        if model == "L1" and atoms > 12:  # each model has its own limit: L0 goes on
            raise subprocess.TimeoutExpired("mace_step.py", timeout_s)
        return {"versions": {"mace-torch": "test"}, "results": [
            {"model": f"mace-{model}", "structure": paths[0].stem, "atoms": atoms, "openmm_step_ms": 3.0 * atoms}]}

    monkeypatch.setattr(compare, "run_peer", fake_run_peer)
    assert script.main(["--molecules", "2", "4", "8", "--threads", "1", "--kernels", "reference", "--repeats", "3",
                        "--warmup", "1", "--time-limit", "5", "--fit-from-atoms", "6", "--output", str(output)]) == 0
    result = json.loads((output / "scaling_peers.json").read_text())
    assert snapshots == [(False, ["mace-L0", "mace-L1", "so3krates-paper"])] and result["complete"] is True
    so3krates = sorted((r["atoms"], r["openmm_step_ms"]) for r in result["records"] if r["model"] == "so3krates-paper")
    assert [atoms for atoms, _ in so3krates] == [6, 12, 24] and all(ms > 0 for _, ms in so3krates)
    # MACE L=1: timed at 6 and 12 atoms, over the limit at 24 (said so); L=0 at all three; NequIP: no venv.
    assert result["peers"]["mace L1, 1 thread(s)"]["stopped_at_atoms"] == 24
    assert "time limit of 5 s" in result["peers"]["mace L1, 1 thread(s)"]["reason"]
    assert "stopped_at_atoms" not in result["peers"]["mace L0, 1 thread(s)"]
    assert "venv is missing" in result["peers"]["nequip lmax1, 1 thread(s)"]["reason"]
    assert [(c[0], c[2][1], c[1]) for c in calls] == [("mace", "L0", 6), ("mace", "L0", 12), ("mace", "L0", 24),
                                                      ("mace", "L1", 6), ("mace", "L1", 12), ("mace", "L1", 24),
                                                      ("nequip", "lmax1", 6)]
    assert calls[0][2] == ("--models", "L0", "--no-bare")
    ratios = dict((n, r) for n, r in result["ratios"]["1"]["mace-L0"])
    for atoms, ms in so3krates[:2]:
        assert np.isclose(ratios[atoms], 3.0 * atoms / ms)
    assert result["slopes"]["1"]["mace-L0"] is not None and abs(result["slopes"]["1"]["mace-L0"] - 1.0) < 1e-9
    for name in ("scaling_peers.png", "scaling_peers_ratio.png"):
        assert (output / name).stat().st_size > 5_000
