#!/usr/bin/env python
"""Stability statistics of the matched equivariant and invariant models (issue 17, the paper's Fig. 5b).

    python bench/stability_study/run_study.py [--molecules ac_ala3_nhme dha] [--models equivariant invariant]
        [--temperatures 300 500] [--runs 6] [--ps 100] [--timestep-fs 0.5] [--segment-ps 10] [--jobs 1]
        [--report-only] [--root runs/stability_study] [--bench-dir bench/stability_study]

For each molecule (its ``models.json`` from ``train_pair.py``), model and temperature: ``--runs`` independent
Langevin NVT runs (friction 1/ps, ``--timestep-fs``, ``--ps`` each) of the exported model, each through the
Langevin protocol (``python -m so3krates_openmm.cli.langevin_nvt``) with the stability monitor and
``--segment-ps`` closed segments under ``<root>/<molecule>/md/<model>/<T>K/run_<i>/``.

Starting points (the same for both models, so the two are compared run by run): run ``i`` at temperature
``T`` starts from a frame drawn without replacement (``numpy.random.default_rng(T)``) from the molecule's
validation and test frames sampled at ``T`` (``MolecularDataset.sampling_temperatures``), unminimised, with
Maxwell-Boltzmann velocities at ``T`` from the seed ``10 * T + i + 1``; the frames and seeds are in
``summary.json``.

Runs go side by side in ``--jobs`` processes of one thread each; a status line every ``--status-interval``
seconds gives the runs finished, the simulated ps and the ETA. Everything resumes: the same command after a
kill (or in the next session) continues every unfinished run from its checkpoint (the protocol's
``--resume``) and skips finished ones. Several drivers may run at once (another shell, another campaign lane):
each locks the runs it is running (``driver.lock`` in the run folder) and leaves the runs another holds to it.
A finished run's stability record is written to its ``result.json`` (closed: ``bench/progress.py`` carries it,
not the trajectory, to the next machine). A run the monitor stops (a bond stretched beyond 1.5x, atoms
colliding, NaN) ends early and counts as unstable; ``failures.py`` then labels the frames into its failure and a
replay of it with GFN2-xTB (``failure.json`` beside ``result.json``; ``failures.json`` and ``failures.png`` here).

Controls: a molecule with a shipped equivariant model trained to convergence on the same split (the peptide)
also runs it, as ``shipped_equivariant``, at ``--control-temperatures`` (default 500 K) from the same starts and
seeds: ``control_summary.json`` in the same schema, a hatched bar in the plot.

Summary (written after the runs, or at once with ``--report-only``, which runs nothing and marks unfinished
runs): ``<bench-dir>/summary.json`` as ``{molecule: {model: {"test_force_mae", "force_unit", "runs": {"300":
[coefficients], "500": [...]}, ...}}}`` with, per run, the stability coefficient of Fu et al. (the fraction of
the requested time before any bond of the starting structure deviates by more than 0.5 Å from its
equilibrium length, the length in the molecule's relaxed structure; ``null`` while the run is unfinished)
next to the monitor's stable fraction and verdict, and ``<bench-dir>/stability_bars.png``: mean coefficient
per molecule, temperature and model with 2-sigma error bars (sample standard deviation over finished runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from failures import FAILURE_FILE
from study_common import (
    BENCH_DIR,
    CONTROL,
    KERNELS,
    MODELS,
    MOLECULES,
    REPOSITORY,
    RUNS_DIR,
    control_entry,
    export_for_md,
    models_file,
    molecule,
    read_models,
)

from so3krates_openmm.files import LockedError, exclusive_lock


@dataclass(frozen=True)
class StudyRun:
    """One Langevin run of the study."""

    molecule: str
    model: str
    temperature_K: float
    index: int
    start_frame: int
    seed: int
    start_pdb: Path
    model_pt: Path
    output: Path


def start_frames(name: str, temperature_K: float, runs: int) -> list[int]:
    """The starting frames of ``runs`` runs at ``temperature_K``: drawn from the validation and test frames
    sampled at that temperature, without replacement, by ``numpy.random.default_rng(int(temperature_K))``."""
    target = molecule(name)
    temperatures = target.dataset().sampling_temperatures()
    held_out = np.union1d(target.split_part("valid"), target.split_part("test"))
    candidates = np.sort(held_out[np.isclose(temperatures[held_out], temperature_K)])
    if len(candidates) < runs:
        raise SystemExit(f"{name}: only {len(candidates)} validation/test frames at {temperature_K:g} K for "
                         f"{runs} runs")
    chosen = np.random.default_rng(int(temperature_K)).choice(candidates, size=runs, replace=False)
    return [int(frame) for frame in chosen]


def run_seed(temperature_K: float, index: int) -> int:
    """The seed of run ``index`` at ``temperature_K`` (velocities and Langevin noise)."""
    return 10 * int(temperature_K) + index + 1


def write_start_pdb(name: str, frame: int, path: Path) -> Path:
    """The molecule's topology with the positions of data frame ``frame`` as a PDB (kept if it exists)."""
    if path.is_file():
        return path
    from openmm import app, unit

    from so3krates_openmm.data.structures import read_structure
    from so3krates_openmm.files import write_atomically

    target = molecule(name)
    structure = read_structure(target.structure)
    positions = target.dataset()[frame].positions
    if positions.shape != structure.positions_angstrom.shape:
        raise SystemExit(f"frame {frame} of {name} has {positions.shape[0]} atoms, {target.structure} has "
                         f"{structure.n_atoms}")

    def write(temporary: Path) -> None:
        with open(temporary, "w") as handle:
            app.PDBFile.writeFile(structure.openmm_topology(), positions * unit.angstrom, handle, keepIds=True)

    return write_atomically(path, write)


def resolved(path: str) -> Path:
    """A path of models.json (relative to the repository unless absolute)."""
    return Path(path) if Path(path).is_absolute() else REPOSITORY / path


def exported_model(name: str, model: str, entry: dict) -> Path:
    """The model's export for MD; made again from the committed matched checkpoint when missing (a new
    machine) or of another kind than ``KERNELS`` (every kind computes the same model)."""
    from so3krates_openmm.export import read_export_metadata

    path = resolved(entry["model_pt"])
    kind = read_export_metadata(path).get("kernels") if path.is_file() else None
    if kind != KERNELS[model]:
        source = resolved(entry["matched_checkpoint"])
        why = "is missing" if kind is None else f"has the {kind} kernels"
        print(f"{path} {why}: exporting {source} again ({KERNELS[model]} kernels)", flush=True)
        export_for_md(source, molecule(name).structure, path, KERNELS[model])
    return path


def model_entries(args: argparse.Namespace, name: str) -> dict[str, dict]:
    """The molecule's models as ``models.json`` records them, and its :data:`CONTROL` model (with ``--control``,
    where it has one) as a record of the same keys."""
    entries = dict(read_models(args.bench_dir, name)["models"])
    control = control_entry(name, args.root) if args.control else None
    if control is not None:
        entries[CONTROL] = control
    return entries


def plan(args: argparse.Namespace, molecules: list[str], models: list[str], *, export: bool) -> list[StudyRun]:
    """Every run of the study for ``molecules`` and ``models``, and of each molecule's :data:`CONTROL` model at
    ``--control-temperatures`` (starting PDBs written on the way, and with ``export`` the missing model exports)."""
    runs = []
    for name in molecules:
        entries = model_entries(args, name)
        model_files = {model: exported_model(name, model, entry) if export else resolved(entry["model_pt"])
                       for model, entry in entries.items() if model in models or model == CONTROL}
        for temperature in args.temperatures:
            frames = start_frames(name, temperature, args.runs)
            with_control = CONTROL in entries and temperature in args.control_temperatures
            for index, frame in enumerate(frames):
                start = write_start_pdb(name, frame, args.root / name / "md" / "starts" /
                                        f"{temperature:g}K_run{index}_frame{frame}.pdb")
                for model in [*models, CONTROL] if with_control else models:
                    runs.append(StudyRun(name, model, temperature, index, frame, run_seed(temperature, index), start,
                                         model_files[model],
                                         args.root / name / "md" / model / f"{temperature:g}K" / f"run_{index}"))
    return runs


def command(run: StudyRun, args: argparse.Namespace) -> list[str]:
    """The Langevin protocol's command line of one run (resumes when the run has started)."""
    steps = round(args.ps * 1000.0 / args.timestep_fs)
    arguments = [
        sys.executable, "-m", "so3krates_openmm.cli.langevin_nvt",
        "--structure", str(run.start_pdb), "--model", str(run.model_pt), "--platform", "CPU", "--threads", "1",
        "--temperature", f"{run.temperature_K:g}", "--friction", f"{args.friction:g}",
        "--timestep-fs", f"{args.timestep_fs:g}", "--steps", str(steps), "--segment-ps", f"{args.segment_ps:g}",
        "--seed", str(run.seed), "--no-minimize", "--output", str(run.output), "--no-progress",
        "--log-interval", str(args.frame_interval), "--trajectory-interval", str(args.frame_interval),
        "--checkpoint-interval", str(args.checkpoint_interval), "--stability-interval", str(args.frame_interval),
    ]
    if (run.output / "segments.json").is_file():
        arguments.append("--resume")
    return arguments


#: A finished run's stability record (:func:`run_result`), written once it has finished: closed, it says all that
#: the summary needs, so bench/progress.py carries it to another machine without the run's trajectory.
RESULT_FILE = "result.json"
#: The lock a driver holds on a run while its protocol process runs: drivers side by side on one machine
#: (``--jobs`` each) take different runs.
DRIVER_LOCK = "driver.lock"


def run_result(run: StudyRun) -> dict:
    """The run's stability record (``segmented_stability``: ``coefficient``, ``finished``, ``stable_fraction``,
    ``unstable_reason``, ``simulated_ps``, ...), the bonds those of its starting structure with the equilibrium
    lengths of the molecule's relaxed structure. Read from :data:`RESULT_FILE` when it exists; written there
    when the run has finished."""
    from so3krates_openmm.data.structures import read_structure
    from so3krates_openmm.files import write_atomically
    from so3krates_openmm.md.segments import segmented_stability
    from so3krates_openmm.md.stability import covalent_bonds

    path = run.output / RESULT_FILE
    if path.is_file():
        return json.loads(path.read_text())
    if status_of(run) is None:
        return {"coefficient": None, "finished": False, "stable_fraction": None, "unstable_reason": "not started",
                "simulated_ps": 0.0}
    relaxed = read_structure(molecule(run.molecule).structure)
    bonds, _ = covalent_bonds(read_structure(run.start_pdb))
    delta = relaxed.positions_angstrom[bonds[:, 1]] - relaxed.positions_angstrom[bonds[:, 0]]
    values = segmented_stability(run.output, bonds, np.linalg.norm(delta, axis=1))
    if values["finished"]:
        write_atomically(path, json.dumps(values, indent=2) + "\n")
    return values


def finished(run: StudyRun) -> bool:
    """Whether the run has finished (its :data:`RESULT_FILE`, or its segments, say so)."""
    return (run.output / RESULT_FILE).is_file() or ((status := status_of(run)) is not None and status.finished)


def status_of(run: StudyRun):
    """The run's :class:`~so3krates_openmm.md.segments.SegmentedStatus`, ``None`` before it started."""
    from so3krates_openmm.md.segments import segmented_status

    try:
        return segmented_status(run.output)
    except FileNotFoundError:
        return None


def progress_ps(runs: list[StudyRun], args: argparse.Namespace) -> float:
    """Simulated ps over all runs (a finished run counts in full: the monitor may end it early)."""
    total = 0.0
    for run in runs:
        if finished(run):
            total += args.ps
        elif (status := status_of(run)) is not None:
            total += status.progress_steps * args.timestep_fs * 1e-3
    return total


def analyse_failure(run: StudyRun, args: argparse.Namespace) -> None:
    """``failures.py`` on a run the monitor stopped (GFN2-xTB along the frames into the failure and along a replay
    of it), while its trajectory is on this machine; output to the run's ``driver.log``. A failed analysis is
    reported and leaves the study going."""
    checkpoint = resolved(model_entries(args, run.molecule)[run.model]["matched_checkpoint"])
    with open(run.output / "driver.log", "a") as log:
        completed = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("failures.py")), str(run.output), "--checkpoint",
             str(checkpoint), "--model", str(run.model_pt), "--structure", str(run.start_pdb)],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPOSITORY,
            env=dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"))
    label = f"{run.molecule} {run.model} {run.temperature_K:g} K run {run.index}"
    if completed.returncode == 0:
        print(f"{label}: failure analysed ({run.output / FAILURE_FILE})", flush=True)
    else:
        print(f"{label}: the failure analysis did not finish (exit {completed.returncode}); see "
              f"{run.output / 'driver.log'}", flush=True)


def unanalysed_failures(runs: list[StudyRun]) -> list[StudyRun]:
    """Finished runs the monitor stopped whose failure is not analysed yet and whose trajectory is here."""
    return [run for run in runs if finished(run) and not (run.output / FAILURE_FILE).is_file()
            and run_result(run)["unstable_reason"] is not None and any(run.output.glob("segment_*/trajectory.dcd"))]


def die_with_parent() -> None:
    """In a child process (Linux): receive SIGKILL when the driver dies, so that a killed driver leaves no run
    behind that the next driver would start a second time (the run resumes from its checkpoint)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def execute(runs: list[StudyRun], args: argparse.Namespace) -> int:
    """Run the unfinished runs in ``--jobs`` single-thread processes; returns the number that failed to run."""
    pending = [run for run in runs if not finished(run)]
    print(f"{len(runs) - len(pending)} of {len(runs)} runs finished; {len(pending)} to run in {args.jobs} "
          f"process(es) of 1 thread", flush=True)
    environment = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                       PYTHONPATH=os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])))
    active: dict[subprocess.Popen, tuple[StudyRun, contextlib.ExitStack]] = {}
    elsewhere: list[StudyRun] = []
    failures = 0
    started_ps, started = progress_ps(runs, args), time.monotonic()
    last_status = 0.0
    try:
        while pending or active:
            while pending and len(active) < args.jobs:
                run = pending.pop(0)
                held = contextlib.ExitStack()
                try:
                    held.enter_context(exclusive_lock(run.output / DRIVER_LOCK))
                except LockedError:
                    elsewhere.append(run)  # another driver runs it
                    continue
                if finished(run):  # by another driver since the plan was made
                    held.close()
                    continue
                log = open(run.output / "driver.log", "a")
                log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command(run, args))}\n")
                log.flush()
                active[subprocess.Popen(command(run, args), stdout=log, stderr=subprocess.STDOUT, cwd=REPOSITORY,
                                        env=environment, preexec_fn=die_with_parent)] = (run, held)
                log.close()
            time.sleep(2.0)
            for process in [process for process in active if process.poll() is not None]:
                run, held = active.pop(process)
                held.close()
                label = f"{run.molecule} {run.model} {run.temperature_K:g} K run {run.index}"
                if process.returncode in (0, 1):
                    verdict = "completed" if process.returncode == 0 else "stopped by the stability monitor"
                    coefficient = run_result(run)["coefficient"]  # written to result.json: the run is closed
                    print(f"{label}: {verdict}, stability coefficient {coefficient:.3f}", flush=True)
                    if process.returncode == 1:
                        analyse_failure(run, args)
                else:
                    failures += 1
                    print(f"{label}: FAILED (exit {process.returncode}); see {run.output / 'driver.log'}", flush=True)
            if time.monotonic() - last_status >= args.status_interval or not (pending or active):
                last_status = time.monotonic()
                done_ps, total_ps = progress_ps(runs, args), args.ps * len(runs)
                # a resumed run first goes back to its last checkpoint: no rate before the first status interval
                elapsed = time.monotonic() - started
                rate = (done_ps - started_ps) / elapsed * 3600.0 if elapsed >= args.status_interval else float("nan")
                speed, eta = (f"{rate:.1f}", f"{(total_ps - done_ps) / rate:.1f} h") if rate > 0 else ("?", "?")
                done = sum(1 for run in runs if finished(run))
                print(f"[{time.strftime('%H:%M:%S')}] runs finished {done}/{len(runs)}, running {len(active)}; "
                      f"{done_ps:.1f}/{total_ps:.1f} ps; {speed} ps/h; ETA {eta}", flush=True)
    except KeyboardInterrupt:
        for process in active:
            process.terminate()
        for process in active:
            process.wait()
        print("interrupted: the same command continues every unfinished run from its checkpoint", flush=True)
        raise
    if elsewhere:
        print(f"{len(elsewhere)} run(s) left to the other driver(s) running them: "
              + ", ".join(f"{r.molecule} {r.model} {r.temperature_K:g} K run {r.index}" for r in elsewhere), flush=True)
    return failures


def run_settings(runs: list[StudyRun], args: argparse.Namespace, name: str) -> dict:
    """The settings of a molecule's and model's runs as their first started run records them (``segments.json``;
    the command line's values while none has started)."""
    settings = {"ps": args.ps, "timestep_fs": args.timestep_fs, "friction_per_ps": args.friction,
                "segment_ps": args.segment_ps}
    for run in runs:
        status = status_of(run)
        if status is not None:
            manifest = json.loads((run.output / "segments.json").read_text())
            settings = {"ps": status.total_steps * status.timestep_fs * 1e-3, "timestep_fs": status.timestep_fs,
                        "friction_per_ps": manifest["identity"]["friction_per_ps"],
                        "segment_ps": status.segment_steps * status.timestep_fs * 1e-3}
            break
    return {**settings, "fu_max_bond_deviation_angstrom": 0.5, "monitor_bond_stretch_factor": 1.5,
            "equilibrium_bond_lengths": f"{molecule(name).structure.name} (relaxed structure)"}


def model_record(runs: list[StudyRun], args: argparse.Namespace, name: str, model: str, entry: dict,
                 force_unit: str, temperatures: list[float]) -> dict:
    """One model's entry of the summary: its test force MAE, and per temperature the coefficients (``None`` while
    unfinished), monitor verdicts, simulated ps, seeds and starting frames of its runs."""
    record = {
        "test_force_mae": entry["test_force_mae"], "force_unit": force_unit,
        "runs": {}, "finished": {}, "monitor_stable_fraction": {}, "monitor_verdict": {},
        "simulated_ps": {}, "coefficient_so_far": {}, "seeds": {}, "start_frames": {},
        "checkpoint": entry["checkpoint"], "epoch": entry["epoch"],
        "settings": run_settings([r for r in runs if (r.molecule, r.model) == (name, model)], args, name),
    }
    for temperature in temperatures:
        key = f"{temperature:g}"
        for field in ("runs", "finished", "monitor_stable_fraction", "monitor_verdict", "simulated_ps",
                      "coefficient_so_far", "seeds", "start_frames"):
            record[field][key] = []
        for run in (r for r in runs if (r.molecule, r.model, r.temperature_K) == (name, model, temperature)):
            record["seeds"][key].append(run.seed)
            record["start_frames"][key].append(run.start_frame)
            values = run_result(run)
            record["runs"][key].append(values["coefficient"] if values["finished"] else None)
            record["coefficient_so_far"][key].append(values["coefficient"])
            record["finished"][key].append(values["finished"])
            record["monitor_stable_fraction"][key].append(values["stable_fraction"])
            record["monitor_verdict"][key].append(
                "not finished" if not values["finished"] else
                "stable" if values["unstable_reason"] is None else f"unstable: {values['unstable_reason']}")
            record["simulated_ps"][key].append(values["simulated_ps"])
    return record


def summarise(runs: list[StudyRun], args: argparse.Namespace, molecules: list[str]) -> dict:
    """summary.json (the issue's schema plus seeds, start frames, monitor verdicts, simulated ps), the control
    models' control_summary.json (the same schema), the bar plot and the failures' summary."""
    from so3krates_openmm.files import write_atomically

    summary: dict = {}
    controls: dict = {}
    for name in molecules:
        models = read_models(args.bench_dir, name)
        for model in MODELS:
            record = model_record(runs, args, name, model, models["models"][model], models["force_unit"],
                                  args.temperatures)
            summary.setdefault(name, {})[model] = {**record, "matched": models["matched"]}
        control = model_entries(args, name).get(CONTROL)
        if control is not None:
            temperatures = [t for t in args.temperatures if t in args.control_temperatures]
            controls[name] = {CONTROL: {**model_record(runs, args, name, CONTROL, control, models["force_unit"],
                                                       temperatures), "role": control["role"]}}
    args.bench_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(args.bench_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    if controls:
        write_atomically(args.bench_dir / "control_summary.json", json.dumps(controls, indent=2) + "\n")
    plot_bars(summary, controls, args.bench_dir / "stability_bars.png")
    summarise_failures(runs, args.bench_dir)
    for table in (summary, controls):
        for name, by_model in table.items():
            for model, record in by_model.items():
                for key, values in record["runs"].items():
                    done = [v for v in values if v is not None]
                    mean = f"{np.mean(done):.3f}" if done else "-"
                    print(f"{name:13s} {model:19s} {key} K: {len(done)}/{len(values)} finished, mean coefficient "
                          f"{mean}; monitor: {', '.join(v.split(':')[0] for v in record['monitor_verdict'][key])}")
    print(f"wrote {args.bench_dir / 'summary.json'} and {args.bench_dir / 'stability_bars.png'}")
    return summary


def summarise_failures(runs: list[StudyRun], bench_dir: Path) -> dict:
    """``failures.json`` (every analysed failure, ``failures.py``'s records by molecule, model, temperature and run)
    and ``failures.png`` (along each replayed failure: the energy error and the largest atom force error against
    GFN2-xTB over the time before the failing step); nothing when no failure is analysed."""
    from so3krates_openmm.files import write_atomically
    from so3krates_openmm.md.plotting import pyplot, save_figure

    records: dict = {}
    analysed = [(run, json.loads((run.output / FAILURE_FILE).read_text())) for run in runs
                if (run.output / FAILURE_FILE).is_file()]
    for run, record in analysed:
        records.setdefault(run.molecule, {}).setdefault(run.model, {}).setdefault(
            f"{run.temperature_K:g}", {})[f"run_{run.index}"] = record
    if not records:
        return records
    write_atomically(bench_dir / "failures.json", json.dumps(records, indent=2) + "\n")
    replayed = [(run, record["replay"]) for run, record in analysed
                if (record.get("replay") or {}).get("frames")]
    molecules = sorted({run.molecule for run, _ in replayed})
    plt = pyplot()
    figure, axes = plt.subplots(2, max(len(molecules), 1), figsize=(5.0 * max(len(molecules), 1), 6.5),
                                sharex=True, squeeze=False)
    styles = {"equivariant": "-", "invariant": "--", CONTROL: ":"}
    colours = {300.0: "tab:blue", 500.0: "tab:red"}
    for run, replay in replayed:
        column = molecules.index(run.molecule)
        frames = replay["frames"]
        before_fs = [(frame["step"] - replay["failure_step"]) * replay["timestep_fs"] for frame in frames]
        style = dict(linestyle=styles.get(run.model, "-"), marker=".",
                     color=colours.get(run.temperature_K, "tab:gray"), alpha=0.8)
        label = f"{run.model} {run.temperature_K:g} K"
        known = axes[0, column].get_legend_handles_labels()[1]
        axes[0, column].plot(before_fs, [f["energy_error"] for f in frames], **style,
                             label=None if label in known else label)
        axes[1, column].plot(before_fs, [f["force_max_error"] for f in frames], **style)
    for column, name in enumerate(molecules):
        count = sum(run.molecule == name for run, _ in replayed)
        axes[0, column].set_title(f"{name}: {count} stopped run(s), replayed from the last good state",
                                  fontsize=9)
        axes[0, column].set_yscale("symlog", linthresh=10.0)
        axes[1, column].set_yscale("log")
        axes[1, column].set_xlabel("time before the monitor's stop in the replay (fs)")
        axes[0, column].legend(fontsize=7, handlelength=4.0)
    axes[0, 0].set_ylabel("energy error, model - GFN2-xTB\n(kcal/mol)")
    axes[1, 0].set_ylabel("largest atom force error\n(kcal/mol/Å)")
    save_figure(figure, bench_dir / "failures.png")
    return records


def plot_bars(summary: dict, controls: dict, path: Path) -> Path:
    """Mean stability coefficient per molecule and temperature, one bar per model and a hatched one for a control
    model where it ran, 2-sigma error bars (the sample standard deviation over the finished runs); the finished
    runs are written above each bar."""
    from so3krates_openmm.md.plotting import pyplot, save_figure

    plt = pyplot()
    groups = [(name, key) for name, by_model in summary.items() for key in next(iter(by_model.values()))["runs"]]
    models = [model for model in MODELS if any(model in by_model for by_model in summary.values())]
    if controls:
        models.append(CONTROL)
    figure, axis = plt.subplots(figsize=(1.6 + 1.6 * len(groups), 3.8))
    width = 0.8 / max(len(models), 1)

    def runs_of(model: str, name: str, key: str) -> list | None:
        return (controls if model == CONTROL else summary).get(name, {}).get(model, {}).get("runs", {}).get(key)

    for position, (name, key) in enumerate(groups):
        present = [model for model in models if runs_of(model, name, key) is not None]
        for slot, model in enumerate(present):
            offset, values = models.index(model), runs_of(model, name, key)
            done = np.array([v for v in values if v is not None], dtype=float)
            x = position + (slot - (len(present) - 1) / 2) * width
            mean = done.mean() if len(done) else 0.0
            error = 2 * done.std(ddof=1) if len(done) > 1 else 0.0
            first = model not in axis.get_legend_handles_labels()[1]
            axis.bar(x, mean, width, color=f"C{offset}", label=model if first else None, yerr=error, capsize=3,
                     hatch="//" if model == CONTROL else None)
            axis.text(x, min(mean + error, 1.05) + 0.02, f"{len(done)}/{len(values)}", ha="center", fontsize=7)
    axis.set_xticks(range(len(groups)), [f"{name}\n{key} K" for name, key in groups], fontsize=8)
    axis.set_ylabel("stability coefficient (Fu et al.)")
    axis.set_ylim(0, 1.2)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars: none hidden
    axis.set_title("mean and 2 sigma over runs (finished/requested above each bar)", fontsize=8)
    return save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--molecules", nargs="+", default=list(MOLECULES), choices=list(MOLECULES))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--temperatures", nargs="+", type=float, default=[300.0, 500.0], help="K")
    parser.add_argument("--runs", type=int, default=6, help="runs per molecule, model and temperature")
    parser.add_argument("--ps", type=float, default=100.0, help="length of each run, ps")
    parser.add_argument("--timestep-fs", type=float, default=0.5)
    parser.add_argument("--friction", type=float, default=1.0, help="Langevin friction, 1/ps")
    parser.add_argument("--segment-ps", type=float, default=10.0, help="closed segments of this length, ps")
    parser.add_argument("--frame-interval", type=int, default=100,
                        help="steps between trajectory frames, log lines and stability checks")
    parser.add_argument("--checkpoint-interval", type=int, default=4000, help="steps between checkpoints")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (one thread each)")
    parser.add_argument("--status-interval", type=float, default=300.0, help="seconds between status lines")
    parser.add_argument("--control-temperatures", nargs="+", type=float, default=[500.0],
                        help=f"K: where the molecules' control models ({CONTROL}) run too")
    parser.add_argument("--no-control", dest="control", action="store_false", help="no control runs")
    parser.add_argument("--report-only", action="store_true", help="run nothing: summarise what has finished")
    parser.add_argument("--root", type=Path, default=RUNS_DIR, help="runs folder (git-ignored)")
    parser.add_argument("--bench-dir", type=Path, default=BENCH_DIR, help="where models.json are and summary goes")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.runs < 1 or args.ps <= 0 or args.segment_ps <= 0:
        parser.error("--jobs and --runs must be at least 1, --ps and --segment-ps positive")
    args.root, args.bench_dir = args.root.resolve(), args.bench_dir.resolve()
    missing = [name for name in args.molecules if not models_file(args.bench_dir, name).is_file()]
    if missing and not args.report_only:
        read_models(args.bench_dir, missing[0])  # exits naming the command to run first
    if not any(models_file(args.bench_dir, name).is_file() for name in MOLECULES):
        print("no molecule has matched models yet (train_pair.py writes models.json): nothing to report")
        return 0
    failures = 0
    if not args.report_only:
        failures = execute(plan(args, args.molecules, args.models, export=True), args)
    # the summary covers every molecule with matched models and both models, whatever this call ran
    reported = [name for name in MOLECULES if models_file(args.bench_dir, name).is_file()]
    runs = plan(args, reported, list(MODELS), export=False)
    for run in unanalysed_failures(runs):  # stopped before failures.py existed, or its analysis was cut off
        analyse_failure(run, args)
    summarise(runs, args, reported)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
