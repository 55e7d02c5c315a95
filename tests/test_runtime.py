"""Process-wide settings only through runtime.configure_process: importing the library changes nothing global,
the command-line entry points tune the process (before PyTorch loads) unless given --no-process-tuning.
Each case is a fresh process: mallopt and OpenMP settings cannot be undone within one."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def run_child(code: str) -> dict:
    """Run ``code`` in a fresh interpreter without the variables the tuning looks at; its last stdout line is JSON."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("MALLOC_") and key not in ("SO3KRATES_MALLOPT", "OMP_WAIT_POLICY")}
    env["PYTHONPATH"] = str(REPOSITORY)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_every_module_changes_no_process_setting():
    code = """
import json, os, pkgutil, importlib, sys
import torch
import openmmml  # first: importing so3krates_openmm.openmmml_potential alone re-enters it via openmm-ml's entry point
before = dict(os.environ), torch.get_num_threads(), torch.get_num_interop_threads()
import so3krates_openmm
modules = [m.name for m in pkgutil.walk_packages(so3krates_openmm.__path__, "so3krates_openmm.")
           if not m.name.endswith("__main__")]
for name in modules:
    importlib.import_module(name)
from so3krates_openmm import memory
after = dict(os.environ), torch.get_num_threads(), torch.get_num_interop_threads()
changed = sorted(k for k in set(before[0]) | set(after[0]) if before[0].get(k) != after[0].get(k))
print(json.dumps({"modules": len(modules), "changed_env": changed, "threads_same": before[1:] == after[1:],
                  "malloc_applied": memory._applied}))
"""
    report = run_child(code)
    assert report["modules"] > 40
    assert report["changed_env"] == []
    assert report["threads_same"]
    assert report["malloc_applied"] is None  # mallopt never called


def test_command_modules_load_neither_torch_nor_openmm():
    # the entry points set OMP_WAIT_POLICY before PyTorch initialises OpenMP: importing them must not load it
    code = """
import json, sys
import so3krates_openmm.cli.train, so3krates_openmm.cli.export, so3krates_openmm.cli.eval, so3krates_openmm.cli.data
import so3krates_openmm.cli.langevin_nvt, so3krates_openmm.cli.nve, so3krates_openmm.cli.minima
print(json.dumps({"torch": "torch" in sys.modules, "openmm": "openmm" in sys.modules}))
"""
    assert run_child(code) == {"torch": False, "openmm": False}


@pytest.mark.parametrize("command", ["langevin_nvt", "train"])
def test_entry_points_tune_the_process_and_the_flag_turns_it_off(command):
    template = """
import json, os, sys
from so3krates_openmm.cli.{command} import main
try:
    main([{flags}"--help"])
except SystemExit:
    pass
from so3krates_openmm import memory
print(json.dumps({{"omp": os.environ.get("OMP_WAIT_POLICY"), "malloc": memory._applied}}))
"""
    tuned = run_child(template.format(command=command, flags=""))
    assert tuned == {"omp": "PASSIVE", "malloc": True if GLIBC else False}
    untouched = run_child(template.format(command=command, flags='"--no-process-tuning", '))
    assert untouched == {"omp": None, "malloc": None}


def test_configure_process_keeps_a_users_setting():
    code = """
import json, os
os.environ["OMP_WAIT_POLICY"] = "ACTIVE"
from so3krates_openmm.runtime import configure_process
applied = configure_process(malloc=False)
print(json.dumps({"omp": os.environ["OMP_WAIT_POLICY"], "applied": applied}))
"""
    report = run_child(code)
    assert report == {"omp": "ACTIVE", "applied": {"omp_passive": False, "malloc": False, "openblas": False}}


@pytest.mark.parametrize("command", ["train", "export", "data", "eval", "langevin_nvt", "nve", "spectrum",
                                     "catcher_distance", "ramachandran", "minima", "mlmm_solvated",
                                     "stability_report"])
def test_every_command_module_answers_help(command):
    # python -m so3krates_openmm.cli.<command> and the console script of setup.py run the same main()
    completed = subprocess.run([sys.executable, "-m", f"so3krates_openmm.cli.{command}", "--help"],
                               env={**os.environ, "PYTHONPATH": str(REPOSITORY)}, capture_output=True, text=True,
                               timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "usage:" in completed.stdout
