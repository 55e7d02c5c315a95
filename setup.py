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
    include_package_data=True,
    # model/csrc: C++ sources of the fused kernels, compiled on first use (so3krates_openmm.model.kernels)
    package_data={"so3krates_openmm": ["pretrained/*/*", "md/protocols/*.yaml", "model/csrc/*.cpp"]},
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
        "tblite==0.8.0",
        "rdkit",
        "scipy",
        "openmmml==1.8",
    ],
    extras_require={"test": ["pytest"]},
    entry_points={
        "console_scripts": [
            "so3krates-export=so3krates_openmm.cli:export_main",
            "so3krates-data=so3krates_openmm.cli:data_main",
            "so3krates-train=so3krates_openmm.cli:train_main",
            "so3krates-eval=so3krates_openmm.cli:eval_main",
        ],
        # openmm-ml finds third-party potentials here: MLPotential("so3krates", modelPath=CHECKPOINT).
        "openmmml.potentials": [
            "so3krates=so3krates_openmm.openmmml_potential:SO3kratesPotentialImplFactory",
        ],
    },
)
