"""``so3krates-eval CHECKPOINT --data FILE``: energy and force errors of a checkpoint on a data set
(:mod:`so3krates_openmm.training.evaluation`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jsonargparse import ArgumentParser

from so3krates_openmm.cli.common import NO_PROCESS_TUNING, NO_PROCESS_TUNING_HELP, error, tune_process

PROG = "so3krates-eval"


def main(argv: Sequence[str] | None = None) -> int:
    """``so3krates-eval CHECKPOINT --data FILE [--indices 0-99 | --split-file F [--split test]] [--json OUT]
    [--per-frame CSV]``."""
    parser = ArgumentParser(
        prog=PROG,
        description="Energy and force errors (MAE, RMSE, force MAE per element; in the data's energy unit and in "
        "meV) of an SO3krates checkpoint on a data set, computed as the trainer's test report.",
    )
    parser.add_argument("checkpoint", help="checkpoint written by so3krates-train (e.g. best_checkpoint.pt)")
    parser.add_argument("--data", required=True, help="data set: MD22 .npz or anything ASE reads (extended XYZ)")
    parser.add_argument("--energy-unit", help="unit of the data's energies if the file does not record one")
    frames = parser.add_mutually_exclusive_group()
    frames.add_argument("--indices", help="0-based frame indices, e.g. '0-99,150' (default: all frames)")
    frames.add_argument("--split-file", help="a training run's last_checkpoint.pt, or JSON {\"test\": [...], ...}")
    parser.add_argument("--split", choices=("train", "valid", "test"), default="test",
                        help="part of --split-file to evaluate (default test)")
    parser.add_argument("--max-frames", type=int, help="evaluate at most the first N of the chosen frames")
    parser.add_argument("--batch-size", type=int, default=16, help="structures per batch (default 16)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--threads", type=int, help="CPU threads for PyTorch")
    parser.add_argument("--json", help="write the report as JSON to this file")
    parser.add_argument("--per-frame", metavar="CSV",
                        help="write each frame's energy error and force errors to this CSV (with the trajectory "
                        "frame and time of frames from `so3krates-data label`) and plot them to a PNG beside it")
    parser.add_argument(NO_PROCESS_TUNING, action="store_true", help=NO_PROCESS_TUNING_HELP)
    args = parser.parse_args(argv)
    tune_process(argv)

    from so3krates_openmm.data.dataset import DataError
    from so3krates_openmm.model.checkpoint import CheckpointError
    from so3krates_openmm.training import TrainingError

    try:
        import numpy as np
        import torch

        from so3krates_openmm.data.formats import load_dataset
        from so3krates_openmm.training.evaluation import (
            evaluate_checkpoint,
            format_evaluation,
            write_per_frame,
        )
        from so3krates_openmm.training.splits import read_split

        if args.threads is not None:
            torch.set_num_threads(args.threads)
        dataset = load_dataset(args.data, **({"energy_unit": args.energy_unit} if args.energy_unit else {}))
        indices = None
        if args.indices:
            from so3krates_openmm.export import parse_atom_indices

            indices = np.asarray(parse_atom_indices(args.indices))
        elif args.split_file:
            indices = read_split(args.split_file, args.split)
        if args.max_frames is not None:
            if args.max_frames < 1:
                raise DataError(f"--max-frames must be at least 1, got {args.max_frames}")
            indices = (np.arange(len(dataset)) if indices is None else indices)[: args.max_frames]
        report = evaluate_checkpoint(args.checkpoint, dataset, indices, batch_size=args.batch_size,
                                     device=args.device, per_frame=bool(args.per_frame))
        per_frame_files = write_per_frame(report, args.per_frame) if args.per_frame else ()
        if args.json:
            from so3krates_openmm.training.reporting import write_json

            write_json(args.json, report)
    except (DataError, CheckpointError, TrainingError, FileNotFoundError, ValueError) as problem:
        return error(PROG, problem)
    print(format_evaluation(report))
    for written in (args.json, *per_frame_files):
        if written:
            print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
