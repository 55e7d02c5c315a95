"""so3krates-openmm: train SO3krates in PyTorch, export to TorchScript, run it in OpenMM."""

from setuptools import find_packages, setup

setup(
    name="so3krates-openmm",
    version="0.1.0",
    description="SO3krates machine-learned force fields for OpenMM via openmm-torch",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["so3krates_openmm", "so3krates_openmm.*"]),
    license="MIT",
    # The installed package ships what the showcase needs: per pretrained system the best checkpoint,
    # the exported model, the structure files and the DATA/PROVENANCE notes (data sets, training
    # records and long runs stay in the repository: datasets/, bench/).
    package_data={
        "so3krates_openmm": [
            "pretrained/*/best_checkpoint.pt",
            "pretrained/*/model.pt",
            "pretrained/*/structure.pdb",
            "pretrained/*/structure.xyz",
            "pretrained/*/*.md",
            # C++ sources of the fused kernels, compiled on first use (so3krates_openmm.model.kernels)
            "model/csrc/*.cpp",
            "model/csrc/*.h",
        ]
    },
    install_requires=[
        # openmm-torch's C++ plugin is tied to the torch minor version (C++ ABI):
        # these three pins move together (see ../shared/design/openmm-ecosystem.md).
        "torch==2.12.0",
        "openmm[cuda13]==8.6.1",
        "acellera-openmmtorch-cu13==1.10",
        "numpy",
        "mdtraj",
        "ase",
        "tqdm",
        "matplotlib",
        "pyyaml",
        "jsonargparse>=4.40",  # options: flags + YAML files (so3krates_openmm/options.py)
        "tblite==0.8.0",
        "rdkit",
        "scipy",
        "openmmml==1.8",
        "distributed",
    ],
    # wheel: building the package without build isolation (tests/test_install.py) with setuptools < 70.1.
    extras_require={"test": ["pytest", "ruff==0.17.6", "wheel"]},
    entry_points={
        "console_scripts": [
            "so3krates-export=so3krates_openmm.cli.export:main",
            "so3krates-data=so3krates_openmm.cli.data:main",
            "so3krates-train=so3krates_openmm.cli.train:main",
            "so3krates-active-learning=so3krates_openmm.cli.active_learning:main",
            "so3krates-eval=so3krates_openmm.cli.eval:main",
            # the md_protocols/*.py scripts
            "so3krates-md-langevin-nvt=so3krates_openmm.cli.langevin_nvt:main",
            "so3krates-md-nve=so3krates_openmm.cli.nve:main",
            "so3krates-md-spectrum=so3krates_openmm.cli.spectrum:main",
            "so3krates-md-catcher-distance=so3krates_openmm.cli.catcher_distance:main",
            "so3krates-md-ramachandran=so3krates_openmm.cli.ramachandran:main",
            "so3krates-md-minima=so3krates_openmm.cli.minima:main",
            "so3krates-md-mlmm-solvated=so3krates_openmm.cli.mlmm_solvated:main",
            "so3krates-md-stability-report=so3krates_openmm.cli.stability_report:main",
        ],
        # openmm-ml finds third-party potentials here: MLPotential("so3krates", modelPath=CHECKPOINT).
        "openmmml.potentials": [
            "so3krates=so3krates_openmm.openmmml_potential:SO3kratesPotentialImplFactory",
        ],
    },
)
