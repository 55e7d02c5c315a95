"""MolecularDataset: construction, validation, subsets, splits, concatenation and unit conversion."""

from __future__ import annotations

import numpy as np
import pytest

from so3krates_openmm.data.dataset import DataError, MolecularDataset
from so3krates_openmm.units import energy_conversion


def water_set(n_frames: int = 6, seed: int = 0, unit: str = "kcal/mol") -> MolecularDataset:
    rng = np.random.default_rng(seed)
    return MolecularDataset(
        np.array([8, 1, 1]),
        rng.normal(size=(n_frames, 3, 3)),
        rng.normal(size=n_frames),
        rng.normal(size=(n_frames, 3, 3)),
        energy_unit=unit,
        metadata={"theory": "test", "source": "water"},
    )


def mixed_set() -> MolecularDataset:
    rng = np.random.default_rng(1)
    numbers = [np.array([8, 1, 1]), np.array([6, 1, 1, 1, 1]), np.array([8, 1, 1])]
    positions = [rng.normal(size=(len(z), 3)) for z in numbers]
    forces = [rng.normal(size=(len(z), 3)) for z in numbers]
    return MolecularDataset(numbers, positions, [1.0, 2.0, 3.0], forces, "eV", {"source": "mixed"})


def test_frames_of_different_molecules_keep_their_atoms():
    data = mixed_set()
    assert len(data) == 3
    assert data.n_atoms.tolist() == [3, 5, 3]
    assert data.offsets.tolist() == [0, 3, 8, 11]
    assert data.elements.tolist() == [1, 6, 8]
    assert not data.same_molecule
    frame = data[1]
    assert frame.atomic_numbers.tolist() == [6, 1, 1, 1, 1]
    assert frame.positions.shape == (5, 3) and frame.forces.shape == (5, 3)
    assert frame.energy == 2.0 and frame.index == 1
    assert data[-1].index == 2
    with pytest.raises(IndexError):
        data[3]
    with pytest.raises(DataError, match="different molecules"):
        data.stacked()
    assert data.atomic_numbers_flat.dtype == np.int64
    assert data.positions_flat.dtype == np.float64


def test_single_molecule_stacks_and_accepts_column_energies():
    rng = np.random.default_rng(2)
    energies = rng.normal(size=(4, 1))
    data = MolecularDataset([8, 1, 1], rng.normal(size=(4, 3, 3)), energies, rng.normal(size=(4, 3, 3)))
    z, positions, stacked_energies, forces = data.stacked()
    assert z.tolist() == [8, 1, 1]
    assert positions.shape == forces.shape == (4, 3, 3)
    np.testing.assert_array_equal(stacked_energies, energies[:, 0])
    assert data.same_molecule


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(positions=np.zeros((4, 2, 3))), "positions have shape"),
        (dict(forces=np.zeros((4, 3, 2))), "forces have shape"),
        (dict(energies=np.zeros(3)), "number of frames differs"),
        (dict(numbers=np.array([8, 1, 0])), "unknown element"),
        (dict(numbers=np.array([8, 1, 200])), "unknown element"),
        (dict(numbers=np.array([8.0, 1.5, 1.0])), "must be integers"),
        (dict(energies=np.array([0.0, np.nan, 0.0, 0.0])), "energies contain NaN.*frame 1"),
        (dict(unit="furlongs"), "unknown energy unit"),
    ],
)
def test_bad_frames_are_rejected_with_the_source_named(change, message):
    rng = np.random.default_rng(3)
    arguments = dict(numbers=np.array([8, 1, 1]), positions=rng.normal(size=(4, 3, 3)), energies=np.zeros(4),
                     forces=rng.normal(size=(4, 3, 3)), unit="eV")
    arguments.update(change)
    with pytest.raises(DataError, match=message) as error:
        MolecularDataset(arguments["numbers"], arguments["positions"], arguments["energies"], arguments["forces"],
                         arguments["unit"], {"source": "my_file.npz"})
    assert "my_file.npz" in str(error.value)


def test_nan_forces_name_the_frame():
    data = water_set()
    forces = data.forces_flat.reshape(6, 3, 3).copy()
    forces[4, 2, 1] = np.nan
    with pytest.raises(DataError, match="forces contain NaN.*frame 4"):
        MolecularDataset([8, 1, 1], data.positions_flat.reshape(6, 3, 3), data.energies, forces)


def test_split_is_disjoint_complete_and_reproducible():
    data = water_set(20)
    train, valid, test = data.split(12, 5, None, seed=7)
    assert (len(train), len(valid), len(test)) == (12, 5, 3)
    indices = [set(part.metadata["split"]["indices"]) for part in (train, valid, test)]
    assert not indices[0] & indices[1] and not indices[0] & indices[2] and not indices[1] & indices[2]
    assert set().union(*indices) == set(range(20))
    again = data.split(12, 5, None, seed=7)
    for a, b in zip((train, valid, test), again, strict=True):
        np.testing.assert_array_equal(a.energies, b.energies)
    other = data.split(12, 5, None, seed=8)
    assert other[0].metadata["split"]["indices"] != train.metadata["split"]["indices"]
    # Frames in a part are the frames of the parent at the recorded indices.
    for i, frame in zip(train.metadata["split"]["indices"], train, strict=True):
        np.testing.assert_array_equal(frame.positions, data[i].positions)
        assert frame.energy == data[i].energy
    fractions = data.split(0.5, 0.25, 0.25, seed=0)
    assert [len(p) for p in fractions] == [10, 5, 5]
    with pytest.raises(DataError, match="exceed the 20 frames"):
        data.split(15, 6, None)
    with pytest.raises(DataError, match="fraction"):
        data.split(1.5, 0.1)
    # train=None: all frames but the validation and test ones, the same split as their count given explicitly
    rest = data.split_indices(None, 5, 3, seed=7)
    for a, b in zip(rest, data.split_indices(12, 5, 3, seed=7), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(DataError, match="needs a test size"):
        data.split_indices(None, 5, None)
    with pytest.raises(DataError, match="exceed the 20 frames"):
        data.split_indices(None, 15, 6)


def test_subset_and_concatenate_keep_frames_in_order():
    data = water_set(6)
    part = data.subset([5, 0, 5])
    assert [f.energy for f in part] == [data[5].energy, data[0].energy, data[5].energy]
    both = MolecularDataset.concatenate([mixed_set(), data], energy_unit="kcal/mol")
    assert len(both) == 9 and both.energy_unit == "kcal/mol"
    assert both.n_atoms.tolist() == [3, 5, 3] + [3] * 6
    np.testing.assert_allclose(both.energies[:3], np.array([1.0, 2.0, 3.0]) * energy_conversion("eV", "kcal/mol"),
                               rtol=1e-15)
    np.testing.assert_array_equal(both.energies[3:], data.energies)
    assert len(both.metadata["concatenated_from"]) == 2
    with pytest.raises(DataError):
        MolecularDataset.concatenate([])


def test_unit_conversion_uses_the_exact_factors():
    data = water_set(3, unit="eV")
    converted = data.converted("kcal/mol")
    factor = 96.4853321 / 4.184
    assert converted.energy_unit == "kcal/mol"
    np.testing.assert_array_equal(converted.energies, data.energies * factor)
    np.testing.assert_array_equal(converted.forces_flat, data.forces_flat * factor)
    np.testing.assert_array_equal(converted.positions_flat, data.positions_flat)
    back = converted.converted("ev")
    np.testing.assert_allclose(back.energies, data.energies, rtol=1e-15)
    assert data.energy_unit == "eV", "conversion must not modify the original"
    same = data.converted("eV")
    np.testing.assert_array_equal(same.energies, data.energies)
    assert data.converted("kJ/mol").energies[0] == data.energies[0] * 96.4853321


def test_sampling_temperatures_follow_the_generator_blocks_and_concatenation():
    generated = water_set(4)
    generated.metadata = {"parts": [{"frames": 4, "settings": {"temperatures_K": [300.0, 500.0],
                                                               "frames_per_temperature": 2}}]}
    labelled = water_set(3, seed=1)
    labelled.metadata = {"parts": [{"frames": 3, "inputs": {"trajectory": "md.dcd"}, "settings": {"stride": 2}}]}
    np.testing.assert_array_equal(generated.sampling_temperatures(), [300.0, 300.0, 500.0, 500.0])
    both = MolecularDataset.concatenate([generated, labelled]).sampling_temperatures()
    np.testing.assert_array_equal(both[:4], [300.0, 300.0, 500.0, 500.0])
    assert np.isnan(both[4:]).all() and len(both) == 7
    wrong = water_set(5)
    wrong.metadata = generated.metadata
    with pytest.raises(DataError, match="describe 4 frames but the data set has 5"):
        wrong.sampling_temperatures()
