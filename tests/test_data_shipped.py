"""The shipped GFN2-xTB data sets: layout, atom order, units, provenance, and labels that are GFN2-xTB's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from so3krates_openmm.data.formats import load_dataset
from so3krates_openmm.data.structures import read_structure
from so3krates_openmm.units import energy_conversion

PRETRAINED = Path(__file__).resolve().parents[1] / "so3krates_openmm" / "pretrained"
DATASETS = Path(__file__).resolve().parents[1] / "datasets"
pytestmark = pytest.mark.artifacts  # pins the shipped data sets: update when the data are regenerated


def assert_gfn2_xtb_labels(frame) -> None:
    """The frame's energy and forces are GFN2-xTB's (tblite), to the float32 storage precision (~1e-3)."""
    from ase import Atoms
    from tblite.ase import TBLite

    atoms = Atoms(numbers=frame.atomic_numbers, positions=frame.positions)
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    to_kcal = energy_conversion("eV", "kcal/mol")
    assert frame.energy == pytest.approx(atoms.get_potential_energy() * to_kcal, abs=5e-3)
    np.testing.assert_allclose(frame.forces, atoms.get_forces() * to_kcal, rtol=0, atol=5e-3)


def test_peptide_data_set_covers_300_to_700_kelvin_in_the_structure_atom_order():
    path = DATASETS / "ac_ala3_nhme" / "dataset.npz"
    data = load_dataset(path)
    structure = read_structure(PRETRAINED / "ac_ala3_nhme" / "structure.pdb")
    assert len(data) >= 2000 and data.energy_unit == "kcal/mol"
    z, positions, energies, forces = data.stacked()
    np.testing.assert_array_equal(z, structure.atomic_numbers)
    with np.load(path) as raw:
        assert raw["E"].dtype == np.float64
    assert "GFN2-xTB" in data.metadata["theory"]
    temperatures = [part["settings"]["temperatures_K"] for part in data.metadata["parts"]]
    assert temperatures == [[300.0], [500.0], [700.0]]
    assert sum(part["frames"] for part in data.metadata["parts"]) == len(data)
    # Hotter blocks sit higher in energy; no frame is a duplicate.
    blocks = energies.reshape(3, -1).mean(axis=1)
    assert blocks[0] < blocks[1] < blocks[2]
    assert len(np.unique(energies)) == len(energies)
    # Bonds stay intact in every frame (no broken molecule in the training data).
    bonds = np.array([(a.index, b.index) for a, b in structure.topology.bonds()])
    lengths = np.linalg.norm(positions[:, bonds[:, 0]] - positions[:, bonds[:, 1]], axis=-1)
    assert lengths.max() < 1.9 and lengths.min() > 0.85


def test_peptide_labels_are_gfn2_xtb_energies_and_forces():
    data = load_dataset(DATASETS / "ac_ala3_nhme" / "dataset.npz")
    for index in (0, 1500):
        assert_gfn2_xtb_labels(data[index])


def test_catcher_data_set_covers_300_and_500_kelvin_in_the_structure_atom_order():
    directory = DATASETS / "buckyball_catcher"
    data = load_dataset(directory / "dataset.npz")
    structure = read_structure(PRETRAINED / directory.name / "structure.pdb")
    assert len(data) >= 400 and data.energy_unit == "kcal/mol"
    z, positions, energies, _ = data.stacked()
    np.testing.assert_array_equal(z, structure.atomic_numbers)
    assert "GFN2-xTB" in data.metadata["theory"]
    assert [part["settings"]["temperatures_K"] for part in data.metadata["parts"]] == [[300.0], [500.0]]
    assert sum(part["frames"] for part in data.metadata["parts"]) == len(data)
    assert len(np.unique(energies)) == len(energies)
    bonds = np.array([(a.index, b.index) for a, b in structure.topology.bonds()])
    lengths = np.linalg.norm(positions[:, bonds[:, 0]] - positions[:, bonds[:, 1]], axis=-1)
    assert lengths.max() < 1.9 and lengths.min() > 0.85
    # The ball stays in the catcher in every frame (C60 = the last 60 atoms).
    separation = np.linalg.norm(positions[:, -60:].mean(axis=1) - positions[:, :88].mean(axis=1), axis=-1)
    assert separation.max() < 7.0


def test_catcher_partial_files_continue_the_shipped_data():
    """The resumable partial files begin with the frames merged into dataset.npz, in order."""
    directory = DATASETS / "buckyball_catcher"
    shipped = load_dataset(directory / "dataset.npz")
    positions = shipped.stacked()[1]
    start = 0
    for temperature, part in zip((300, 500), shipped.metadata["parts"], strict=True):
        continued = load_dataset(directory / f"dataset_{temperature}K.partial.npz").stacked()[1]
        assert len(continued) >= part["frames"]
        np.testing.assert_array_equal(continued[: part["frames"]], positions[start : start + part["frames"]])
        start += part["frames"]


def test_peptide_md_frames_are_labelled_frames_of_the_round0_stability_runs():
    """md_frames_round1.npz: frames of the first shipped model's 300 K / 500 K runs, relabelled with GFN2-xTB."""
    import mdtraj

    directory = DATASETS / "ac_ala3_nhme"
    data = load_dataset(directory / "md_frames_round1.npz")
    assert len(data) == 450 and data.energy_unit == "kcal/mol" and "GFN2-xTB" in data.metadata["theory"]
    structure = read_structure(PRETRAINED / directory.name / "structure.pdb")
    np.testing.assert_array_equal(data[0].atomic_numbers, structure.atomic_numbers)
    round0 = Path(__file__).resolve().parents[1] / "bench" / "stability" / "round0"
    start = 0
    for part, temperature in zip(data.metadata["parts"], (300, 500), strict=True):
        assert part["inputs"]["trajectory"].endswith(f"ac_ala3_nhme_{temperature}K/trajectory.dcd")
        trajectory = mdtraj.load(str(round0 / f"ac_ala3_nhme_{temperature}K" / "trajectory.dcd"),
                                 top=str(PRETRAINED / directory.name / "structure.pdb"))
        last = start + part["frames"] - 1
        source = part["frame_indices"][-1]
        np.testing.assert_allclose(data[last].positions, trajectory.xyz[source] * 10.0, atol=1e-4)
        assert_gfn2_xtb_labels(data[last])
        start += part["frames"]


def test_catcher_md_frames_are_labelled_frames_of_the_round0_500K_run():
    """The catcher's md_frames_round1.npz: distinct frames of its first model's 500 K run, relabelled with GFN2-xTB."""
    import mdtraj

    directory = DATASETS / "buckyball_catcher"
    data = load_dataset(directory / "md_frames_round1.npz")
    assert len(data) == 180 and data.energy_unit == "kcal/mol" and "GFN2-xTB" in data.metadata["theory"]
    structure = read_structure(PRETRAINED / directory.name / "structure.pdb")
    np.testing.assert_array_equal(data[0].atomic_numbers, structure.atomic_numbers)
    run = Path(__file__).resolve().parents[1] / "bench" / "showcase" / "catcher_round0" / "md_500K" / "trajectory.dcd"
    trajectory = mdtraj.load(str(run), top=str(PRETRAINED / directory.name / "structure.pdb"))
    # Part 1 was labelled from a copy of the DCD taken while the run was going: its frame numbers index the same file.
    sources = [index for part in data.metadata["parts"] for index in part["frame_indices"]]
    assert len(set(sources)) == len(sources) == len(data)
    np.testing.assert_allclose(data.stacked()[1], trajectory.xyz[sources] * 10.0, atol=1e-4)
    assert_gfn2_xtb_labels(data[len(data) - 1])


#: The catcher's round-2 training data, in the order the active-learning loop merged them (its PROVENANCE.md).
CATCHER_ROUND2_DATA = [
    DATASETS / "buckyball_catcher" / "dataset.npz",
    DATASETS / "buckyball_catcher" / "md_frames_round1.npz",
    *(Path(__file__).resolve().parents[1] / "bench" / "showcase" / "catcher_round1" / name for name in (
        "md_500K_frames.npz", "escape_500K/frames.npz", "escape_500K/frames_interleaved.npz", "rigid_pull/frames.npz")),
    DATASETS / "buckyball_catcher" / "al_round2_frames.npz",
]


def test_catcher_round2_frames_are_the_loops_gfn2_xtb_labels_and_the_split_indexes_its_data():
    """al_round2_frames.npz: the 2 x 70 frames the loop selected and labelled; the shipped model's split indexes
    the 955 frames of its training data."""
    from so3krates_openmm.training.splits import read_split

    data = load_dataset(DATASETS / "buckyball_catcher" / "al_round2_frames.npz")
    assert len(data) == 140 and data.energy_unit == "kcal/mol" and "GFN2-xTB" in data.metadata["theory"]
    assert [part["frames"] for part in data.metadata["parts"]] == [70, 70]
    structure = read_structure(PRETRAINED / "buckyball_catcher" / "structure.pdb")
    np.testing.assert_array_equal(data[0].atomic_numbers, structure.atomic_numbers)
    assert_gfn2_xtb_labels(data[len(data) - 1])

    total = sum(len(load_dataset(path)) for path in CATCHER_ROUND2_DATA)
    split = [read_split(DATASETS / "buckyball_catcher" / "training" / "split.json", part)
             for part in ("train", "valid", "test")]
    assert total == 955 and [len(part) for part in split] == [764, 96, 95]
    indices = np.concatenate(split)
    assert len(np.unique(indices)) == total and indices.min() == 0 and indices.max() == total - 1
