"""Loaders and writers: MD22/sGDML .npz and ASE (extended XYZ), with every bad-input error."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from so3krates_openmm.data.dataset import DataError, MolecularDataset
from so3krates_openmm.data.formats import (
    load_ase,
    load_dataset,
    load_npz,
    save_extxyz,
    save_npz,
)

KCAL_PER_EV = 96.4853321 / 4.184


def md22_arrays(n_frames: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays as an MD22 file has them: E of shape (M, 1), kcal/mol, Å."""
    rng = np.random.default_rng(seed)
    return {
        "R": rng.normal(size=(n_frames, 4, 3)),
        "E": rng.normal(size=(n_frames, 1)) - 100.0,
        "F": rng.normal(size=(n_frames, 4, 3)),
        "z": np.array([6, 8, 1, 1]),
        "name": np.array("formaldehyde"),
        "theory": np.array("PBE+MBD"),
    }


def test_md22_file_loads_in_kcal_per_mol_and_angstrom(tmp_path):
    arrays = md22_arrays()
    path = tmp_path / "md22_formaldehyde.npz"
    np.savez(path, **arrays)
    data = load_npz(path)
    assert len(data) == 5 and data.energy_unit == "kcal/mol"
    z, positions, energies, forces = data.stacked()
    assert z.tolist() == [6, 8, 1, 1] and z.dtype == np.int64
    np.testing.assert_array_equal(positions, arrays["R"])
    np.testing.assert_array_equal(energies, arrays["E"][:, 0])
    np.testing.assert_array_equal(forces, arrays["F"])
    assert data.metadata["theory"] == "PBE+MBD" and data.metadata["name"] == "formaldehyde"
    assert data.metadata["source"] == str(path)
    assert load_dataset(path).energies.tolist() == data.energies.tolist()


def test_units_given_or_recorded_are_converted_exactly(tmp_path):
    arrays = md22_arrays()
    path = tmp_path / "nm_ev.npz"
    np.savez(path, **arrays)
    data = load_npz(path, energy_unit="eV", length_unit="nm")
    assert data.energy_unit == "eV"
    np.testing.assert_array_equal(data.positions_flat, arrays["R"].reshape(-1, 3) * 10.0)
    np.testing.assert_array_equal(data.forces_flat, arrays["F"].reshape(-1, 3) / 10.0)
    in_kcal = data.converted("kcal/mol")
    np.testing.assert_array_equal(in_kcal.energies, arrays["E"][:, 0] * KCAL_PER_EV)
    np.testing.assert_array_equal(in_kcal.forces_flat, arrays["F"].reshape(-1, 3) / 10.0 * KCAL_PER_EV)

    # sGDML-style unit keys are honoured without arguments ...
    recorded = tmp_path / "recorded.npz"
    np.savez(recorded, **arrays, e_unit=np.array("eV"), r_unit=np.array("Ang"))
    assert load_npz(recorded).energy_unit == "eV"
    # ... and an explicit unit that contradicts them wins, with a warning.
    with pytest.warns(UserWarning, match="records energy unit 'eV'"):
        assert load_npz(recorded, energy_unit="kcal/mol").energy_unit == "kcal/mol"
    bad_unit = tmp_path / "bad_unit.npz"
    np.savez(bad_unit, **arrays, e_unit=np.array("furlongs"))
    with pytest.raises(DataError, match="bad_unit.npz.*unknown energy unit"):
        load_npz(bad_unit)


def test_save_npz_round_trip_records_theory_units_and_float32(tmp_path):
    rng = np.random.default_rng(4)
    data = MolecularDataset([8, 1, 1], rng.normal(size=(7, 3, 3)), rng.normal(size=7) * 1e4,
                            rng.normal(size=(7, 3, 3)), "eV",
                            {"theory": "GFN2-xTB", "settings": {"seed": 3, "temperatures_K": [300.0]}})
    path = save_npz(data, tmp_path / "out.npz", energy_unit="kcal/mol")
    back = load_npz(path)
    assert back.energy_unit == "kcal/mol"
    np.testing.assert_array_equal(back.energies, data.energies * KCAL_PER_EV)
    np.testing.assert_array_equal(back.positions_flat, data.positions_flat)
    assert back.metadata["theory"] == "GFN2-xTB"
    assert back.metadata["settings"] == {"seed": 3, "temperatures_K": [300.0]}
    with np.load(path) as raw:
        assert str(raw["e_unit"]) == "kcal/mol" and str(raw["r_unit"]) == "Ang"
        assert raw["R"].dtype == np.float64

    small = save_npz(data, tmp_path / "small.npz", float32=True)
    with np.load(small) as raw:
        assert raw["R"].dtype == np.float32 and raw["F"].dtype == np.float32
        assert raw["E"].dtype == np.float64
        np.testing.assert_array_equal(raw["E"], data.energies)  # energies keep full precision
    assert not list(tmp_path.glob(".*tmp*")), "no temporary files left behind"

    mixed = MolecularDataset([[8, 1, 1], [6, 1, 1, 1, 1]], [np.zeros((3, 3)), np.zeros((5, 3))], [0.0, 1.0],
                             [np.zeros((3, 3)), np.zeros((5, 3))])
    with pytest.raises(DataError, match="one molecule.*extended XYZ"):
        save_npz(mixed, tmp_path / "mixed.npz")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.pop("F"), r"missing key\(s\) \['F'\]"),
        (lambda a: a.pop("z"), r"missing key\(s\) \['z'\]"),
        (lambda a: a.update(R=a["R"][:, :3]), "R has shape"),
        (lambda a: a.update(F=a["F"][:4]), "F has shape"),
        (lambda a: a.update(E=a["E"][:3]), "E has shape"),
        (lambda a: a.update(z=a["z"][None]), "z must have shape"),
        (lambda a: a.update(z=np.array([6, 8, 1, 0])), "unknown element"),
        (lambda a: a.update(z=np.array([6, 8, 1, 119])), "unknown element"),
        (lambda a: a.update(z=np.array(["C", "O", "H", "H"])), "integer atomic numbers"),
        (lambda a: a["R"].__setitem__((2, 1, 0), np.nan), "positions contain NaN.*frame 2"),
        (lambda a: a["E"].__setitem__((3, 0), np.inf), "energies contain NaN.*frame 3"),
        (lambda a: a["F"].__setitem__((1, 3, 2), np.nan), "forces contain NaN.*frame 1"),
    ],
)
def test_bad_npz_files_give_clear_errors_naming_the_file(tmp_path, change, message):
    arrays = md22_arrays()
    change(arrays)
    path = tmp_path / "broken.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as error:
        load_npz(path)
    assert "broken.npz" in str(error.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        load_npz(tmp_path / "nowhere.npz")
    with pytest.raises(FileNotFoundError, match="nowhere.xyz"):
        load_dataset(tmp_path / "nowhere.xyz")
    junk = tmp_path / "junk.npz"
    junk.write_text("not an archive")
    with pytest.raises(DataError, match="junk.npz.*not a readable .npz"):
        load_npz(junk)
    garbage = tmp_path / "garbage.xyz"
    garbage.write_text("three\nno\nX y z\n")
    with pytest.raises(DataError, match="garbage.xyz"):
        load_ase(garbage)


def ase_frames(n_frames: int = 4, seed: int = 5, with_calc: bool = True):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        atoms = Atoms("CH4", positions=rng.normal(size=(5, 3)) * 1.5)
        energy, forces = float(rng.normal() - 40.0), rng.normal(size=(5, 3))
        if with_calc:
            atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        else:
            atoms.info["REF_energy"] = energy
            atoms.arrays["REF_forces"] = forces
        frames.append((atoms, energy, forces))
    return frames


def test_extxyz_from_ase_loads_energies_and_forces_in_ev(tmp_path):
    from ase.io import write

    frames = ase_frames()
    path = tmp_path / "methane.extxyz"
    write(path, [a for a, _, _ in frames], format="extxyz")
    data = load_dataset(path)
    assert data.energy_unit == "eV" and len(data) == 4
    for frame, (_, energy, forces) in zip(data, frames, strict=True):
        assert frame.atomic_numbers.tolist() == [6, 1, 1, 1, 1]
        assert frame.energy == pytest.approx(energy, abs=1e-8)
        np.testing.assert_allclose(frame.forces, forces, atol=1e-8)  # text: 8 decimals
    kcal = load_ase(path, energy_unit="eV").converted("kcal/mol")
    np.testing.assert_array_equal(kcal.energies, data.energies * KCAL_PER_EV)


def test_extxyz_with_custom_keys_and_missing_labels(tmp_path):
    from ase.io import write

    frames = ase_frames(with_calc=False)
    path = tmp_path / "ref.xyz"
    write(path, [a for a, _, _ in frames], format="extxyz")
    data = load_ase(path, energy_key="REF_energy", forces_key="REF_forces")
    assert data.energies[2] == pytest.approx(frames[2][1], abs=1e-8)
    with pytest.raises(DataError, match="ref.xyz: frame 0 has no energy 'energy'.*energy_key"):
        load_ase(path)
    with pytest.raises(DataError, match="ref.xyz: frame 0 has no forces 'forces'.*forces_key"):
        load_ase(path, energy_key="REF_energy")
    plain = tmp_path / "plain.xyz"
    plain.write_text("2\nH2\nH 0 0 0\nH 0 0 0.74\n")
    with pytest.raises(DataError, match="plain.xyz: frame 0 has no energy"):
        load_dataset(plain)


def test_extxyz_with_nan_or_unknown_element_is_rejected(tmp_path):
    nan_file = tmp_path / "nan.xyz"
    nan_file.write_text(
        '2\nProperties=species:S:1:pos:R:3:forces:R:3 energy=-1.0 pbc="F F F"\n'
        "H 0 0 0 0 0 nan\nH 0 0 0.74 0 0 0\n"
    )
    with pytest.raises(DataError, match="nan.xyz: forces contain NaN"):
        load_ase(nan_file)
    unknown = tmp_path / "unknown.xyz"
    unknown.write_text(
        '2\nProperties=species:S:1:pos:R:3:forces:R:3 energy=-1.0 pbc="F F F"\n'
        "Xx 0 0 0 0 0 0\nH 0 0 0.74 0 0 0\n"
    )
    with pytest.raises(DataError, match="unknown.xyz"):
        load_ase(unknown)


def test_save_extxyz_round_trip_keeps_units(tmp_path):
    rng = np.random.default_rng(6)
    data = MolecularDataset([[8, 1, 1], [6, 1, 1, 1, 1]], [rng.normal(size=(3, 3)), rng.normal(size=(5, 3))],
                            [-10.0, -20.0], [rng.normal(size=(3, 3)), rng.normal(size=(5, 3))], "kcal/mol",
                            {"theory": "GFN2-xTB"})
    path = save_extxyz(data, tmp_path / "mixed.xyz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = load_dataset(path)
    assert back.energy_unit == "eV" and back.metadata["theory"] == "GFN2-xTB"
    assert back.n_atoms.tolist() == [3, 5]
    np.testing.assert_allclose(back.converted("kcal/mol").energies, data.energies, rtol=1e-12)
    np.testing.assert_allclose(back.converted("kcal/mol").forces_flat, data.forces_flat, atol=1e-6)
    in_kcal = save_extxyz(data, tmp_path / "kcal.xyz", energy_unit="kcal/mol")
    assert load_ase(in_kcal).energy_unit == "kcal/mol"


def test_merge_concatenates_parts_in_order_and_refuses_mixed_theories(tmp_path):
    from so3krates_openmm.cli.data import main as data_main
    from so3krates_openmm.data.formats import merge_datasets

    def part(unit: str, theory: str, seed: int) -> MolecularDataset:
        r = np.random.default_rng(seed)
        return MolecularDataset([8, 1, 1], r.normal(size=(3, 3, 3)), r.normal(size=3), r.normal(size=(3, 3, 3)),
                                unit, {"theory": theory, "settings": {"seed": seed}})

    a, b = part("kcal/mol", "GFN2-xTB", 1), part("eV", "GFN2-xTB", 2)
    save_npz(a, tmp_path / "a.npz")
    save_npz(b, tmp_path / "b.npz")
    merged = merge_datasets([tmp_path / "a.npz", tmp_path / "b.npz"], tmp_path / "ab.npz", float32=True)
    back = load_npz(tmp_path / "ab.npz")
    assert len(back) == 6 and back.energy_unit == "kcal/mol"
    np.testing.assert_array_equal(back.energies[:3], a.energies)
    np.testing.assert_allclose(back.energies[3:], b.energies * KCAL_PER_EV, rtol=1e-15)
    assert [p["settings"]["seed"] for p in back.metadata["parts"]] == [1, 2]
    assert len(merged) == 6
    save_npz(part("eV", "PBE", 3), tmp_path / "c.npz")
    assert data_main(["merge", str(tmp_path / "a.npz"), str(tmp_path / "c.npz"), "-o", str(tmp_path / "ac.npz")]) == 2
    assert not (tmp_path / "ac.npz").exists()
