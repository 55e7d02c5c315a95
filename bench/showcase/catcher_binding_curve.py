#!/usr/bin/env python
"""The buckyball catcher's binding curve: the ball pulled rigidly out along the opening, GFN2-xTB against models.

    python bench/showcase/catcher_binding_curve.py [--structure PDB] [--shifts -0.3 0 0.5 ... 20]
        [--model NAME=CHECKPOINT ...] [--output bench/showcase/catcher_round1/rigid_pull] [--frames NPZ]

Frames: the structure (default: the shipped one, GFN2-xTB-relaxed) with the ball moved rigidly by each shift
along the line from the catcher's centroid to the ball's (:func:`so3krates_openmm.md.catcher.pulled_out`;
every catcher atom stays put; a negative shift pushes the ball in). Labels: GFN2-xTB energies and forces (the
labeller of ``so3krates-data label``, resumable) in ``--frames`` (default ``OUTPUT/frames.npz``), reused when it
holds these frames.
Every model given as ``NAME=CHECKPOINT`` (default: the shipped catcher model) is evaluated on them; energies
relative to the unshifted frame go to ``OUTPUT/binding_curve.json`` and ``binding_curve.png``. The binding
energy is the relative energy at the largest shift (beyond the cutoff for the default shifts).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from so3krates_openmm.cli.common import NO_PROCESS_TUNING, NO_PROCESS_TUNING_HELP, tune_process

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parents[1]
SHIPPED = REPOSITORY / "so3krates_openmm" / "pretrained" / "buckyball_catcher"
DEFAULT_SHIFTS = (-0.3, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0, 20.0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--structure", type=Path, default=SHIPPED / "structure.pdb", help="the complex (PDB/XYZ)")
    parser.add_argument(NO_PROCESS_TUNING, action="store_true", help=NO_PROCESS_TUNING_HELP)
    parser.add_argument("--shifts", type=float, nargs="+", default=list(DEFAULT_SHIFTS),
                        help="ball displacements along the opening, Å (0 is added when missing)")
    parser.add_argument("--model", nargs="+", default=[f"shipped={SHIPPED / 'best_checkpoint.pt'}"],
                        help="models as NAME=CHECKPOINT")
    parser.add_argument("--output", type=Path, default=HERE / "catcher_round1" / "rigid_pull",
                        help="frames.npz, binding_curve.json and binding_curve.png")
    parser.add_argument("--frames", type=Path, default=None,
                        help="labelled frames (.npz; made when missing; default OUTPUT/frames.npz)")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads of the model evaluation")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar while labelling")
    args = parser.parse_args(argv)
    args.shifts = sorted(set(args.shifts) | {0.0})
    models = {}
    for text in args.model:
        name, _, path = text.partition("=")
        if not name or not path:
            parser.error(f"--model {text!r}: give NAME=CHECKPOINT")
        if not Path(path).is_file():
            parser.error(f"--model {name}: {path} does not exist")
        models[name] = Path(path)
    args.model = models
    if not args.structure.is_file():
        parser.error(f"--structure {args.structure} does not exist")
    return args


def labelled_frames(structure_path: Path, shifts: list[float], output: Path, progress: bool):
    """GFN2-xTB labels of the pulled-out frames (``output``, reused when it holds exactly these frames)."""
    from so3krates_openmm.data.formats import load_dataset
    from so3krates_openmm.data.labelling import TrajectoryFrames, label_frames
    from so3krates_openmm.data.structures import read_structure
    from so3krates_openmm.md.catcher import identify_ball, pulled_out

    structure = read_structure(structure_path)
    frames = pulled_out(structure.positions_angstrom, identify_ball(structure), np.asarray(shifts))
    if output.exists():
        existing = load_dataset(output)
        if len(existing) == len(frames) and np.allclose(existing.stacked()[1], frames, atol=1e-4):
            return existing
        raise SystemExit(f"{output} holds other frames (another structure or other shifts); move it away or "
                         "choose another --output")
    label_frames(TrajectoryFrames(structure.atomic_numbers, frames, None, f"{structure_path} pulled out"), output,
                 progress=progress, inputs={"structure": str(structure_path), "shifts_angstrom": shifts})
    return load_dataset(output)


def plot(curve: dict, path: Path) -> None:
    from so3krates_openmm.md.plotting import pyplot, save_figure

    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.0, 4.2))
    shifts = curve["shift_angstrom"]
    axis.plot(shifts, curve["gfn2_xtb"], "k-o", ms=4, label="GFN2-xTB")
    for name, model in curve["models"].items():
        axis.plot(shifts, model["relative_energy"], "-s", ms=3.5, label=f"SO3krates: {name}")
    axis.set_xlabel("ball moved out along the opening (Å)")
    axis.set_ylabel(f"energy relative to the complex ({curve['energy_unit']})")
    axis.set_title("buckyball catcher: rigid pull of the ball", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tune_process(argv)  # as the commands: glibc keeps freed memory, idle OpenMP threads sleep
    import torch

    from so3krates_openmm.files import write_atomically
    from so3krates_openmm.training.evaluation import evaluate_checkpoint

    torch.set_num_threads(args.threads)
    args.output.mkdir(parents=True, exist_ok=True)
    data = labelled_frames(args.structure, args.shifts, args.frames or args.output / "frames.npz",
                           not args.no_progress)
    reference = data.energies - data.energies[args.shifts.index(0.0)]
    curve = {"structure": str(args.structure), "shift_angstrom": args.shifts, "energy_unit": data.energy_unit,
             "gfn2_xtb": reference.tolist(), "gfn2_xtb_binding_energy": float(reference[-1]), "models": {}}
    for name, checkpoint in args.model.items():
        errors = np.asarray(evaluate_checkpoint(checkpoint, data, per_frame=True)["per_frame"]["energy_error"])
        relative = reference + errors - errors[args.shifts.index(0.0)]
        curve["models"][name] = {"checkpoint": str(checkpoint), "relative_energy": relative.tolist(),
                                 "binding_energy": float(relative[-1]),
                                 "largest_error": float(np.max(np.abs(relative - reference)))}
        print(f"{name}: binding energy {relative[-1]:.1f} {data.energy_unit} (GFN2-xTB {reference[-1]:.1f}), "
              f"largest error along the curve {curve['models'][name]['largest_error']:.1f}")
    write_atomically(args.output / "binding_curve.json", json.dumps(curve, indent=2) + "\n")
    plot(curve, args.output / "binding_curve.png")
    print(f"wrote {args.output / 'binding_curve.json'} and binding_curve.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
