"""bench/minima_large/run.py end to end on a tiny scale (2 short MD runs of an Amber System, a few minima, 2 of them
re-optimised with GFN2-xTB), its resume, and the pieces of so3krates_openmm.md.exploration."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from so3krates_openmm.data.dataset import MolecularDataset
from so3krates_openmm.data.formats import save_npz
from so3krates_openmm.data.structures import read_structure
from so3krates_openmm.md.conformers import isomer_code, peptide_bond_torsions
from so3krates_openmm.md.exploration import (
    ExplorationRun,
    chao1_richness,
    compare_with_reference,
    match_minima,
    saturation_curve,
)
from so3krates_openmm.md.minima import Minimum

RUN_PY = Path(__file__).resolve().parents[1] / "bench" / "minima_large" / "run.py"


def load_driver(script: str = "run.py"):
    """A script of bench/minima_large/ as a module (default: the driver, run.py)."""
    spec = importlib.util.spec_from_file_location(f"minima_large_{Path(script).stem}", RUN_PY.with_name(script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rounds_compared_from_their_summaries(tmp_path: Path, capsys) -> None:
    module = load_driver("compare_rounds.py")

    def summary(model: str, same: float, torsion: dict | None) -> dict:
        return {"model": model, "n_snapshots": 100, "n_minima": 10, "n_validated": 8, "same_minimum_fraction": same,
                "energy_spearman": 0.5, "relative_energy_mae_kj_mol": 3.0, "torsion_search": torsion}

    # The last round's search at the top, the earlier ones in round<N>/; the round is the model's.
    (tmp_path / "summary.json").write_text(json.dumps(summary("runs/minima_large_round3/model_fused.pt", 0.75, {
        "n_starts": 50, "n_rejected": 1, "n_minima": 20, "n_only_torsion_search": 12, "n_validated": 5,
        "same_minimum_fraction": 0.6, "energy_spearman": None})))
    (tmp_path / "round1").mkdir()
    (tmp_path / "round1" / "summary.json").write_text(json.dumps(summary("runs/minima_large/model_fused.pt", 0.5,
                                                                         None)))
    (tmp_path / "round_x").mkdir()  # not a round: ignored
    (tmp_path / "round_x" / "summary.json").write_text("{}")
    assert module.main(["--folder", str(tmp_path), "-o", str(tmp_path / "rounds.png")]) == 0
    rows = module.table(module.round_summaries(tmp_path))
    assert [row["round"] for row in rows] == [1, 3]
    assert rows[0]["md_same"] == 0.5 and rows[0]["torsion_same"] is None
    assert rows[1]["torsion_same"] == 0.6 and rows[1]["starts_new_bond"] == 1
    assert (tmp_path / "rounds.png").stat().st_size > 0 and "round 3" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no summary.json"):
        module.main(["--folder", str(tmp_path / "round_x" / "empty")])
    (tmp_path / "round3").mkdir()  # round 3's search twice: which one is meant is unclear
    (tmp_path / "round3" / "summary.json").write_text((tmp_path / "summary.json").read_text())
    with pytest.raises(SystemExit, match="both searches of round 3"):
        module.round_summaries(tmp_path)
    (tmp_path / "round3" / "summary.json").write_text(json.dumps(summary("elsewhere/model.pt", 0.5, None)))
    with pytest.raises(SystemExit, match="its round is unknown"):
        module.round_summaries(tmp_path)


def test_saturation_curve_counts_minima_first_seen_in_a_random_order() -> None:
    x = np.zeros((3, 3))
    # 10 snapshots: minimum 0 holds 7, minimum 1 two, minimum 2 one; snapshot 9 was rejected.
    minima = [Minimum(0.0, x, [0, 1, 2, 3, 4, 5, 6]), Minimum(1.0, x, [7, 8]), Minimum(2.0, x, [])]
    minima[2].snapshots = []
    n, counts = saturation_curve(minima[:2], 10, points=10, seed=3)
    assert n.tolist() == list(range(1, 11)) and counts[-1] == 2 and counts[0] <= 1
    assert np.all(np.diff(counts) >= 0)
    n, counts = saturation_curve(minima[:2], 10, points=4)
    assert n.tolist() == [1, 4, 7, 10] and counts[-1] == 2


def test_new_minima_counted_for_the_first_run_in_the_commands_order_that_reached_them() -> None:
    x = np.zeros((3, 3))
    runs = np.array(["500K", "500K", "700K", "700K", "600K"])  # the run of each snapshot
    minima = [Minimum(0.0, x, [0, 2]), Minimum(1.0, x, [3]), Minimum(2.0, x, [4, 1]), Minimum(3.0, x, [4])]
    order = ["500K", "700K", "600K"]
    assert load_driver().new_minima_by_run(minima, runs, order) == {"500K": 2, "700K": 1, "600K": 1}
    assert load_driver().new_minima_by_run(minima, runs, order[::-1]) == {"600K": 2, "700K": 2, "500K": 0}


def test_minima_counted_by_the_temperatures_whose_snapshots_reached_them() -> None:
    x = np.zeros((3, 3))
    temperatures = np.array([500.0, 500.0, 700.0, 700.0, 900.0])  # the temperature of each snapshot's run
    minima = [Minimum(0.0, x, [0, 2]), Minimum(1.0, x, [3]), Minimum(2.0, x, [4, 1]), Minimum(3.0, x, [4])]
    assert load_driver().minima_by_temperature(minima, temperatures) == {
        "500": {"snapshots": 2, "reached": 2, "only_here": 0},
        "700": {"snapshots": 2, "reached": 2, "only_here": 1},
        "900": {"snapshots": 1, "reached": 2, "only_here": 1}}


def test_chao1_richness_from_how_often_each_minimum_was_reached() -> None:
    x = np.zeros((3, 3))
    # 6 minima: three reached once, one twice, two five times: 6 + 3 * 2 / (2 * 2) = 7.5
    hits = [[0], [1], [2], [3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14]]
    estimate = chao1_richness([Minimum(0.0, x, list(h)) for h in hits])
    assert estimate == {"n_observed": 6, "singletons": 3, "doubletons": 1, "chao1": 7.5}
    # every minimum reached more than once: saturated, nothing unseen expected
    assert chao1_richness([Minimum(0.0, x, [0, 1]), Minimum(0.0, x, [2, 3, 4])])["chao1"] == 2.0


def test_comparison_with_the_reference_on_crafted_minima(peptide_pdb) -> None:
    structure = read_structure(peptide_pdb)
    x = structure.positions_angstrom
    rng = np.random.default_rng(1)
    model = np.stack([x + rng.normal(scale=0.3, size=x.shape) for _ in range(4)])
    reference = model.copy()
    reference[1] += rng.normal(scale=0.01, size=x.shape)  # the same minimum, a little moved
    reference[3] += 0.5 * rng.normal(size=x.shape)  # another minimum
    comparison = compare_with_reference(model, [0.0, 3.0, 1.0, 7.0], reference, [10.0, 14.0, 11.0, 12.0])
    assert comparison["same_minimum"] == [True, True, True, False]
    assert comparison["same_minimum_fraction"] == 0.75
    assert comparison["rmsd_angstrom"][0] < 1e-2 and comparison["rmsd_angstrom"][3] > 0.5
    assert comparison["energy_spearman"] == pytest.approx(0.8)  # ranks 1 3 2 4 vs 1 4 2 3
    assert comparison["relative_energy_mae_kj_mol"] == pytest.approx((0 + 1 + 0 + 5) / 4)
    with pytest.raises(ValueError, match="at least 2 minima"):
        compare_with_reference(model[:1], [0.0], reference[:1], [0.0])
    assert ExplorationRun.parse("700:2") == ExplorationRun(700.0, 2) and ExplorationRun(700.0, 2).name == "700K_seed2"
    assert ExplorationRun.parse("700:4:5") == ExplorationRun(700.0, 4, 5)
    assert ExplorationRun(700.0, 4, 5).name == "700K_seed4"  # the stride selects snapshots, the MD is the same
    assert ExplorationRun.parse("700:4:5:tctt") == ExplorationRun(700.0, 4, 5, "tctt")
    assert ExplorationRun(700.0, 4, 5, "tctt").name == "700K_seed4_tctt"  # a run of its own
    for text in ("700", "700:4:5:1", "700:4:x", "700:4:5:tcxt", "700:4:5:tctt:1"):
        with pytest.raises(ValueError, match="TEMPERATURE_K:SEED"):
            ExplorationRun.parse(text)
    with pytest.raises(ValueError, match="stride >= 1"):
        ExplorationRun.parse("700:4:0")


@pytest.mark.slow  # ~45 s on an idle 2-core machine (4 local clusters, 3 xTB re-optimisations of 42 atoms)
def test_driver_end_to_end_and_resume(tmp_path: Path, peptide_pdb: Path, peptide_amber_xml: Path) -> None:
    driver = load_driver()
    structure = read_structure(peptide_pdb)
    # "Training data": the starting structure and two slightly moved copies.
    rng = np.random.default_rng(0)
    frames = np.stack([structure.positions_angstrom + rng.normal(scale=s, size=(structure.n_atoms, 3))
                       for s in (0.0, 0.02, 0.05)])
    training = tmp_path / "training.npz"
    save_npz(MolecularDataset(structure.atomic_numbers, frames, np.zeros(3), np.zeros_like(frames),
                              energy_unit="kcal/mol"), training)
    work, output = tmp_path / "work", tmp_path / "out"
    arguments = ["--structure", str(peptide_pdb), "--model", str(peptide_amber_xml), "--training-data", str(training),
                 "--runs", "700:1", "700:2", "--ps", "0.5", "--timestep-fs", "1", "--hydrogen-mass", "3",
                 "--snapshot-interval", "100", "--skip-ps", "0",
                 "--sample", "2", "--sample-beyond", "1", "--xtb-fmax", "0.1", "--workers", "2",
                 "--torsion-starts", "6", "--sample-torsion", "1",
                 "--work", str(work), "--output", str(output), "--no-progress"]
    assert driver.main(arguments) == 0
    summary = json.loads((output / "summary.json").read_text())
    for key in ("n_snapshots", "n_minima", "n_validated", "same_minimum_fraction", "energy_spearman",
                "n_beyond_training"):
        assert key in summary, key
    assert summary["n_snapshots"] == 10  # 500 steps of 1 fs, a frame every 100 steps, 2 runs
    assert summary["timestep_fs"] == 1.0 and summary["hydrogen_mass_amu"] == 3.0
    run_settings = json.loads((work / "md" / "700K_seed1" / "run.json").read_text())["settings"]
    assert run_settings["hydrogen_mass_amu"] == 3.0 and run_settings["timestep_fs"] == 1.0
    assert 2 <= summary["n_minima"] <= 10 and summary["n_validated"] == 2
    assert summary["saturation"]["minima"][-1] == summary["n_minima"]
    by_threshold = summary["n_minima_by_rmsd_threshold_angstrom"]
    assert list(by_threshold) == ["0.05", "0.1", "0.25", "0.5"] and by_threshold["0.1"] == summary["n_minima"]
    assert all(count >= 1 for count in by_threshold.values())
    assert 0.0 <= summary["same_minimum_fraction"] <= 1.0 and -1.0 <= summary["energy_spearman"] <= 1.0
    assert summary["cpu_hours"]["minimisation"] > 0 and summary["cpu_hours"]["xtb_reoptimisation"] > 0
    assert [run["name"] for run in summary["runs"]] == ["700K_seed1", "700K_seed2"]
    assert summary["n_minima_by_temperature_K"] == {"700": {"snapshots": 10, "reached": summary["n_minima"],
                                                            "only_here": summary["n_minima"]}}
    assert [(run["stride"], run["snapshots"]) for run in summary["runs"]] == [(1, 5), (1, 5)]
    # Six random-torsion starts: their minima alone and merged with the MD's, one of those only they found
    # re-optimised with xTB.
    search = summary["torsion_search"]
    assert search["n_starts"] == 6 and 1 <= search["n_minima"] <= 6 and search["saturation"]["starts"][-1] == 6
    assert search["n_only_torsion_search"] <= search["n_minima"]
    assert search["n_md_minima_found_again"] <= summary["n_minima"]
    assert max(summary["n_minima"], search["n_minima"]) <= search["n_minima_with_md"] <= (
        summary["n_minima"] + search["n_minima"])
    assert search["n_only_torsion_search"] >= 1 and search["n_validated"] == 1  # 700 K on Amber stays near the start
    assert 0.0 <= search["same_minimum_fraction"] <= 1.0 and search["minimisation_cpu_hours"] > 0
    assert search["saturation"]["estimated_total"]["chao1"] >= search["n_minima"]
    alone, merged = search["n_minima_by_rmsd_threshold_angstrom"], search["n_minima_with_md_by_rmsd_threshold_angstrom"]
    assert alone["0.1"] == search["n_minima"] and merged["0.1"] == search["n_minima_with_md"]
    assert list(alone) == list(merged) == ["0.05", "0.1", "0.25", "0.5"]
    assert all(1 <= alone[t] <= 6 and 1 <= merged[t] <= 6 + 10 for t in alone)
    for name in ("saturation.png", "minima_energies.png", "validation.png", "training_distance.png",
                 "torsion_search.png"):
        assert (output / name).stat().st_size > 5_000, name
    # The Amber minima of 700 K snapshots are far (> 0.5 Å) from the starting structure's copies.
    assert summary["n_beyond_training"] >= 1
    assert summary["n_sampled_beyond_training_extra"] <= 1
    assert summary["n_validated_beyond_training"] == len(summary["validated_beyond_training"])
    # Killed during the xTB stage: the journal lost its last re-optimisation (a torn line); the same command
    # reruns only that one, and nothing of the MD or the minimisation.
    journals = {name: work / name for name in ("md/md_runs.jsonl", "minimised/700K_seed1.jsonl",
                                                 "minimised/700K_seed2.jsonl", "xtb_reoptimised.jsonl",
                                                 "minimised/torsion_seed0_000000-000006.jsonl")}
    before = {name: path.read_text() for name, path in journals.items()}
    xtb_lines = before["xtb_reoptimised.jsonl"].splitlines()
    journals["xtb_reoptimised.jsonl"].write_text("\n".join(xtb_lines[:-1]) + "\n" + xtb_lines[-1][:20])
    (output / "summary.json").unlink()
    assert driver.main(arguments) == 0
    for name, path in journals.items():
        lines = path.read_text().splitlines()
        assert sorted(lines) == sorted(before[name].splitlines()) or name == "xtb_reoptimised.jsonl", name
        assert len(lines) == len(before[name].splitlines()), name
    again = json.loads((output / "summary.json").read_text())
    assert again["n_minima"] == summary["n_minima"] and again["n_validated"] == summary["n_validated"]
    assert again["same_minimum_fraction"] == pytest.approx(summary["same_minimum_fraction"])
    # Another stride for a minimised run: a clear refusal, the journal untouched.
    strided = [*arguments[:arguments.index("--runs") + 1], "700:1", "700:2:2",
               *arguments[arguments.index("--ps"):]]
    with pytest.raises(SystemExit, match="700K_seed2 gives now .*stride"):
        driver.main(strided)
    assert journals["minimised/700K_seed2.jsonl"].read_text() == before["minimised/700K_seed2.jsonl"]
    # Four more starts with cis peptide bonds: journals of their own beside the all-trans ones (neither the MD's nor
    # those redone), all ten starts counted, also by their cis bonds, and the xTB check split by isomer.
    cis = [*arguments[:arguments.index("--output") + 1], str(tmp_path / "cis"), "--no-progress",
           "--cis-starts", "4", "--cis-probability", "0.5"]
    assert driver.main(cis) == 0
    assert (work / "minimised" / "cis0.5_torsion_seed0_000000-000004.jsonl").is_file()
    assert (work / "minima_with_cis_torsion_search" / "minima.pdb").is_file()
    for name, path in journals.items():
        if name != "xtb_reoptimised.jsonl":
            assert sorted(path.read_text().splitlines()) == sorted(before[name].splitlines()), name
    search = json.loads((tmp_path / "cis" / "summary.json").read_text())["torsion_search"]
    assert search["n_starts"] == 10 and search["n_cis_starts"] == 4 and search["cis_probability"] == 0.5
    assert "the last n_cis_starts of them with each peptide bond turned to cis" in search["what"]
    assert sum(search["n_minima_by_cis_peptide_bonds"].values()) == search["n_minima"]
    assert sum(search["n_only_by_cis_peptide_bonds"].values()) == search["n_only_torsion_search"]
    energies = search["relative_energy_by_cis_peptide_bonds_kj_mol"]
    assert set(energies) == {k for k, n in search["n_minima_by_cis_peptide_bonds"].items() if n}
    assert all(len(quantiles) == 5 and quantiles == sorted(quantiles) for quantiles in energies.values())
    by_isomer = search["estimated_total_by_isomer"]
    assert by_isomer["all_trans"]["n_observed"] + by_isomer["with_cis"]["n_observed"] == search["n_minima"]
    errors = {k: v for k, v in search["energy_error_by_cis_peptide_bonds_kj_mol"].items() if k != "means"}
    assert sum(count for _, count in errors.values()) == search["n_validated"]
    split = search["validated_by_isomer"]
    assert split["all_trans"]["n_validated"] + split["with_cis"]["n_validated"] == search["n_validated"]
    with pytest.raises(SystemExit):
        driver.main([*cis[:-1], "0"])  # --cis-probability 0: a clear refusal
    # One more run started with the second peptide bond cis: MD of its own from start.pdb, its snapshots' minima
    # stay in that isomer, the others' MD and minimisations are not redone.
    isomer = [*arguments[:arguments.index("--runs") + 1], "700:1", "700:2", "700:3:1:tctt",
              *arguments[arguments.index("--ps"):arguments.index("--output") + 1], str(tmp_path / "isomer"),
              "--no-progress"]
    assert driver.main(isomer) == 0
    start = read_structure(work / "md" / "700K_seed3_tctt" / "start.pdb")
    assert isomer_code(start.positions_angstrom, peptide_bond_torsions(structure)) == "tctt"
    for name in ("minimised/700K_seed1.jsonl", "minimised/700K_seed2.jsonl"):
        assert sorted(journals[name].read_text().splitlines()) == sorted(before[name].splitlines()), name
    summary = json.loads((tmp_path / "isomer" / "summary.json").read_text())
    assert [run["isomer"] for run in summary["runs"]] == ["tttt", "tttt", "tctt"]
    assert summary["n_snapshots"] == 15 and summary["n_snapshots_changed_isomer"] == 0
    assert summary["n_minima_by_cis_peptide_bonds"]["1"] >= 1
    assert sum(summary["n_minima_by_cis_peptide_bonds"].values()) == summary["n_minima"]
    by_isomer = summary["n_minima_by_isomer"]
    assert set(by_isomer) == {"tttt", "tctt"} and sum(by_isomer.values()) == summary["n_minima"]
    assert by_isomer["tctt"] == summary["runs"][2]["new_minima"]  # only the third run is in that isomer
    assert sum(run["new_minima"] for run in summary["runs"]) == summary["n_minima"]
    for key in ("same_minimum_fraction_by_cis_peptide_bonds", "energy_error_by_cis_peptide_bonds_kj_mol"):
        counts = [value[1] for k, value in summary[key].items() if k != "means"]
        assert sum(counts) == summary["n_validated"], key


def test_two_sets_of_minima_matched_against_each_other(peptide_pdb) -> None:
    structure = read_structure(peptide_pdb)
    x = structure.positions_angstrom
    rng = np.random.default_rng(2)
    moved = [x + rng.normal(scale=0.6, size=x.shape) for _ in range(2)]
    first = np.stack([x, moved[0]])  # the second set has x (0.02 Å away) and another structure
    second = np.stack([moved[1], x + 0.02 * rng.normal(size=x.shape), moved[1] + 0.5])
    match = match_minima(first, second)
    assert match["first_nearest_index"][0] == 1 and match["first_nearest_angstrom"][0] < 0.05
    assert match["first_nearest_angstrom"][1] > 0.25
    assert match["first_found_in_second"] == 0.5 and match["second_found_in_first"] == 1 / 3


@pytest.mark.slow  # ~1 min on an idle 2-core machine: 4 random starts minimised with Amber and GFN2-xTB
def test_reference_search_minimises_the_same_starts_with_both(tmp_path: Path, peptide_pdb: Path,
                                                              peptide_amber_xml: Path) -> None:
    spec = importlib.util.spec_from_file_location("reference_search", RUN_PY.with_name("reference_search.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    work, output = tmp_path / "work", tmp_path / "out"
    arguments = ["--structure", str(peptide_pdb), "--model", str(peptide_amber_xml), "--starts", "4",
                 "--torsion-seed", "1", "--xtb-fmax", "0.05", "--optimizer-control", "2", "--workers", "2",
                 "--work", str(work),
                 "--output", str(output), "--no-progress"]
    assert module.main(arguments) == 0
    summary = json.loads((output / "reference_search.json").read_text())
    for name in ("model_surface", "xtb_surface"):
        surface = summary[name]
        assert 1 <= surface["n_minima"] <= 4 and surface["saturation"]["starts"][-1] == 4
        assert surface["estimated_total"]["chao1"] >= surface["n_minima"] and surface["cpu_hours"] > 0
    assert 1 <= summary["per_start"]["n_compared"] <= 4
    assert 0.0 <= summary["per_start"]["same_minimum_fraction"] <= 1.0
    assert 0.0 <= summary["sets"]["xtb_minima_found_by_model"] <= 1.0
    assert (output / "reference_search.png").stat().st_size > 5_000
    assert (work / "xtb_minima" / "minima.pdb").stat().st_size > 0
    journals = sorted(p.name for p in (work / "minimised").iterdir())
    assert journals == ["model_ase_torsion_seed1_000000-000002.jsonl",
                        "model_from_xtb_torsion_seed1_000000-000004.jsonl", "torsion_seed1_000000-000004.jsonl",
                        "xtb_torsion_seed1_000000-000004.jsonl"]
    control = summary["optimizer_control"]
    assert control["n_starts"] == 2 and 0.0 <= control["model_bfgs_vs_xtb_bfgs"]["same_minimum_fraction"] <= 1.0
    assert control["model_lbfgs_vs_model_bfgs"]["n_compared"] <= 2
    on_model = summary["xtb_minima_on_model"]
    assert on_model["n_minimised"] == summary["xtb_surface"]["n_minima"] and 0.0 <= on_model["stay_fraction"] <= 1.0
    # Resumed: nothing is minimised again, the same result.
    before = [(work / "minimised" / name).read_bytes() for name in journals]
    assert module.main(arguments) == 0
    assert [(work / "minimised" / name).read_bytes() for name in journals] == before
    assert json.loads((output / "reference_search.json").read_text())["per_start"] == summary["per_start"]


def test_a_journal_of_other_minimiser_settings_is_refused_by_name(tmp_path: Path, peptide_pdb: Path,
                                                                  peptide_amber_xml: Path) -> None:
    from so3krates_openmm.md.conformers import random_torsion_conformers
    from so3krates_openmm.md.minima import ModelSystemFactory
    from so3krates_openmm.md.torsion_search import minimize_starts_with_model
    from so3krates_openmm.tasks import JournalMismatch

    structure = read_structure(peptide_pdb)
    starts = random_torsion_conformers(structure, 2, seed=0)
    factory = ModelSystemFactory(str(peptide_pdb), str(peptide_amber_xml))
    found = minimize_starts_with_model(starts, 0, factory, tmp_path, workers=1, log=lambda line: None)
    assert [s.index for s in found] == [0, 1] and all(s.problem is None for s in found)
    with pytest.raises(JournalMismatch, match="torsion_seed0_000000-000002.jsonl holds minimisations"):
        minimize_starts_with_model(starts, 0, factory, tmp_path, workers=1, tolerance_kj_mol_nm=5.0,
                                   log=lambda line: None)


def test_amide_barrier_scan_holds_omega_and_finds_the_force_fields_barrier(tmp_path: Path, peptide_pdb: Path,
                                                                           peptide_amber_xml: Path) -> None:
    module = load_driver("amide_barrier.py")
    from so3krates_openmm.md.conformers import dihedral_deg
    from so3krates_openmm.md.minima import MinimizerRecipe, ModelSystemFactory
    from so3krates_openmm.md.torsion_search import ContextCalculator

    # The relaxed scan keeps omega at each target while everything else relaxes (amber14 as the surface).
    structure = read_structure(peptide_pdb)
    quadruplet = peptide_bond_torsions(structure)[1]
    calculator = ContextCalculator(MinimizerRecipe(ModelSystemFactory(str(peptide_pdb), str(peptide_amber_xml)))
                                   .build().context)
    targets = np.array([-170.0, -120.0, -60.0])
    energies, positions = module.relaxed_scan(structure, structure.positions_angstrom, quadruplet, calculator,
                                              targets, 0.05)
    assert [round(dihedral_deg(p, quadruplet), 1) for p in positions] == pytest.approx(targets.tolist(), abs=0.2)
    assert energies[2] > energies[0] + 20.0  # amber's amide barrier rises towards 90 degrees

    # The command: both directions, the barrier above trans and cis, the figure; amber14's barrier is ~80 kJ/mol.
    output = tmp_path / "barrier.json"
    assert module.main(["--structure", str(peptide_pdb), "--model", str(peptide_amber_xml), "--bonds", "1",
                        "--step-deg", "30", "--no-reference", "-o", str(output)]) == 0
    scan = json.loads(output.read_text())["scans"]["SO3krates"]["1"]
    forward = scan["trans_to_cis"]
    assert abs(forward["omega_deg"][0]) > 150.0 and forward["omega_deg"][-1] == 0.0
    assert forward["energy_kj_mol"][0] == 0.0 and scan["cis_to_trans"]["omega_deg"] == forward["omega_deg"][::-1]
    assert 50.0 < scan["barrier_kj_mol"] < 130.0 and scan["cis_barrier_kj_mol"] > 30.0
    assert output.with_suffix(".png").stat().st_size > 0
    with pytest.raises(SystemExit, match="peptide bonds 0 to 3"):
        module.main(["--structure", str(peptide_pdb), "--model", str(peptide_amber_xml), "--bonds", "7",
                     "--no-reference", "-o", str(output)])
