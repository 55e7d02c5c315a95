"""Active learning as one loop: committee MD in OpenMM -> diverse selection -> GFN2-xTB labels -> fine-tuning.

One iteration ``i`` (folder ``iteration_<i>``) with committee ``committee_<i>``:

1. **md**: Langevin MD at each temperature, driven by member 0 of the committee
   through TorchForce, with a :class:`~so3krates_openmm.md.uncertainty.CommitteeReporter`
   that evaluates the whole committee every ``evaluate_every`` steps and keeps
   every evaluated frame with its disagreement (``md_<T>K/uncertainty.{csv,xyz,png}``);
   a hard limit (``stop_threshold``) ends a run before the model drives the molecule apart.
2. **converged?** the loop stops when the 95th percentile of the maximum force
   disagreement along this iteration's MD is below ``target_force_std``.
3. **select**: the ``frames_per_iteration`` frames of highest disagreement that
   are pairwise diverse (:func:`~so3krates_openmm.data.selection.select_diverse`),
   plus ``random_frames_per_iteration`` frames drawn at random from the rest: the
   random frames measure the error along MD without the selection's bias and
   calibrate the uncertainty (``selected.npz``).
4. **label**: GFN2-xTB energies and forces of those frames (the labeller of
   ``so3krates-data label``, resumable frame by frame; ``labelled.npz``).
5. **merge**: the previous training data plus the new frames (``train_data.npz``), plus any
   data file appended to ``data`` when the loop was resumed (labelled frames from elsewhere,
   e.g. of a long run the loop's MD is too short to reach; ``added_data.json`` says which
   merge took each).
6. **fine-tune**: every member continues from its own checkpoint on the merged
   data (``committee_<i+1>``, resumable member by member).
7. **report**: errors of the MD-driving member on the new frames before and after
   fine-tuning, its test errors, the disagreement distribution, and the Spearman
   correlation between disagreement and true force error (``report.json``, ``report.png``).

Iteration 0 first trains ``committee_00`` from the starting checkpoint on the
starting data. Every stage writes its result atomically and is skipped when the
result exists, and the long stages (MD, labelling, training) resume from their
own checkpoints, so the same call after a kill at any moment continues where it
stopped, with nothing lost or done twice. ``summary.json`` collects the iterations.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
from ase.io import read as ase_read
from scipy.stats import spearmanr

from so3krates_openmm.data.formats import load_dataset, merge_datasets
from so3krates_openmm.data.labelling import LabelSettings, TrajectoryFrames, label_frames
from so3krates_openmm.data.selection import select_diverse
from so3krates_openmm.data.structures import Structure, read_structure
from so3krates_openmm.files import write_atomically
from so3krates_openmm.md.checkpoint import read_checkpoint as read_md_checkpoint
from so3krates_openmm.md.plotting import pyplot, save_figure
from so3krates_openmm.md.runner import CHECKPOINT, RUN_INFO, RunConfig, run_md
from so3krates_openmm.md.simulation import SimulationSettings, model_system
from so3krates_openmm.md.uncertainty import CommitteeReporter, UncertaintyLimitExceeded, read_disagreement_csv
from so3krates_openmm.model.committee import Committee
from so3krates_openmm.options import field_default, option
from so3krates_openmm.training.committee import DEFAULT_MEMBERS, member_directory, train_committee
from so3krates_openmm.training.config import TrainingConfig, config_from_dict
from so3krates_openmm.training.evaluation import evaluate_checkpoint
from so3krates_openmm.training.trainer import BEST_CHECKPOINT

logger = logging.getLogger(__name__)

SUMMARY = "summary.json"
REPORT = "report.json"
#: Data files appended to ``data`` on resume, each with the iteration whose merge adds it.
ADDED_DATA = "added_data.json"


#: Fine-tuning options of each committee member unless the ``training`` option replaces them key by key:
#: a small learning rate and whole epochs, so that a member improves on its checkpoint instead of retraining.
DEFAULT_FINE_TUNING: dict[str, Any] = {"max_epochs": 20, "lr": 1e-4}


@dataclass
class ActiveLearningSettings:
    """Everything the loop needs (units: K, ps, fs, Å, the data's energy unit); the command line
    ``so3krates-active-learning`` and its YAML file have one key per field."""

    structure: Path | None = option(None, "starting structure (PDB/XYZ) of every MD run", input_file=True)
    checkpoint: Path | None = option(None, "trained SO3krates checkpoint the committee is fine-tuned from",
                                     input_file=True)
    data: list[Path] = option([], "training data of that checkpoint (.npz/extended XYZ), merged with the new labels",
                              input_file=True)
    output: Path = option(Path("runs/active_learning"), "folder of the loop (resumed when it exists)")
    temperatures_K: list[float] = option([300.0, 500.0], "Langevin temperatures of the MD stage, K")
    iterations: int = option(3, "at most this many iterations", minimum=1)
    members: int = option(DEFAULT_MEMBERS, "committee size K", minimum=2)
    md_ps: float = option(10.0, "simulated time per temperature and iteration, ps")
    timestep_fs: float = option(0.5, "MD time step, fs")
    friction_per_ps: float = option(1.0, "Langevin friction, 1/ps")
    evaluate_every: int = option(100, "MD steps between committee evaluations (frames kept as candidates)",
                                 minimum=1)
    checkpoint_interval: int = option(2000, "MD steps between MD checkpoints", minimum=1)
    stop_threshold: float | None = option(
        None, "end an MD run when the maximum force disagreement passes this (energy unit/Å); null: never")
    select_threshold: float = option(0.0, "frames below this maximum force disagreement are never selected")
    frames_per_iteration: int = option(50, "frames selected by disagreement per iteration", minimum=1)
    random_frames_per_iteration: int = option(
        10, "further frames drawn at random per iteration (unbiased error along MD, calibration)", minimum=0)
    min_rmsd_angstrom: float = option(0.25, "selected frames differ pairwise by at least this heavy-atom RMSD, Å")
    min_separation_steps: int = option(400, "selected frames of one run lie at least this many MD steps apart",
                                       minimum=0)
    target_force_std: float | None = option(
        None, "stop when the 95th percentile of the maximum force disagreement along an iteration's MD is below "
        "this (energy unit/Å); null: run all iterations")
    label: dict[str, Any] = option({}, "GFN2-xTB settings of the labeller (LabelSettings keys, e.g. {charge: 0})")
    label_workers: int = option(1, "label as Dask tasks on a local cluster of this many processes (1: in this "
                                   "process)", minimum=1)
    scheduler: str | None = option(None, "address of a Dask scheduler whose workers label the frames")
    training: dict[str, Any] = option(
        dict(DEFAULT_FINE_TUNING), "options of each member's fine-tuning run (so3krates-train keys, e.g. "
        "{max_epochs: 20, lr: 1.0e-4, max_time: 30m}); keys given replace those of the default, the others stay; "
        "data, output, seed and init_from are set by the loop")
    platform: str = option("CPU", "OpenMM platform of the MD stage (CUDA on a GPU)")
    kernels: Literal["reference", "analytic", "fused"] = option(
        "reference", "kind of TorchScript module the MD-driving member runs as (so3krates-export --kernels): "
        "reference, analytic or fused (C++/OpenMP pair kernels, ~1.8x faster on the CPU); the committee's "
        "disagreement is always evaluated by the eager members")
    threads: int | None = option(None, "CPU threads of MD and training (default: all cores)", minimum=1)
    seed: int = option(0, "seeds the MD runs, the random frames and the committee's splits", minimum=0)

    def __post_init__(self) -> None:
        problems = []
        for name in ("structure", "checkpoint"):
            if getattr(self, name) is None:
                problems.append(f"{name}: required (--{name} FILE)")
            else:
                setattr(self, name, Path(getattr(self, name)))
        self.data = [Path(path) for path in ([self.data] if isinstance(self.data, (str, Path)) else self.data)]
        self.output = Path(self.output)
        if not self.data:
            problems.append("data: give the training data of the checkpoint (merged with the new labels)")
        for name in ("iterations", "evaluate_every", "checkpoint_interval"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.members < 2:
            problems.append(f"members must be at least 2, got {self.members}")
        if not self.temperatures_K or any(t <= 0 for t in self.temperatures_K):
            problems.append(f"temperatures_K must be positive, got {self.temperatures_K}")
        if self.md_ps <= 0 or self.timestep_fs <= 0:
            problems.append("md_ps and timestep_fs must be positive")
        if self.frames_per_iteration < 1 or self.random_frames_per_iteration < 0:
            problems.append("frames_per_iteration must be >= 1 and random_frames_per_iteration >= 0")
        self.training = {**DEFAULT_FINE_TUNING, **self.training}
        reserved = sorted({"data", "output", "seed", "init_from", "resume"} & set(self.training))
        if reserved:
            problems.append(f"training options {reserved} are set by the loop; leave them out")
        known = {item.name for item in fields(LabelSettings)}
        unknown = sorted(set(self.label) - known)
        if unknown:
            problems.append(f"label: unknown key(s) {unknown}; known: {sorted(known)}")
        if problems:
            raise ValueError("invalid active-learning settings: " + "; ".join(problems))
        self.temperatures_K = [float(t) for t in self.temperatures_K]
        self.label_settings  # noqa: B018 - checks the values now, not in the labelling stage

    @property
    def label_settings(self) -> LabelSettings:
        """The labeller's settings from :attr:`label`."""
        return LabelSettings(**self.label)

    @property
    def md_steps(self) -> int:
        return int(round(self.md_ps * 1000.0 / self.timestep_fs))


@dataclass(frozen=True)
class LoopState:
    """Where the loop's files are for iteration ``i``."""

    output: Path

    def committee(self, i: int) -> Path:
        return self.output / f"committee_{i:02d}"

    def iteration(self, i: int) -> Path:
        return self.output / f"iteration_{i:02d}"

    def md(self, i: int, temperature_K: float) -> Path:
        return self.iteration(i) / f"md_{temperature_K:g}K"

    def members(self, i: int, k: int) -> list[Path]:
        return [member_directory(self.committee(i), m) / BEST_CHECKPOINT for m in range(k)]


def _write_json(path: Path, data: dict) -> None:
    write_atomically(path, json.dumps(data, indent=2, default=str) + "\n")


def _force_std_max(csv_path: Path) -> np.ndarray:
    """The maximum force disagreement column of a :class:`CommitteeReporter` CSV file."""
    return next(v for k, v in read_disagreement_csv(csv_path).items() if k.startswith("force_std_max_"))


def _training_config(settings: ActiveLearningSettings, data: Path, output: Path, seed: int) -> TrainingConfig:
    options = {"threads": settings.threads, **settings.training, "data": [str(data)], "output": str(output),
               "seed": seed, "init_from": str(settings.checkpoint)}
    return config_from_dict(options, source="active-learning training options")


# settings that may change when a loop resumes: the budget and target, how (not what) MD and labels compute, and
# ``data``, to which files may be appended (they join the training data at the next merge)
RESUMABLE_SETTINGS = ("iterations", "target_force_std", "kernels", "label_workers", "scheduler", "data")


class ActiveLearning:
    """The loop (see the module docstring); :meth:`run` runs or resumes it."""

    def __init__(self, settings: ActiveLearningSettings, log: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.log = log
        self.paths = LoopState(Path(settings.output))
        self.structure: Structure = read_structure(settings.structure)
        for name in ("checkpoint", "structure"):
            if not Path(getattr(settings, name)).is_file():
                raise FileNotFoundError(f"{name} {getattr(settings, name)!r} does not exist")
        for path in settings.data:
            if not Path(path).is_file():
                raise FileNotFoundError(f"training data {path!r} does not exist")
        self._check_settings_unchanged()

    def _check_settings_unchanged(self) -> None:
        """A resumed loop must be the same loop: refuse other settings than :data:`RESUMABLE_SETTINGS`, naming
        them."""
        record = self.paths.output / "settings.json"
        current = json.loads(json.dumps(asdict(self.settings), default=str))
        if record.exists():
            saved = json.loads(record.read_text())
            # a setting added to the loop after ``saved`` was written counts as its default there
            defaults = json.loads(json.dumps({item.name: field_default(item) for item in fields(self.settings)},
                                             default=str))
            changed = sorted(
                k for k in current
                if k not in RESUMABLE_SETTINGS and saved.get(k, defaults[k]) != current[k]
            )
            if changed:
                raise ValueError(
                    f"{self.paths.output} holds a loop with other settings ({', '.join(changed)}); only "
                    f"{', '.join(RESUMABLE_SETTINGS)} may change when resuming. Use another output folder."
                )
            self._record_added_data(saved["data"], current["data"])
        self.paths.output.mkdir(parents=True, exist_ok=True)
        _write_json(record, current)

    def _record_added_data(self, saved: list[str], current: list[str]) -> None:
        """Files appended to ``data`` since the last start join the next merge that has not run yet
        (:data:`ADDED_DATA`); removing or reordering files is refused."""
        if current[:len(saved)] != saved:
            raise ValueError(
                f"{self.paths.output}: data may only grow when resuming (files appended at the end); it was "
                f"{saved}, now {current}. Use another output folder for other data."
            )
        appended = current[len(saved):]
        if not appended or not (self.paths.output / "train_data_00.npz").exists():
            return  # before the first merge every file of ``data`` is merged anyway
        next_merge = 0
        while (self.paths.iteration(next_merge) / "train_data.npz").exists():
            next_merge += 1
        record = self.added_data()
        record.extend({"file": path, "merged_in_iteration": next_merge} for path in appended)
        _write_json(self.paths.output / ADDED_DATA, {"added": record})
        self.log(f"data added on resume: {', '.join(appended)}; joins the training data in the merge of "
                 f"iteration {next_merge}")

    def added_data(self) -> list[dict[str, Any]]:
        """The data files appended on resume: ``{"file", "merged_in_iteration"}`` each."""
        path = self.paths.output / ADDED_DATA
        return json.loads(path.read_text())["added"] if path.exists() else []

    # ----- stages

    def initial_data(self) -> Path:
        """Committee 0's training data, ``train_data_00.npz``: the files of ``data`` but those appended on resume
        (they join a later merge; merged again the same way when a restored loop lacks the file)."""
        output = self.paths.output / "train_data_00.npz"
        if not output.exists():
            added = {entry["file"] for entry in self.added_data()}
            merge_datasets([str(path) for path in self.settings.data if str(path) not in added], output)
        return output

    def initial_committee(self) -> list[Path]:
        s = self.settings
        data = self.initial_data()
        config = _training_config(s, data, self.paths.committee(0), s.seed)
        result = train_committee(config, s.members, log=self.log)
        return result.checkpoints

    def md(self, i: int, committee: Committee, driver: Path) -> dict[float, Path]:
        """Stage 1: MD with the uncertainty reporter at every temperature; returns the reporters' CSV files."""
        s = self.settings
        csv_files = {}
        for t_index, temperature in enumerate(s.temperatures_K):
            directory = self.paths.md(i, temperature)
            csv_files[temperature] = directory / "uncertainty.csv"
            if (directory / RUN_INFO).exists() or (directory / "stopped.json").exists():
                continue
            directory.mkdir(parents=True, exist_ok=True)
            resume_step = None
            if (directory / CHECKPOINT).exists():
                resume_step = read_md_checkpoint(directory / CHECKPOINT).step
            reporter = CommitteeReporter(committee, self.structure.atomic_numbers, csv_files[temperature],
                                         s.evaluate_every, save_threshold=0.0, stop_threshold=s.stop_threshold,
                                         resume_step=resume_step)
            settings = SimulationSettings(ensemble="nvt", temperature_K=temperature, friction_per_ps=s.friction_per_ps,
                                          timestep_fs=s.timestep_fs, platform=s.platform, threads=s.threads,
                                          seed=1 + s.seed + 1000 * i + t_index, minimize=True)
            config = RunConfig(steps=s.md_steps, output_dir=directory, log_interval=s.evaluate_every,
                               trajectory_interval=s.evaluate_every, checkpoint_interval=s.checkpoint_interval,
                               resume=resume_step is not None, overwrite=resume_step is None,
                               identity={"model": str(driver), "structure": str(s.structure)},
                               reporters=[reporter])
            self.log(f"iteration {i}: MD at {temperature:g} K, {s.md_ps:g} ps ({directory})")
            try:
                system = model_system(self.structure, driver, kernels=s.kernels)
                result = run_md(self.structure, system, settings, config)
                if result.stability is not None and not result.stability.stable:
                    _write_json(directory / "stopped.json", {"reason": "unstable", "step": result.final_step})
            except UncertaintyLimitExceeded as stop:
                self.log(f"iteration {i}: {stop}")
                _write_json(directory / "stopped.json", {"reason": "uncertainty", "step": stop.step,
                                                          "force_std_max": stop.force_std_max})
            finally:
                reporter.close()
        return csv_files

    def candidates(self, i: int) -> dict[str, np.ndarray]:
        """Every evaluated frame of iteration ``i``'s MD: positions (Å), scores, temperature, step."""
        positions, scores, temperatures, steps = [], [], [], []
        for temperature in self.settings.temperatures_K:
            path = self.paths.md(i, temperature) / "uncertainty.xyz"
            if not path.exists() or path.stat().st_size == 0:
                continue
            for atoms in ase_read(path, index=":"):
                positions.append(atoms.positions)
                scores.append(float(atoms.info["force_std_max"]))
                temperatures.append(temperature)
                steps.append(int(atoms.info["step"]))
        if not positions:
            raise RuntimeError(f"iteration {i}: the MD runs evaluated no frame; lower evaluate_every or run longer")
        return {"positions": np.asarray(positions), "scores": np.asarray(scores),
                "temperatures_K": np.asarray(temperatures), "steps": np.asarray(steps, dtype=np.int64)}

    def select(self, i: int) -> Path:
        """Stage 3: diverse high-disagreement frames plus random ones -> ``selected.npz``."""
        s = self.settings
        path = self.paths.iteration(i) / "selected.npz"
        if path.exists():
            return path
        pool = self.candidates(i)
        heavy = np.flatnonzero(np.asarray(self.structure.atomic_numbers) > 1)
        run_index = np.asarray([s.temperatures_K.index(t) for t in pool["temperatures_K"]])
        chosen = select_diverse(pool["scores"], pool["positions"], s.frames_per_iteration,
                                threshold=s.select_threshold, min_rmsd_angstrom=s.min_rmsd_angstrom,
                                min_separation=s.min_separation_steps, atom_indices=heavy if len(heavy) >= 3 else None,
                                # runs at different temperatures never count as close in time
                                frame_numbers=pool["steps"]
                                + run_index * (10 * s.md_steps + 10 * s.min_separation_steps))
        rest = np.setdiff1d(np.arange(len(pool["scores"])), chosen)
        rng = np.random.default_rng(s.seed + 7919 * (i + 1))
        random = rng.choice(rest, size=min(s.random_frames_per_iteration, len(rest)), replace=False)
        indices = np.concatenate([chosen, np.sort(random)]).astype(np.int64)
        kind = np.array(["selected"] * len(chosen) + ["random"] * len(random))
        arrays = {"R": pool["positions"][indices], "z": np.asarray(self.structure.atomic_numbers),
                  "force_std_max": pool["scores"][indices], "temperature_K": pool["temperatures_K"][indices],
                  "step": pool["steps"][indices], "kind": kind}
        write_atomically(path, lambda temporary: np.savez(temporary, **arrays))
        self.log(f"iteration {i}: selected {len(chosen)} frames by disagreement and {len(random)} at random "
                 f"from {len(pool['scores'])}")
        return path

    def label(self, i: int, selected: Path) -> Path:
        """Stage 4: GFN2-xTB labels of the selected frames -> ``labelled.npz`` (resumable)."""
        output = self.paths.iteration(i) / "labelled.npz"
        if output.exists():
            return output
        with np.load(selected) as data:
            frames = TrajectoryFrames(np.asarray(data["z"]), np.asarray(data["R"]), None, str(selected))
        self.log(f"iteration {i}: labelling {frames.n_frames} frames with {self.settings.label_settings.method}")
        label_frames(frames, output, self.settings.label_settings, log=self.log, inputs={"selected": str(selected)},
                     workers=self.settings.label_workers, scheduler=self.settings.scheduler)
        return output

    def merge(self, i: int, labelled: Path) -> Path:
        """Stage 5: previous training data + the new frames (+ data files added for this merge) ->
        ``train_data.npz``."""
        output = self.paths.iteration(i) / "train_data.npz"
        if not output.exists():
            added = [entry["file"] for entry in self.added_data() if entry["merged_in_iteration"] == i]
            if added:
                self.log(f"iteration {i}: merging data added on resume: {', '.join(added)}")
            merge_datasets([self.training_data(i), labelled, *added], output)
        return output

    def training_data(self, i: int) -> Path:
        """The data committee ``i`` was trained on."""
        return self.paths.output / "train_data_00.npz" if i == 0 else self.paths.iteration(i - 1) / "train_data.npz"

    def fine_tune(self, i: int, data: Path) -> list[Path]:
        """Stage 6: every member of committee ``i`` continues on the merged data -> committee ``i + 1``."""
        s = self.settings
        config = _training_config(s, data, self.paths.committee(i + 1), s.seed)
        result = train_committee(config, s.members, log=self.log,
                                 member_init_from=self.paths.members(i, s.members))
        return result.checkpoints

    def report(self, i: int, before: Path, after: list[Path], labelled: Path, selected: Path,
               md_force_std: dict[float, np.ndarray]) -> dict[str, Any]:
        """Stage 7: errors before/after on the new frames, test errors, disagreement, calibration.

        ``md_force_std``: the maximum force disagreement along each temperature's MD run."""
        path = self.paths.iteration(i) / REPORT
        if path.exists():
            return json.loads(path.read_text())
        data = load_dataset(labelled)
        with np.load(selected) as arrays:
            kind = np.asarray(arrays["kind"])
            disagreement = np.asarray(arrays["force_std_max"])
        errors_before = evaluate_checkpoint(before, data, per_frame=True)
        errors_after = evaluate_checkpoint(after[0], data, per_frame=True)
        random = np.flatnonzero(kind == "random")
        chosen = np.flatnonzero(kind == "selected")

        def mae(report: dict, frames: np.ndarray, key: str) -> float | None:
            values = np.asarray(report["per_frame"][key])[frames]
            return float(np.mean(np.abs(values))) if len(values) else None

        true_error = np.asarray(errors_before["per_frame"]["force_max_error"])
        rho = spearmanr(disagreement, true_error).statistic if len(true_error) > 2 else float("nan")
        test = json.loads((after[0].parent / "test_report.json").read_text())
        md = {}
        for temperature, force in md_force_std.items():
            md[f"{temperature:g}"] = {"frames": int(len(force)), "percentiles": {
                str(q): float(np.percentile(force, q)) for q in (50, 90, 95, 99)}, "max": float(force.max())}
        unit = data.energy_unit
        report = {
            "iteration": i,
            "energy_unit": unit,
            "force_unit": f"{unit}/Angstrom",
            "frames_selected": int(len(chosen)),
            "frames_random": int(len(random)),
            "data_added": [entry["file"] for entry in self.added_data() if entry["merged_in_iteration"] == i],
            "md_disagreement": md,
            "md_disagreement_p95": float(np.percentile(np.concatenate(list(md_force_std.values())), 95)),
            "before": {"selected_energy_mae": mae(errors_before, chosen, "energy_error"),
                       "selected_force_mae": mae(errors_before, chosen, "force_mae"),
                       "md_energy_mae": mae(errors_before, random, "energy_error"),
                       "md_force_mae": mae(errors_before, random, "force_mae")},
            "after": {"selected_energy_mae": mae(errors_after, chosen, "energy_error"),
                      "selected_force_mae": mae(errors_after, chosen, "force_mae"),
                      "md_energy_mae": mae(errors_after, random, "energy_error"),
                      "md_force_mae": mae(errors_after, random, "force_mae"),
                      "test_energy_mae": test["errors"]["energy_mae"], "test_force_mae": test["errors"]["force_mae"]},
            "uncertainty_error_spearman": float(rho),
            "calibration": {"force_std_max": disagreement.tolist(), "force_max_error": true_error.tolist(),
                            "kind": kind.tolist()},
        }
        self._plot(i, report, md_force_std)
        _write_json(path, report)
        return report

    def _plot(self, i: int, report: dict[str, Any], md_force_std: dict[float, np.ndarray]) -> None:
        plt = pyplot()
        figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        for temperature, force in md_force_std.items():
            left.hist(force, bins=30, alpha=0.6, label=f"{temperature:g} K")
        left.set_xlabel(f"committee max force std ({report['force_unit'].replace('Angstrom', 'Å')})")
        left.set_ylabel("MD frames")
        left.legend(fontsize=8)
        calibration = report["calibration"]
        kind = np.asarray(calibration["kind"])
        for name, marker in (("selected", "o"), ("random", "s")):
            mask = kind == name
            right.scatter(np.asarray(calibration["force_std_max"])[mask],
                          np.asarray(calibration["force_max_error"])[mask], s=12, marker=marker, label=name)
        right.set_xlabel("committee max force std")
        right.set_ylabel("true max force error (GFN2-xTB)")
        right.set_title(f"Spearman {report['uncertainty_error_spearman']:.2f}", fontsize=9)
        right.legend(fontsize=8)
        save_figure(figure, self.paths.iteration(i) / "report.png")

    # ----- the loop

    def run(self) -> dict[str, Any]:
        """Run or resume the loop; returns the summary (also written to ``summary.json``)."""
        s = self.settings
        start = time.monotonic()
        members = self.initial_committee()
        reports, converged = [], False
        for i in range(s.iterations):
            elapsed = time.monotonic() - start
            eta = "" if i == 0 or not reports else f", ETA ~{elapsed / len(reports) * (s.iterations - i) / 60:.0f} min"
            self.log(f"active learning: iteration {i + 1}/{s.iterations}{eta}")
            committee = Committee.from_checkpoints(members)
            md_force_std = {t: _force_std_max(path) for t, path in self.md(i, committee, members[0]).items()}
            p95 = float(np.percentile(np.concatenate(list(md_force_std.values())), 95))
            if s.target_force_std is not None and p95 < s.target_force_std:
                self.log(f"iteration {i}: 95th percentile of the force disagreement {p95:.3g} is below the target "
                         f"{s.target_force_std:g}: converged")
                converged = True
                break
            selected = self.select(i)
            labelled = self.label(i, selected)
            data = self.merge(i, labelled)
            after = self.fine_tune(i, data)
            reports.append(self.report(i, members[0], after, labelled, selected, md_force_std))
            members = after
        summary = {
            "iterations": len(reports),
            "converged": converged,
            "frames_labelled": sum(r["frames_selected"] + r["frames_random"] for r in reports),
            "committee": [str(p) for p in members],
            "reports": [{k: v for k, v in r.items() if k != "calibration"} for r in reports],
        }
        _write_json(self.paths.output / SUMMARY, summary)
        return summary


def run_active_learning(settings: ActiveLearningSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run or resume the active-learning loop of ``settings`` (see :class:`ActiveLearning`)."""
    return ActiveLearning(settings, log).run()
