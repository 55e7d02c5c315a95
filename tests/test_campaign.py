"""bench/campaign.py: a lane runs its resumable commands in order, saves progress, stops at a failure."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "campaign.py"


def load():
    spec = importlib.util.spec_from_file_location("campaign", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["campaign"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_a_lane_runs_in_order_saves_progress_and_stops_at_the_first_failure(tmp_path: Path) -> None:
    campaign = load()
    marker = tmp_path / "order.txt"
    write = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
    commands = [campaign.Step([sys.executable, "-c", write, str(marker), "first"]),
                campaign.Step([sys.executable, "-c", "import sys; sys.exit(7)"]),
                campaign.Step([sys.executable, "-c", write, str(marker), "never"])]
    saves: list[str] = []
    code = campaign.run_lane("demo", commands, tmp_path / "logs", save_minutes=60.0,
                             save=lambda log: saves.append("saved"))
    assert code == 7
    assert marker.read_text() == "first\n"
    assert saves == ["saved"]  # once at the end (the interval is longer than the lane)
    log = (tmp_path / "logs" / "demo.log").read_text()
    assert "demo 1/3: python -c" in log and "exit 7" in log and "lane demo stopped: step 2 failed" in log

    # the same lane again while it runs is refused; a finished lane starts again
    import fcntl

    with open(tmp_path / "logs" / "demo.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert campaign.run_lane("demo", commands[:1], tmp_path / "logs", 60.0, save=lambda log: None) == 3
    assert campaign.run_lane("demo", commands[:1], tmp_path / "logs", 60.0, save=lambda log: None) == 0
    assert marker.read_text() == "first\nfirst\n"


def test_every_lane_command_names_an_existing_script_or_command() -> None:
    campaign = load()
    root = SCRIPT.parents[1]
    for steps in [*campaign.LANES.values(), *campaign.FINISHED_LANES.values()]:
        for step in [*steps, *campaign.FILLER]:
            command = step.command
            program = Path(command[1] if command[0] == sys.executable else command[0])
            assert (program if program.is_absolute() else root / program).exists(), command


def test_a_training_that_would_be_cut_off_is_not_started_and_the_filler_runs(tmp_path: Path) -> None:
    import time

    campaign = load()
    marker = tmp_path / "order.txt"
    write = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
    finished = tmp_path / "first_done"
    finished.write_text("")
    steps = [campaign.Step([sys.executable, "-c", write, str(marker), "finished training"], hours=5.0,
                           done=str(finished)),  # finished: skipped whatever the time
             campaign.Step([sys.executable, "-c", write, str(marker), "short"]),
             campaign.Step([sys.executable, "-c", write, str(marker), "long training"], hours=2.0),
             campaign.Step([sys.executable, "-c", write, str(marker), "after"])]
    filler = [campaign.Step([sys.executable, "-c", write, str(marker), "filler"])]
    code = campaign.run_lane("demo", steps, tmp_path / "logs", 60.0, save=lambda log: None,
                             until=time.time() + 3600.0, filler=filler)
    assert code == 0
    assert marker.read_text().split("\n")[:-1] == ["short", "filler"]
    log = (tmp_path / "logs" / "demo.log").read_text()
    assert f"demo 1/4: done earlier ({finished}), skipped" in log
    assert "demo 3/4 (about 2 h) would not finish before" in log and "lane demo paused" in log

    marker.unlink()  # with time enough, everything runs in order and the filler does not
    assert campaign.run_lane("demo", steps, tmp_path / "logs", 60.0, save=lambda log: None,
                             until=time.time() + 3 * 3600.0, filler=filler) == 0
    assert marker.read_text().split("\n")[:-1] == ["short", "long training", "after"]
    assert abs(campaign.parse_until("2030-01-01T10:00") - 1893492000.0) < 1e-6


def test_every_minima_round_trains_on_data_that_an_earlier_step_labels() -> None:
    """Round N's ``--data`` files exist in the repository or are labelled by an earlier step of the lane, and
    round 5 on also trains on the previous search's rejected structures."""
    campaign = load()
    steps = [*campaign.FINISHED_LANES["catcher"], *campaign.FINISHED_LANES["minima"]]
    labelled: set[str] = set()
    for step in steps:
        command = [str(part) for part in step.command]
        if "label" in command:
            labelled.add(command[command.index("-o") + 1])
        if "so3krates_openmm.cli.train" in command:
            data = command[command.index("--data") + 1:command.index("--init-from")]
            assert all(name in labelled or name in campaign.PEPTIDE_DATA for name in data), data
    assert "datasets/ac_ala3_nhme/rejected_round5.npz" in campaign.minima_round_data(5)
    assert not any("rejected" in name for name in campaign.minima_round_data(4))


def test_a_round_labels_rejected_structures_only_when_the_previous_search_may_have_some(tmp_path: Path) -> None:
    """Round 6 on: the previous search's rejected structures are labelled and trained on unless its committed
    ``summary.json`` says it rejected none (then there is no ``rejected.pdb`` to label)."""
    import json

    campaign = load()
    campaign.REPOSITORY = tmp_path  # no search has run here: round 5's rejected structures count as possible
    assert "datasets/ac_ala3_nhme/rejected_round6.npz" in campaign.minima_round_data(6)
    assert any(part.endswith("rejected.pdb") for step in campaign.minima_round_steps(6, workers=2)
               for part in step.command)

    # round 5's last all-trans search (3000 starts, an extra search of round 5) says it rejected nothing
    summary = tmp_path / "bench" / "minima_large" / "round5_3000_starts" / "summary.json"
    summary.parent.mkdir(parents=True)
    summary.write_text(json.dumps({"n_rejected_snapshots": 0, "torsion_search": {"n_rejected": 0}}))
    data = campaign.minima_round_data(6)
    assert "datasets/ac_ala3_nhme/rejected_round6.npz" not in data
    assert "datasets/ac_ala3_nhme/rejected_round5.npz" in data  # round 4's search: not known here
    steps = campaign.minima_round_steps(6, workers=2)
    assert not any(part.endswith("rejected.pdb") for step in steps for part in step.command)
    train = next(step.command for step in steps if "so3krates_openmm.cli.train" in step.command)
    assert train[train.index("--data") + 1:train.index("--init-from")] == data

    summary.write_text(json.dumps({"n_rejected_snapshots": 0, "torsion_search": {"n_rejected": 3}}))
    assert "datasets/ac_ala3_nhme/rejected_round6.npz" in campaign.minima_round_data(6)


def test_the_extra_searches_follow_their_round_with_the_same_starts_and_more_of_them() -> None:
    """Round 5's searches at 3000 starts and with 2000 cis starts on top come last in round 5 and differ from the
    round's search only in the starts, the xTB sample and the output folder; the next round labels the all-trans
    minima, which a search with cis starts does not overwrite."""
    campaign = load()
    steps = campaign.minima_round_steps(5, workers=2)
    first = next(step.command for step in steps if "bench/minima_large/run.py" in step.command)
    extended, cis = steps[-2].command, steps[-1].command
    assert extended[extended.index("--torsion-starts") + 1] == "3000"
    assert extended[extended.index("--output") + 1] == "bench/minima_large/round5_3000_starts"
    differs = [i for i, (a, b) in enumerate(zip(first, extended, strict=True)) if a != b]
    assert [first[i - 1] for i in differs] == ["--torsion-starts", "--output"]
    assert cis[cis.index("--cis-starts") + 1] == "2000" and cis[cis.index("--cis-probability") + 1] == "0.5"
    assert cis[cis.index("--output") + 1] == "bench/minima_large/round5_cis"
    assert cis[cis.index("--sample-torsion") + 1] == "100"
    assert [part for part in cis if part not in extended] == ["--cis-starts", "2000", "--cis-probability", "0.5",
                                                             "bench/minima_large/round5_cis"]
    labels = campaign.minima_round_steps(6, workers=2)[0].command
    assert "runs/minima_large_round5/minima_with_torsion_search/minima.pdb" in labels


def test_round_7_labels_the_cis_minima_and_searches_from_every_amide_isomer() -> None:
    """Round 6's search was left out: round 7 labels round 5's minima with cis bonds (no reference minima or
    rejected structures of round 6) and trains on all earlier data; its search is MD from the 16 isomers."""
    campaign = load()
    steps = campaign.minima_round_steps(7, workers=2)
    labels = [step.command for step in steps if "label" in step.command]
    assert labels == [campaign.label_step(campaign.MINIMA_ROUND_LABEL_SOURCE[7],
                                          "datasets/ac_ala3_nhme/minima_round7.npz", 2).command]
    data = campaign.minima_round_data(7)
    assert not any(name.endswith("_round6.npz") and "minima_round6" not in name for name in data)
    assert "datasets/ac_ala3_nhme/xtb_minima_round6.npz" in data and "datasets/ac_ala3_nhme/minima_round7.npz" in data
    assert not campaign.labels_rejected(6)  # round 5's committed summaries: nothing rejected
    search = steps[-1].command
    runs = search[search.index("--runs") + 1:search.index("--ps")]
    assert len(runs) == 48 and len(campaign.AMIDE_ISOMERS) == 16 and {run[-4:] for run in runs} == set(
        campaign.AMIDE_ISOMERS)
    # the 900 K runs, added after the others had run, come last: their new_minima are what 900 K adds
    assert runs[:2] == ["500:71:5:tttt", "700:71:5:tttt"] and runs[31] == "700:71:5:cccc"
    assert {run.split(":")[0] for run in runs[32:]} == {"900"} and runs[32] == "900:71:5:tttt"
    # the last round's search writes issue 18's summary; round 1's (the shipped model) lives in round1/
    assert "--torsion-starts" not in search and search[search.index("--output") + 1] == "bench/minima_large"
    first = campaign.minima_steps(workers=2)[-1].command
    assert first[first.index("--output") + 1] == "bench/minima_large/round1"
    assert not any("reference_search.py" in part for step in campaign.minima_round_steps(6, workers=2)
                   for part in step.command)
