"""Fine-tuning (``--init-from``): a new run from a checkpoint's weights, with clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ase.build import molecule

from so3krates_openmm.cli.train import main as train_main
from so3krates_openmm.cli.train import parse_config
from so3krates_openmm.data.dataset import MolecularDataset
from so3krates_openmm.data.formats import save_npz
from so3krates_openmm.model.checkpoint import file_sha256, load_model, read_checkpoint
from so3krates_openmm.training import (
    ConfigError,
    Trainer,
    config_from_dict,
    train,
)
from so3krates_openmm.training.finetune import InitFromError
from so3krates_openmm.training.shifts import fit_energy_shifts
from so3krates_openmm.training.synthetic import teacher_dataset
from so3krates_openmm.units import energy_conversion

#: The source model: tiny, float64 (the teacher is F=16, T=1, degrees (1, 2), K=8, 4 Å).
SMALL_MODEL = {"features": 16, "layers": 1, "heads": 2, "degrees": [1, 2], "radial_basis_size": 8, "cutoff": 4.0}
SHIFTS = {1: -310.0, 6: -23750.0, 7: -34300.0, 8: -47100.0}
SPLIT = {"train_size": 40, "valid_size": 20, "test_size": 10, "batch_size": 4}


def quiet(message: str) -> None:
    pass


def dataset_of(name: str, frames: int = 70) -> MolecularDataset:
    atoms = molecule(name)
    return teacher_dataset(atoms.numbers, atoms.positions, frames, displacement=0.1, force_rms=20.0, shifts=SHIFTS)


@pytest.fixture(scope="module")
def ethanol_data() -> MolecularDataset:
    return dataset_of("CH3CH2OH")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, ethanol_data: MolecularDataset) -> Path:
    """best_checkpoint.pt of 3 float64 epochs on ethanol (C, H, O)."""
    output = tmp_path_factory.mktemp("source") / "run"
    options = dict(data="<teacher>", output=str(output), lr=5e-3, max_epochs=3, dtype="float64", threads=1,
                   progress=False, **SPLIT, **SMALL_MODEL)
    train(config_from_dict(options), dataset=ethanol_data, log=quiet)
    return output / "best_checkpoint.pt"


def fine_tune(output: Path, source: Path, **options) -> dict:
    """Options of a fine-tuning run (no architecture options unless given)."""
    values = dict(data="<teacher>", output=str(output), init_from=str(source), lr=1e-5, min_lr=0.0, max_epochs=1,
                  threads=1, progress=False, **SPLIT)
    values.update(options)
    return values


def test_fine_tuning_starts_from_the_checkpoint_and_records_it(tmp_path: Path, source: Path,
                                                                ethanol_data: MolecularDataset):
    checkpoint = read_checkpoint(source)
    # the same architecture options may be given; the dtype (float64) comes from the checkpoint
    trainer = Trainer(config_from_dict(fine_tune(tmp_path / "tuned", source, **SMALL_MODEL)), dataset=ethanol_data,
                      log=quiet)
    trainer.setup()
    assert trainer.model.dtype == torch.float64 and trainer.config.dtype == "float64"
    weights = trainer.model.state_dict()
    for key, value in checkpoint["state_dict"].items():
        if key != "energy_shifts":  # the weights and the energy scale are the checkpoint's
            assert torch.equal(weights[key], value), key
    source_valid = checkpoint["extra"]["training"]["valid"]
    start = trainer.evaluate(trainer.valid_data)
    # the same forces; the shifts corrected by the checkpoint's mean energy error on the training split
    assert start["force_mae"] == pytest.approx(source_valid["force_mae"], rel=1e-10)
    assert start["energy_mae"] <= source_valid["energy_mae"] * 1.05

    result = trainer.run()
    first = result.metrics[0]
    assert first["valid_force_mae"] == pytest.approx(source_valid["force_mae"], rel=0.02)
    fresh = train(config_from_dict(fine_tune(tmp_path / "fresh", source, init_from=None, lr=5e-3, min_lr=1e-5,
                                             **SMALL_MODEL)), dataset=ethanol_data, log=quiet)
    assert first["valid_force_mae"] < fresh.metrics[0]["valid_force_mae"] / 2  # a head start over a fresh run

    record = {"path": str(source.resolve()), "sha256": file_sha256(source)}
    best = read_checkpoint(tmp_path / "tuned" / "best_checkpoint.pt")["extra"]["training"]
    assert {key: best["init_from"][key] for key in record} == record
    assert best["init_from"]["training"]["epoch"] == checkpoint["extra"]["training"]["epoch"]
    last = read_checkpoint(tmp_path / "tuned" / "last_checkpoint.pt")["extra"]["training_state"]
    assert last["init_from"]["sha256"] == record["sha256"]
    assert result.test_report["init_from"] == record
    assert json.loads((tmp_path / "tuned" / "test_report.json").read_text())["init_from"] == record
    assert json.loads((tmp_path / "tuned" / "training_config.json").read_text())["init_from"] == str(source)
    assert fresh.test_report["init_from"] is None


@pytest.mark.parametrize("init_energy_shifts", ["checkpoint", "refit"])
def test_energy_shifts_of_data_with_another_energy_zero(tmp_path: Path, source: Path, ethanol_data: MolecularDataset,
                                                        init_energy_shifts: str):
    """Energies offset by 1 kcal/mol per atom (another zero, same forces): 'checkpoint' keeps the checkpoint's
    scale and forces and absorbs the offset in the shifts; 'refit' fits shifts and scale as a fresh run does."""
    offset = ethanol_data.converted("kcal/mol")
    offset.energies = offset.energies + offset.n_atoms.astype(float)
    trainer = Trainer(config_from_dict(fine_tune(tmp_path / init_energy_shifts, source,
                                                 init_energy_shifts=init_energy_shifts)), dataset=offset, log=quiet)
    trainer.setup()
    source_model = load_model(source)
    source_valid = read_checkpoint(source)["extra"]["training"]["valid"]
    start = trainer.evaluate(trainer.valid_data)
    if init_energy_shifts == "checkpoint":
        assert torch.equal(trainer.model.energy_scales, source_model.energy_scales)
        same_zero = Trainer(config_from_dict(fine_tune(tmp_path / "same_zero", source)), dataset=ethanol_data,
                            log=quiet)
        same_zero.setup()
        torch.testing.assert_close(trainer.model.energy_shifts, same_zero.model.energy_shifts + 1.0, rtol=0,
                                   atol=1e-9)
        assert start["force_mae"] == pytest.approx(source_valid["force_mae"], rel=1e-10)
        assert start["energy_mae"] <= source_valid["energy_mae"] * 1.05
    else:
        forces = trainer.train_data.forces.double()
        assert float(trainer.model.energy_scales[0]) == pytest.approx(float(forces.square().mean().sqrt()), rel=1e-9)
        elements = list(trainer.model.config.elements)
        fitted = fit_energy_shifts(trainer.train_data.element_counts(elements),
                                   trainer.train_data.energies.cpu().numpy(), elements)
        assert trainer.model.energy_shifts.tolist() == pytest.approx([fitted[z] for z in elements], rel=1e-12)


def test_energy_scale_with_init_from_needs_refit(tmp_path: Path, source: Path):
    with pytest.raises(ConfigError, match=r"--energy-scale with --init-from.*--init-energy-shifts refit"):
        config_from_dict(fine_tune(tmp_path / "run", source, energy_scale=2.0))
    config_from_dict(fine_tune(tmp_path / "run", source, energy_scale=2.0, init_energy_shifts="refit"))
    with pytest.raises(ConfigError, match=r"'init_energy_shifts' must be one of \['checkpoint', 'refit'\]"):
        config_from_dict(fine_tune(tmp_path / "run", source, init_energy_shifts="zero"))


def test_a_fine_tuned_run_resumes_without_init_from(tmp_path: Path, source: Path, ethanol_data: MolecularDataset):
    """--resume takes the model options and the provenance from the run (no architecture flags needed)."""
    train(config_from_dict(fine_tune(tmp_path / "tuned", source)), dataset=ethanol_data, log=quiet)
    options = fine_tune(tmp_path / "tuned", source, init_from=None, resume=True, max_epochs=2)
    resumed = train(config_from_dict(options), dataset=ethanol_data, log=quiet)
    assert resumed.epochs == 2 and resumed.test_report["init_from"]["sha256"] == file_sha256(source)
    assert resumed.test_report["model"]["features"] == SMALL_MODEL["features"]


def test_other_unit_and_dtype_fewer_elements(tmp_path: Path, source: Path, ethanol_data: MolecularDataset):
    source_model = load_model(source)
    # energies in eV, --dtype float32: the model now predicts eV (shifts and scale converted), weights cast
    in_ev = ethanol_data.converted("eV")
    trainer = Trainer(config_from_dict(fine_tune(tmp_path / "ev", source, dtype="float32")), dataset=in_ev, log=quiet)
    trainer.setup()
    assert trainer.model.config.energy_unit == "eV" and trainer.model.dtype == torch.float32
    assert torch.equal(trainer.model.embedding.weight, source_model.embedding.weight.float())
    factor = energy_conversion("kcal/mol", "eV")
    source_mae = read_checkpoint(source)["extra"]["training"]["valid"]["force_mae"]
    assert trainer.evaluate(trainer.valid_data)["force_mae"] == pytest.approx(source_mae * factor, rel=1e-4)

    # methane (H, C): the model keeps the checkpoint's elements (and O's shift, absent from the data)
    methane = Trainer(config_from_dict(fine_tune(tmp_path / "methane", source)), dataset=dataset_of("CH4"), log=quiet)
    methane.setup()
    assert methane.model.config.elements == (1, 6, 8)
    assert torch.equal(methane.model.embedding.weight, source_model.embedding.weight)
    assert float(methane.model.energy_shifts[2]) == float(source_model.energy_shifts[2])


def test_data_with_an_element_the_checkpoint_does_not_know(tmp_path: Path, source: Path):
    with pytest.raises(InitFromError, match=r"element\(s\) N \(Z=7\) that the checkpoint .* does not know; "
                                            r"it knows H \(Z=1\), C \(Z=6\), O \(Z=8\)"):
        train(config_from_dict(fine_tune(tmp_path / "run", source)), dataset=dataset_of("CH3CONH2"), log=quiet)


def test_architecture_options_must_match_the_checkpoint(tmp_path: Path, source: Path, ethanol_data: MolecularDataset):
    with pytest.raises(InitFromError, match=r"option 'features' is 32 but the checkpoint .* has features 16"):
        train(config_from_dict(fine_tune(tmp_path / "a", source, features=32)), dataset=ethanol_data, log=quiet)
    # a flag equal to the default (5 Å) still differs from the checkpoint's 4 Å: it was given
    config = parse_config(["--data", "x.npz", "--init-from", str(source), "--cutoff", "5.0",
                           "--output", str(tmp_path / "b")])
    with pytest.raises(InitFromError, match=r"option 'cutoff' is 5.0 .* has cutoff 4.0.*leave out --cutoff"):
        train(config, dataset=ethanol_data, log=quiet)


def test_init_from_with_resume_or_a_file_that_is_no_checkpoint(tmp_path: Path, source: Path, capsys):
    (tmp_path / "tune.yaml").write_text(f"data: [x.npz]\ninit-from: {source}\n")
    from_file = parse_config(["--config", str(tmp_path / "tune.yaml")])
    assert from_file.init_from == str(source) and from_file.is_given("init_from") and not from_file.is_given("features")
    with pytest.raises(ConfigError, match="--init-from and --resume exclude each other"):
        parse_config(["--config", str(tmp_path / "tune.yaml"), "--resume"])
    with pytest.raises(ConfigError, match="--init-from and --resume exclude each other"):
        config_from_dict(fine_tune(tmp_path / "run", source, resume=True))
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    data = save_npz(dataset_of("CH4"), tmp_path / "methane.npz")
    assert train_main(["--data", str(data), "--init-from", str(tmp_path / "other.pt"),
                       "--output", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "other.pt is not a so3krates-openmm checkpoint" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="missing.pt' does not exist"):
        train(config_from_dict(fine_tune(tmp_path / "run", tmp_path / "missing.pt")), dataset=dataset_of("CH4"),
              log=quiet)
