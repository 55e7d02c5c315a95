"""``pip install .`` into a fresh virtual environment, then the package used from outside the checkout.

The sources that ``setup.py`` packages are copied to a temporary folder and installed with
``pip install --no-deps --no-build-isolation`` (nothing is downloaded) into a new venv that sees the
dependencies of the running environment (``sys.prefix``'s site-packages, without this project's own
installation) through a ``.pth`` file. From a temporary working directory the new venv's Python must
import the installed copy, run every console script's ``--help``, create a System through the openmm-ml
entry point ``so3krates`` and load the shipped showcase files (checkpoint, exported model, structure) through the
package, and the installed package holds those files and not the data sets or training records.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
#: What the installed package must not hold: data sets, resumable partial files, optimiser state.
NOT_SHIPPED = ("*.npz", "last_checkpoint.pt", "training")
#: What it ships for each pretrained system.
SHIPPED = ("best_checkpoint.pt", "model.pt", "structure.pdb", "structure.xyz", "DATA.md", "PROVENANCE.md")


def console_scripts() -> list[str]:
    """The console script names declared in ``setup.py`` (read with :mod:`ast`, not by running it)."""
    tree = ast.parse((REPOSITORY / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    return [entry.split("=")[0].strip() for entry in ast.literal_eval(value)]
    raise AssertionError("setup.py declares no console_scripts")


def dependencies_folder(destination: Path) -> Path:
    """A folder of links to the running environment's installed packages, this project's own left out."""
    destination.mkdir()
    for site_packages in site.getsitepackages():
        for entry in Path(site_packages).iterdir():
            name = entry.name.lower()
            if name.startswith(("so3krates", "__editable__")) or name.endswith(".pth") or name == "__pycache__":
                continue
            link = destination / entry.name
            if not link.exists():
                link.symlink_to(entry)
    return destination


def clean_environment() -> dict[str, str]:
    """The environment without the variables that would put the checkout on the path."""
    return {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


@pytest.mark.slow
def test_pip_install_outside_the_checkout(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(REPOSITORY / "so3krates_openmm", source / "so3krates_openmm",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("setup.py", "README.md", "LICENSE"):
        shutil.copy2(REPOSITORY / name, source / name)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    venv_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                    check=True, capture_output=True, text=True).stdout.strip())
    (venv_site / "dependencies.pth").write_text(f"{dependencies_folder(tmp_path / 'dependencies')}\n")

    environment = clean_environment()
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", str(source)],
        cwd=tmp_path, env=environment, capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    for script in console_scripts():
        result = subprocess.run([str(venv / "bin" / script), "--help"], cwd=workdir, env=environment,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0 and "usage" in result.stdout.lower(), f"{script} --help: {result.stderr}"

    check = textwrap.dedent(
        """
        import json, sys
        from importlib import metadata, resources
        from pathlib import Path

        import numpy as np
        import openmm

        import so3krates_openmm
        from so3krates_openmm.data.structures import read_structure
        from so3krates_openmm.export import read_export_metadata
        from so3krates_openmm.model.checkpoint import load_model
        from so3krates_openmm.openmm_force import create_system, positions_nm

        from openmmml import MLPotential  # loads the plugins of the entry-point group, as openmm-ml does

        (entry_point,) = [point for point in metadata.entry_points(group="openmmml.potentials")
                          if point.name == "so3krates"]
        pretrained = resources.files(so3krates_openmm) / "pretrained"
        systems = {}
        for system in sorted(path.name for path in Path(str(pretrained)).iterdir() if path.is_dir()):
            folder = Path(str(pretrained / system))
            structure = read_structure(folder / "structure.pdb")
            model = load_model(folder / "best_checkpoint.pt")
            context = openmm.Context(create_system(structure, folder / "model.pt"), openmm.VerletIntegrator(0.001),
                                     openmm.Platform.getPlatformByName("Reference"))
            context.setPositions(positions_nm(structure))
            energy = context.getState(getEnergy=True).getPotentialEnergy()._value
            if system == "ac_ala3_nhme":  # the same energy through openmm-ml from the shipped checkpoint
                ml_system = MLPotential("so3krates", modelPath=str(folder / "best_checkpoint.pt")).createSystem(
                    structure.openmm_topology())
                ml_context = openmm.Context(ml_system, openmm.VerletIntegrator(0.001),
                                            openmm.Platform.getPlatformByName("Reference"))
                ml_context.setPositions(positions_nm(structure))
                ml_energy = ml_context.getState(getEnergy=True).getPotentialEnergy()._value
                assert abs(ml_energy - energy) < 1e-4 * abs(energy), (ml_energy, energy)
            systems[system] = {
                "atoms": structure.n_atoms,
                "elements": list(model.config.elements),
                "model_atoms": len(read_export_metadata(folder / "model.pt")["atomic_numbers"]),
                "energy_finite": bool(np.isfinite(energy)),
                "files": sorted(str(path.relative_to(folder)) for path in folder.rglob("*")),
            }
        package = Path(so3krates_openmm.__file__).parent
        print(json.dumps({
            "package": so3krates_openmm.__file__,
            "prefix": sys.prefix,
            "plugin_module": sys.modules[entry_point.module].__file__,
            "systems": systems,
            "package_bytes": sum(path.stat().st_size for path in package.rglob("*") if path.is_file()),
        }))
        """
    )
    result = subprocess.run([str(python), "-c", check], cwd=workdir, env=environment,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(report["package"]).is_relative_to(venv) and Path(report["prefix"]) == venv
    assert Path(report["plugin_module"]).is_relative_to(venv)
    assert set(report["systems"]) == {"ac_ala3_nhme", "buckyball_catcher"}
    for system, found in report["systems"].items():
        assert found["atoms"] == found["model_atoms"] and found["energy_finite"], system
        assert set(SHIPPED) <= set(found["files"]), (system, found["files"])
        unwanted = [name for name in found["files"]
                    if any(Path(name).match(pattern) for pattern in NOT_SHIPPED) or name.startswith("training")]
        assert not unwanted, f"{system}: the package ships {unwanted}"
    print(f"installed package: {report['package_bytes'] / 1e6:.1f} MB")
