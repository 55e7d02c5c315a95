#!/usr/bin/env python
"""Why a stability run failed: the model against GFN2-xTB on the frames leading into the failure (issue 17).

    python bench/stability_study/failures.py RUN_DIR --checkpoint CKPT --model MODEL_PT --structure START_PDB
        [--window-ps 1] [--frames 8] [--baseline-frames 4]

For a run of ``run_study.py`` that the stability monitor stopped, ``--frames`` frames of the last ``--window-ps``
before the stop (the last frame the monitor passed among them) and ``--baseline-frames`` frames spread over the
stable part before that window are labelled with GFN2-xTB (the data's settings; ``RUN_DIR/failure_labels.npz``,
resumable) and evaluated with the run's model: per frame the energy error and force MAE against GFN2-xTB (the
model's eager checkpoint), and the largest force difference between the exported model the MD ran (``--model``,
through OpenMM's Reference platform) and the eager checkpoint in float64, which tells a kernel fault from the
model's own error. Writes ``RUN_DIR/failure.json`` (closed: ``bench/progress.py`` carries it to another machine,
the trajectory stays behind, so the analysis must run where the run ran; ``run_study.py`` starts it as soon as
the monitor stops a run). ``run_study.py``'s report gathers these files into ``bench/stability_study/failures.json``
and ``failures.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from study_common import recorded

from so3krates_openmm.cli.common import tune_process
from so3krates_openmm.data.selection import evenly_spaced

#: Written into the run folder once the analysis is complete.
FAILURE_FILE = "failure.json"
LABELS_FILE = "failure_labels.npz"


def chosen_frames(times_ps: np.ndarray, stop_ps: float, window_ps: float, frames: int,
                  baseline_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the baseline frames (spread over the run before the window) and of the window's frames (spread
    over the last ``window_ps`` before ``stop_ps``, ending with the last frame at or before it)."""
    verified = np.flatnonzero(times_ps <= stop_ps + 1e-9)
    if len(verified) == 0:
        return np.empty(0, dtype=int), np.empty(0, dtype=int)
    late = verified[times_ps[verified] >= stop_ps - window_ps]
    early = verified[times_ps[verified] < stop_ps - window_ps]
    return early[evenly_spaced(len(early), baseline_frames)], late[evenly_spaced(len(late), frames)]


class ExportCheck:
    """The exported model in OpenMM (Reference platform) beside the eager checkpoint in float64, built once."""

    def __init__(self, model_pt: Path, structure_pdb: Path, checkpoint: Path) -> None:
        import openmm as mm
        import torch

        from so3krates_openmm.data.structures import read_structure
        from so3krates_openmm.md.simulation import model_system
        from so3krates_openmm.model.checkpoint import load_model
        from so3krates_openmm.units import energy_conversion

        structure = read_structure(structure_pdb)
        self.atomic_numbers = structure.atomic_numbers
        self.context = mm.Context(model_system(structure, model_pt), mm.VerletIntegrator(0.001),
                                  mm.Platform.getPlatformByName("Reference"))
        self.model = load_model(checkpoint).double().eval()
        self.numbers = torch.as_tensor(structure.atomic_numbers, dtype=torch.long)
        self.to_kcal = energy_conversion(self.model.config.energy_unit, "kcal/mol")

    def force_difference(self, positions_angstrom: np.ndarray) -> np.ndarray:
        """Per frame, the largest force-component difference (kcal/mol/Å) between export and checkpoint."""
        import torch
        from openmm import unit

        from so3krates_openmm.units import ANGSTROM_PER_NM

        differences = []
        for positions in positions_angstrom:
            self.context.setPositions(positions / ANGSTROM_PER_NM)
            openmm_forces = self.context.getState(getForces=True).getForces(asNumpy=True).value_in_unit(
                unit.kilocalorie_per_mole / unit.angstrom)
            _, forces = self.model.energy_and_forces(self.numbers, torch.as_tensor(positions, dtype=torch.float64))
            differences.append(float(np.abs(openmm_forces - forces.detach().numpy() * self.to_kcal).max()))
        return np.asarray(differences)


def replay_failure(status, model_pt: Path, structure_pdb: Path, seeds: int = 3,
                   steps_after: int = 200) -> dict | None:
    """The failing segment of a stopped run (its :class:`~so3krates_openmm.md.segments.SegmentedStatus`) again
    from the monitor's last good state (``last_good_state.xml``), positions every
    step, with the run's integrator settings and a new Langevin stream (the run's is not stored), up to the first
    step the monitor rejects; ``seeds`` streams are tried. Returns ``{"seed", "failure_step" (steps after the
    last good state), "reason", "positions_angstrom" (every step up to it, inclusive)}`` or ``None`` when no
    stream fails within the run's failing interval plus ``steps_after`` steps."""
    import openmm as mm
    from openmm import unit

    from so3krates_openmm.data.structures import read_structure
    from so3krates_openmm.md.platforms import get_platform
    from so3krates_openmm.md.simulation import make_integrator, model_system
    from so3krates_openmm.md.stability import StabilityChecker

    segment = status.unstable.directory
    record = json.loads((segment / "stability.json").read_text())
    state = mm.XmlSerializer.deserialize((segment / "last_good_state.xml").read_text())
    structure = read_structure(structure_pdb)
    identity = json.loads((status.output_dir / "segments.json").read_text())["identity"]
    system = model_system(structure, model_pt)
    checker = StabilityChecker(structure)
    steps = int(record["failure_step"]) - int(record["last_good_step"]) + steps_after
    for seed in range(1, seeds + 1):
        integrator = make_integrator("nvt", temperature_K=identity["temperature_K"],
                                     friction_per_ps=identity["friction_per_ps"], timestep_fs=status.timestep_fs,
                                     seed=seed)
        platform, properties = get_platform("CPU", threads=1)
        context = mm.Context(system, integrator, platform, properties)
        context.setState(state)
        positions = []
        for step in range(steps + 1):
            if step:
                integrator.step(1)
            current = context.getState(getPositions=True, getEnergy=True)
            positions.append(current.getPositions(asNumpy=True).value_in_unit(unit.angstrom))
            reason = checker.check(positions[-1], current.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
            if reason is not None:
                return {"seed": seed, "failure_step": step, "reason": reason,
                        "positions_angstrom": np.asarray(positions)}
    return None


def labelled_errors(run_dir: Path, name: str, structure_pdb: Path, checkpoint: Path, check: ExportCheck,
                    positions_angstrom: np.ndarray, times_ps: np.ndarray, log=print) -> list[dict]:
    """GFN2-xTB labels of the frames (``run_dir/<name>.npz``, resumable) and, per frame, the checkpoint's energy
    error (model minus xTB), force MAE and largest atom force error against them, and the force difference between
    the export and the eager checkpoint (:meth:`ExportCheck.force_difference`)."""
    from so3krates_openmm.data.labelling import LabelSettings, TrajectoryFrames, label_frames
    from so3krates_openmm.training.evaluation import evaluate_checkpoint

    frames = TrajectoryFrames(check.atomic_numbers, positions_angstrom, times_ps, str(run_dir))
    labels = label_frames(frames, run_dir / f"{name}.npz", LabelSettings(checkpoint_every=4), progress=False,
                          log=log, inputs={"trajectory": str(run_dir), "structure": str(structure_pdb)})
    errors = evaluate_checkpoint(checkpoint, labels, per_frame=True)["per_frame"]
    difference = check.force_difference(positions_angstrom)
    return [{"time_ps": float(times_ps[n]), "energy_error": float(errors["energy_error"][n]),
             "force_mae": float(errors["force_mae"][n]), "force_max_error": float(errors["force_max_error"][n]),
             "export_force_difference": float(difference[n])} for n in range(len(times_ps))]


def analyse(run_dir: Path, checkpoint: Path, model_pt: Path, structure_pdb: Path, window_ps: float = 1.0,
            frames: int = 8, baseline_frames: int = 4, replay_frames: int = 12, log=print) -> dict | None:
    """The failure record of a stopped run (written to ``run_dir/failure.json``); ``None`` when the run is not
    stopped by the monitor or its trajectory is not on this machine."""
    from so3krates_openmm.files import write_atomically
    from so3krates_openmm.md.segments import read_segmented_trajectory, segmented_status

    path = run_dir / FAILURE_FILE
    if path.is_file():
        return json.loads(path.read_text())
    status = segmented_status(run_dir)
    if status.unstable is None:
        log(f"{run_dir}: not stopped by the stability monitor; nothing to analyse")
        return None
    positions, times = read_segmented_trajectory(run_dir)
    stop_ps = status.simulated_ps
    baseline, window = chosen_frames(times, stop_ps, window_ps, frames, baseline_frames)
    if len(window) == 0:
        log(f"{run_dir}: no trajectory frames before the stop at {stop_ps:.2f} ps on this machine; the analysis "
            "needs the run's trajectory (it runs where the run ran)")
        return None
    chosen = np.concatenate([baseline, window])
    check = ExportCheck(model_pt, structure_pdb, checkpoint)
    along_run = labelled_errors(run_dir, "failure_labels", structure_pdb, checkpoint, check, positions[chosen],
                                times[chosen], log)
    for n, frame in enumerate(along_run):
        frame.update(before_stop_ps=stop_ps - frame["time_ps"], part="baseline" if n < len(baseline) else "window")
    record = {
        "run": run_dir.name, "stop_ps": stop_ps, "reason": status.unstable.reason,
        "checkpoint": recorded(checkpoint), "model": recorded(model_pt),
        "energy_unit": "kcal/mol", "force_unit": "kcal/mol/Angstrom", "frames": along_run, "replay": None,
    }
    replay = replay_failure(status, model_pt, structure_pdb)
    if replay is not None:
        steps = evenly_spaced(replay["failure_step"] + 1, replay_frames)
        replay_times = stop_ps + steps * status.timestep_fs * 1e-3
        record["replay"] = {"seed": replay["seed"], "failure_step": replay["failure_step"],
                            "reason": replay["reason"], "timestep_fs": status.timestep_fs, "frames": None}
        try:
            record["replay"]["frames"] = labelled_errors(
                run_dir, "failure_replay_labels", structure_pdb, checkpoint, check,
                replay["positions_angstrom"][steps], replay_times, log)
        except RuntimeError as problem:  # GFN2-xTB on atoms almost on top of each other
            record["replay"]["xtb_problem"] = str(problem)
        for frame, step in zip(record["replay"]["frames"] or [], steps, strict=False):
            frame["step"] = int(step)
    write_atomically(path, json.dumps(record, indent=2) + "\n")
    stable_part = [f["force_mae"] for f in along_run if f["part"] == "baseline"]
    line = (f"{run_dir}: stopped at {stop_ps:.2f} ps ({status.unstable.reason}); force MAE against GFN2-xTB "
            f"{np.mean(stable_part) if stable_part else float('nan'):.2f} on the stable part, "
            f"{along_run[-1]['force_mae']:.2f} at the last good frame")
    if record["replay"] and record["replay"]["frames"]:
        last = record["replay"]["frames"][-1]
        line += (f"; replayed: fails again after {replay['failure_step']} steps, where the energy error is "
                 f"{last['energy_error']:+.1f} kcal/mol and the force MAE {last['force_mae']:.1f}")
    differences = [f["export_force_difference"] for f in along_run]
    log(line + f"; export vs eager at most {max(differences):.2g} kcal/mol/Å; {path}")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="the stopped run's folder (segments.json)")
    parser.add_argument("--checkpoint", type=Path, required=True, help="the run's model as a checkpoint")
    parser.add_argument("--model", type=Path, required=True, help="the exported model the MD ran (.pt)")
    parser.add_argument("--structure", type=Path, required=True, help="the run's starting structure (PDB)")
    parser.add_argument("--window-ps", type=float, default=1.0, help="ps before the stop to label")
    parser.add_argument("--frames", type=int, default=8, help="frames labelled in the window")
    parser.add_argument("--baseline-frames", type=int, default=4, help="frames labelled before the window")
    parser.add_argument("--replay-frames", type=int, default=12,
                        help="frames labelled along the replayed failure (last good state to the failing step)")
    args = parser.parse_args(argv)
    tune_process(argv, openblas=True, log=print)
    for name in ("checkpoint", "model", "structure"):
        if not getattr(args, name).is_file():
            parser.error(f"--{name} {getattr(args, name)} does not exist")
    if not (args.run_dir / "segments.json").is_file():
        parser.error(f"{args.run_dir} is not a segmented run (no segments.json)")
    if args.window_ps <= 0 or args.frames < 1 or args.baseline_frames < 0 or args.replay_frames < 2:
        parser.error("--window-ps must be positive, --frames at least 1, --baseline-frames at least 0, "
                     "--replay-frames at least 2")
    record = analyse(args.run_dir, args.checkpoint, args.model, args.structure, args.window_ps, args.frames,
                     args.baseline_frames, args.replay_frames)
    return 0 if record is not None else 1


if __name__ == "__main__":
    sys.exit(main())
