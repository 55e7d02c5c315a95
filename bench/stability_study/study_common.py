"""Shared definitions of the stability study (issue 17): the molecules, their data, split and files.

Imported by ``train_pair.py`` and ``run_study.py`` beside it (run as ``python bench/stability_study/SCRIPT.py``).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
BENCH_DIR = REPOSITORY / "bench" / "stability_study"
#: Where the training runs, exported models and MD runs go (git-ignored).
RUNS_DIR = REPOSITORY / "runs" / "stability_study"
MODELS = ("equivariant", "invariant")
#: ``degrees`` of each model: the paper's ablation differs only in the Euclidean variables.
DEGREES = {"equivariant": [1, 2, 3], "invariant": []}
#: The control of a molecule that has one: its shipped equivariant model, trained to convergence on the same data
#: and split (so not at the pair's error), run like the pair: is an unstable equivariant checkpoint the
#: architecture, or where its training stopped?
CONTROL = "shipped_equivariant"
#: Export kind of each model for MD: the fused kernels compute both (the invariant model without any Euclidean
#: work; its fused step is 0.35-0.5x its reference step at 42-148 atoms, bench/RESULTS.md).
KERNELS = {"equivariant": "fused", "invariant": "fused", CONTROL: "fused"}


@dataclass(frozen=True)
class Molecule:
    """A molecule of the study: its data files (concatenated in order), split file and relaxed structure."""

    name: str
    data: tuple[Path, ...]
    split: Path
    structure: Path
    #: the :data:`CONTROL` model: the shipped equivariant checkpoint and its test report (on ``split``)
    control_checkpoint: Path | None = None
    control_report: Path | None = None

    def dataset(self):
        """The data files concatenated as for training (read once per process)."""
        return _dataset(self.data)

    def split_part(self, part: str):
        """Frame indices of one part of the split."""
        from so3krates_openmm.training.splits import read_split

        return read_split(self.split, part)


@functools.cache
def _dataset(files: tuple[Path, ...]):
    from so3krates_openmm.data.dataset import MolecularDataset
    from so3krates_openmm.data.formats import load_dataset

    parts = [load_dataset(path) for path in files]
    return parts[0] if len(parts) == 1 else MolecularDataset.concatenate(parts)


MOLECULES = {
    # The shipped model's data and split (PROVENANCE.md): 2100 GFN2-xTB frames at 300/500/700 K and 450
    # labelled frames of its own MD; train 2250, valid 100, test 200.
    "ac_ala3_nhme": Molecule(
        "ac_ala3_nhme",
        (REPOSITORY / "datasets/ac_ala3_nhme/dataset.npz", REPOSITORY / "datasets/ac_ala3_nhme/md_frames_round1.npz"),
        REPOSITORY / "datasets/ac_ala3_nhme/training/split.json",
        REPOSITORY / "so3krates_openmm/pretrained/ac_ala3_nhme/structure.pdb",
        REPOSITORY / "so3krates_openmm/pretrained/ac_ala3_nhme/best_checkpoint.pt",
        REPOSITORY / "datasets/ac_ala3_nhme/training/test_report.json",
    ),
    # datasets/dha/DATA.md: 2100 GFN2-xTB frames at 300/500/700 K; split.json beside this file (seed 0).
    "dha": Molecule(
        "dha",
        (REPOSITORY / "datasets/dha/dataset.npz",),
        BENCH_DIR / "dha" / "split.json",
        REPOSITORY / "datasets/dha/structure.pdb",
    ),
}


def molecule(name: str) -> Molecule:
    """The molecule ``name``, with a message naming the choices otherwise."""
    if name not in MOLECULES:
        raise SystemExit(f"unknown molecule {name!r}; choose one of {', '.join(MOLECULES)}")
    return MOLECULES[name]


def models_file(bench_dir: Path, name: str) -> Path:
    """``models.json`` of a molecule (written by train_pair.py)."""
    return bench_dir / name / "models.json"


def read_models(bench_dir: Path, name: str) -> dict:
    """The matched models of a molecule, or exit with what to run first."""
    path = models_file(bench_dir, name)
    if not path.is_file():
        raise SystemExit(f"{path} is missing: train and match the models first "
                         f"(python bench/stability_study/train_pair.py --molecule {name})")
    return json.loads(path.read_text())


def recorded(path: str | Path) -> str:
    """A path as the study's records keep it: relative to the repository when inside it, else absolute."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPOSITORY)) if resolved.is_relative_to(REPOSITORY) else str(resolved)


def control_entry(name: str, root: Path) -> dict | None:
    """The molecule's control model (:data:`CONTROL`) as an entry like those of ``models.json`` (its test errors
    from its own test report, on the same split), or ``None`` when it has none."""
    target = molecule(name)
    if target.control_checkpoint is None:
        return None
    report = json.loads(target.control_report.read_text())
    return {
        "checkpoint": recorded(target.control_checkpoint),
        "matched_checkpoint": recorded(target.control_checkpoint),
        "epoch": report.get("epoch"),
        "test_force_mae": report["errors"]["force_mae"],
        "test_energy_mae": report["errors"]["energy_mae"],
        "model_pt": str(root / name / CONTROL / "model.pt"),
        "role": "control: the shipped equivariant model, trained to convergence on the same split",
    }


def export_for_md(checkpoint: Path, structure: Path, output: Path, kernels: str) -> Path:
    """The checkpoint exported for OpenMM (``so3krates-export``)."""
    from so3krates_openmm.data.structures import read_structure
    from so3krates_openmm.export import export_checkpoint

    output.parent.mkdir(parents=True, exist_ok=True)
    return export_checkpoint(checkpoint, output, structure=read_structure(structure), kernels=kernels)
