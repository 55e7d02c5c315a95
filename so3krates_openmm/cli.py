"""Command-line entry points (thin layers over the library).

Each ``*_main`` function is a console script declared in ``setup.py``.
"""

from __future__ import annotations

import argparse
import os
import sys

# Idle OpenMP threads sleep instead of spinning: on a shared machine spinning threads made
# PyTorch 10-20x slower (bench/RESULTS.md). Takes effect because torch is imported later.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from typing import Optional, Sequence


def _fail(message: str) -> "None":
    """Print an error for a person (no traceback) and exit with status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def export_main(argv: Optional[Sequence[str]] = None) -> int:
    """``so3krates-export CHECKPOINT --structure FILE -o model.pt``."""
    parser = argparse.ArgumentParser(
        prog="so3krates-export",
        description="Export an SO3krates checkpoint to a TorchScript .pt for openmm-torch's TorchForce "
        "(positions in nm -> energy in kJ/mol). The export checks itself against the eager model.",
    )
    parser.add_argument("checkpoint", help="checkpoint written by so3krates-train or save_checkpoint")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--structure", help="PDB or XYZ file with all particles of the OpenMM System")
    source.add_argument("--atomic-numbers", help="comma-separated atomic numbers of all particles, e.g. 6,1,1,1,1")
    parser.add_argument("-o", "--output", required=True, help="TorchScript file to write, e.g. model.pt")
    parser.add_argument("--atoms", help="0-based indices of the ML atoms for ML/MM, e.g. '0-41' (default: all)")
    parser.add_argument("--periodic", action="store_true", help="the module takes the periodic box (minimum image)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="compute precision")
    parser.add_argument("--outputs-forces", action="store_true", help="return (energy, forces): TorchForce.setOutputsForces(True)")
    parser.add_argument(
        "--static-pairs", action="store_true", help="fixed all-pairs edge list, needed for CUDA graphs (O(N^2) work)"
    )
    args = parser.parse_args(argv)

    from so3krates_openmm.data.structures import read_structure
    from so3krates_openmm.export import export_checkpoint, parse_atom_indices, read_export_metadata

    try:
        structure = read_structure(args.structure) if args.structure else None
        numbers = None
        if args.atomic_numbers:
            from so3krates_openmm.elements import atomic_numbers_of

            numbers = atomic_numbers_of(part for part in args.atomic_numbers.split(",") if part.strip())
        atoms = parse_atom_indices(args.atoms) if args.atoms else None
        path = export_checkpoint(
            args.checkpoint,
            args.output,
            structure=structure,
            atomic_numbers=numbers,
            atom_indices=atoms,
            periodic=args.periodic,
            dtype=args.dtype,
            outputs_forces=args.outputs_forces,
            static_pairs=args.static_pairs,
        )
    except (OSError, ValueError, RuntimeError) as error:
        _fail(str(error))
    metadata = read_export_metadata(path)
    print(
        f"wrote {path}: {len(metadata['atomic_numbers'])} modelled atoms of {metadata['n_particles']} particles, "
        f"{metadata['dtype']}, cutoff {metadata['cutoff_nm']} nm, periodic={metadata['periodic']}, "
        f"from checkpoint {metadata['checkpoint']} (sha256 {metadata['checkpoint_sha256'][:12]}); self-check passed"
    )
    return 0


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    """``so3krates-train [--config FILE] --data FILE [--option value ...]``.

    Multi-process: ``torchrun --nproc_per_node 2 -m so3krates_openmm.training --data FILE ...``
    (the batch size is global: each process takes its share of every batch).
    """
    from so3krates_openmm.data.dataset import DataError
    from so3krates_openmm.model.checkpoint import CheckpointError
    from so3krates_openmm.training import ConfigError, Trainer, TrainingError, parse_config
    from so3krates_openmm.training.distributed import shutdown_distributed

    try:
        config = parse_config(argv)
    except ConfigError as error:
        _fail(str(error))
    trainer = None
    try:
        trainer = Trainer(config)
        result = trainer.run()
    except (ConfigError, DataError, CheckpointError, TrainingError, FileNotFoundError) as error:
        _fail(str(error))
    except KeyboardInterrupt:
        print(f"\ninterrupted: continue from the last checkpoint (every --checkpoint-interval, and at each epoch end) with the same command and --resume "
              f"(output {config.output})", file=sys.stderr)
        return 130
    finally:
        if trainer is not None:
            shutdown_distributed(trainer.context)
    if trainer.context.is_main:
        print(f"best checkpoint: {result.best_checkpoint} ({result.epochs} epochs, {result.steps} steps)")
    return 0


def eval_main(argv: Sequence[str] | None = None) -> int:
    """``so3krates-eval CHECKPOINT --data FILE [--indices 0-99 | --split-file F [--split test]] [--json OUT]
    [--per-frame CSV]``."""
    parser = argparse.ArgumentParser(
        prog="so3krates-eval",
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
    args = parser.parse_args(argv)

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
            read_split,
            write_per_frame,
        )

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
    except (DataError, CheckpointError, TrainingError, FileNotFoundError, ValueError) as error:
        _fail(str(error))
    print(format_evaluation(report))
    for written in (args.json, *per_frame_files):
        if written:
            print(f"wrote {written}")
    return 0


def data_main(argv: Optional[Sequence[str]] = None) -> int:
    """``so3krates-data {generate,build,merge,label,info}``: GFN2-xTB reference data (sampled, or labels for the
    frames of an existing trajectory), showcase molecules, merging, data set summaries.

    When run as a program (``argv`` is None) the xTB-heavy subcommands re-execute
    themselves with Debian's OpenBLAS preloaded if it is installed (see
    :func:`so3krates_openmm.data.reference.reexec_with_openblas`).
    """
    from so3krates_openmm.data.reference import SamplingSettings

    defaults = SamplingSettings(temperatures_K=[300.0], frames_per_temperature=1)
    parser = argparse.ArgumentParser(
        prog="so3krates-data",
        description="Reference data for SO3krates without the internet: Langevin MD sampling labelled with "
        "GFN2-xTB (tblite), offline builders of the showcase molecules, and data set summaries.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser(
        "generate",
        help="sample frames by Langevin MD with GFN2-xTB energies and forces (resumable)",
        description="Sample configurations by Langevin MD (ASE) with GFN2-xTB (tblite) as the reference and write "
        "an MD22-layout .npz (kcal/mol, Angstrom) or extended XYZ. Every --checkpoint-every frames the work so far "
        "is saved atomically to OUTPUT_STEM.partial.npz; running the same command again (or --resume -o OUTPUT) "
        "continues the same trajectory without losing or duplicating frames.",
    )
    generate.add_argument("--structure", help="starting structure (PDB or XYZ); not needed with --resume")
    generate.add_argument("-o", "--output", required=True, help="output .npz (MD22 layout) or .xyz/.extxyz")
    generate.add_argument("--temperatures", type=float, nargs="+", metavar="K",
                          help="Langevin temperatures in K, sampled in this order (e.g. 300 500 700)")
    generate.add_argument("--frames-per-temperature", type=int, help="frames recorded at each temperature")
    generate.add_argument("--timestep-fs", type=float, help=f"time step in fs (default {defaults.timestep_fs})")
    generate.add_argument("--stride", type=int, help=f"MD steps between frames (default {defaults.stride})")
    generate.add_argument("--equilibration-steps", type=int,
                          help=f"steps at each temperature before recording (default {defaults.equilibration_steps})")
    generate.add_argument("--friction-per-ps", type=float,
                          help=f"Langevin friction in 1/ps (default {defaults.friction_per_ps})")
    generate.add_argument("--seed", type=int, help=f"random seed (default {defaults.seed})")
    generate.add_argument("--method", choices=("GFN2-xTB", "GFN1-xTB", "IPEA1-xTB"),
                          help=f"tblite method (default {defaults.method})")
    generate.add_argument("--charge", type=int, help="total charge in e (default 0)")
    generate.add_argument("--multiplicity", type=int, help="spin multiplicity (default 1)")
    generate.add_argument("--checkpoint-every", type=int,
                          help=f"frames between partial-file writes (default {defaults.checkpoint_every})")
    generate.add_argument("--float32", action="store_true", default=None,
                          help="store positions and forces as float32 (energies stay float64)")
    generate.add_argument("--scf-guess", choices=("previous", "fresh"),
                          help="xTB SCF start: 'previous' wavefunction (default; fresh at checkpoints, so resumes "
                          "stay exact) or 'fresh' every call (about 2x slower for 148 atoms)")
    generate.add_argument("--energy-unit", help="energy unit written (default kcal/mol for .npz, eV for extended XYZ)")
    generate.add_argument("--resume", action="store_true",
                          help="continue OUTPUT's partial file with its recorded settings (no other options needed)")
    generate.add_argument("--restart", action="store_true", help="discard an existing partial file and start afresh")
    generate.add_argument("--stop-after-frames", type=int,
                          help="stop at the first checkpoint after this many new frames; run again to continue")
    generate.add_argument("--no-progress", action="store_true", help="no progress bar")
    generate.add_argument("--no-openblas", action="store_true", help="do not preload Debian's OpenBLAS")

    build = commands.add_parser(
        "build",
        help="build a showcase molecule offline and relax it with GFN2-xTB",
        description="Build Ac-Ala3-NHMe (ACE-ALA-ALA-ALA-NME PDB with bonds) or the C60@C60H28 buckyball catcher "
        "from SMILES (RDKit) and ASE's C60, relax with GFN2-xTB and write OUTPUT_DIR/structure.pdb and structure.xyz.",
    )
    build.add_argument("molecule", choices=("ac_ala3_nhme", "buckyball_catcher"))
    build.add_argument("--output-dir", required=True, help="directory for structure.pdb and structure.xyz")
    build.add_argument("--seed", type=int, default=7, help="RDKit embedding seed (default 7)")
    build.add_argument("--fmax", type=float, default=0.01, help="relaxation threshold in eV/Angstrom (default 0.01)")
    build.add_argument("--no-relax", action="store_true", help="skip the GFN2-xTB relaxation (RDKit/MMFF geometry)")
    build.add_argument("--no-openblas", action="store_true", help="do not preload Debian's OpenBLAS")

    merge = commands.add_parser(
        "merge",
        help="concatenate data set files (e.g. runs at different temperatures) into one",
        description="Concatenate data sets in the given order into one .npz (MD22 layout, one molecule) or extended "
        "XYZ. Energies are converted to the first file's unit; each part's metadata is kept under 'parts'.",
    )
    merge.add_argument("inputs", nargs="+", help="data set files (.npz or ASE-readable)")
    merge.add_argument("-o", "--output", required=True, help="output .npz or .xyz/.extxyz")
    merge.add_argument("--float32", action="store_true", help="store positions and forces as float32 in .npz")
    merge.add_argument("--name", help="data set name recorded in the .npz")

    label = commands.add_parser(
        "label",
        help="GFN2-xTB energies and forces for the frames of an existing trajectory (resumable)",
        description="Label frames of an existing trajectory (e.g. a model-driven MD run) with GFN2-xTB (tblite) "
        "energies and forces, as generate does, and write an MD22-layout .npz (kcal/mol, Angstrom) or extended XYZ "
        "that `merge` can add to a training set. Input: a DCD with --structure (PDB/XYZ with the same atoms in the "
        "same order), an extended/multi-frame XYZ, or an .npz with R (and z). The frames so far are saved to "
        "OUTPUT_STEM.partial.npz every --checkpoint-every frames and on Ctrl-C; the same command again continues.",
    )
    label.add_argument("trajectory", help="DCD (with --structure), extended XYZ, or .npz with R (M,N,3) and z (N,)")
    label.add_argument("--structure", help="PDB or XYZ giving the elements in the trajectory's atom order "
                       "(required for DCD)")
    label.add_argument("-o", "--output", required=True, help="output .npz (MD22 layout) or .xyz/.extxyz")
    label.add_argument("--stride", type=int, default=1, help="label every N-th frame (default 1)")
    skip = label.add_mutually_exclusive_group()
    skip.add_argument("--skip", type=int, default=0, help="drop the first N frames (default 0)")
    skip.add_argument("--skip-ps", type=float, help="drop the first PS picoseconds (DCD input: frame times known)")
    label.add_argument("--max-frames", type=int, help="label at most N frames (after --skip and --stride)")
    label.add_argument("--method", choices=("GFN2-xTB", "GFN1-xTB", "IPEA1-xTB"), default="GFN2-xTB",
                       help="tblite method (default GFN2-xTB)")
    label.add_argument("--charge", type=int, default=0, help="total charge in e (default 0)")
    label.add_argument("--multiplicity", type=int, default=1, help="spin multiplicity (default 1)")
    label.add_argument("--energy-unit", help="energy unit written (default kcal/mol for .npz, eV for extended XYZ)")
    label.add_argument("--checkpoint-every", type=int, default=10, help="frames between partial-file writes (default 10)")
    label.add_argument("--float32", action="store_true", help="store positions and forces as float32")
    label.add_argument("--restart", action="store_true", help="discard an existing partial file and start afresh")
    label.add_argument("--stop-after-frames", type=int,
                       help="stop at the first partial-file write after this many new frames; run again to continue")
    label.add_argument("--no-progress", action="store_true", help="no progress bar")
    label.add_argument("--no-openblas", action="store_true", help="do not preload Debian's OpenBLAS")

    info = commands.add_parser("info", help="summarise a data set file (.npz, extended XYZ, or a partial file)")
    info.add_argument("path")
    info.add_argument("--energy-unit", help="unit of the file's energies if it does not record one")

    args = parser.parse_args(argv)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731

    if args.command in ("generate", "build", "label") and argv is None and not args.no_openblas:
        from so3krates_openmm.data.reference import reexec_with_openblas

        reexec_with_openblas(log)

    from so3krates_openmm.data.dataset import DataError

    if args.command == "info":
        from so3krates_openmm.data.formats import load_dataset

        try:
            dataset = load_dataset(args.path, **({"energy_unit": args.energy_unit} if args.energy_unit else {}))
        except (DataError, FileNotFoundError) as error:
            _fail(str(error))
        print(dataset.summary())
        return 0

    if args.command == "merge":
        from pathlib import Path

        from so3krates_openmm.data.formats import merge_datasets

        try:
            merged = merge_datasets([Path(p) for p in args.inputs], args.output, float32=args.float32, name=args.name)
        except (DataError, FileNotFoundError) as error:
            _fail(str(error))
        print(f"wrote {args.output}: {len(merged)} frames from {len(args.inputs)} files")
        return 0

    if args.command == "label":
        from so3krates_openmm.data.labelling import (
            LabelSettings,
            label_frames,
            read_frames,
        )

        try:
            settings = LabelSettings(
                method=args.method, charge=args.charge, multiplicity=args.multiplicity, stride=args.stride,
                skip=args.skip, skip_ps=args.skip_ps, max_frames=args.max_frames,
                checkpoint_every=args.checkpoint_every, float32=args.float32,
            )
            frames = read_frames(args.trajectory, args.structure)
            inputs = {"trajectory": args.trajectory, **({"structure": args.structure} if args.structure else {})}
            result = label_frames(frames, args.output, settings, energy_unit=args.energy_unit, restart=args.restart,
                                  stop_after_frames=args.stop_after_frames, progress=not args.no_progress, log=log,
                                  inputs=inputs)
        except (DataError, ValueError, FileNotFoundError) as error:
            _fail(str(error))
        return 0 if result is not None else 3  # 3: stopped early; the partial file holds the frames so far

    if args.command == "build":
        from so3krates_openmm.data.builders import build_and_write

        try:
            build_and_write(args.molecule, args.output_dir, seed=args.seed, relax=not args.no_relax,
                            fmax=args.fmax, log=log)
        except (RuntimeError, ValueError, OSError) as error:
            _fail(str(error))
        return 0

    from dataclasses import asdict

    from so3krates_openmm.data.reference import (
        generate_reference_data,
        partial_path_for,
        settings_from_partial,
    )

    options = {
        "temperatures_K": args.temperatures,
        "frames_per_temperature": args.frames_per_temperature,
        "timestep_fs": args.timestep_fs,
        "stride": args.stride,
        "equilibration_steps": args.equilibration_steps,
        "friction_per_ps": args.friction_per_ps,
        "seed": args.seed,
        "method": args.method,
        "charge": args.charge,
        "multiplicity": args.multiplicity,
        "checkpoint_every": args.checkpoint_every,
        "float32": args.float32,
        "scf_guess": args.scf_guess,
    }
    given = {key: value for key, value in options.items() if value is not None}
    try:
        if args.resume:
            partial = partial_path_for(args.output)
            if not partial.exists():
                _fail(f"--resume: {partial} does not exist (nothing to resume)")
            settings, structure = settings_from_partial(partial)
            recorded = asdict(settings)
            conflicts = [f"{k}={v!r} (partial file: {recorded[k]!r})" for k, v in given.items() if recorded[k] != v
                         and not (k == "temperatures_K" and [float(t) for t in v] == recorded[k])]
            if conflicts:
                _fail(f"--resume: options differ from the partial run's settings: {', '.join(conflicts)}")
            if args.structure:
                from so3krates_openmm.data.reference import structure_fingerprint
                from so3krates_openmm.data.structures import read_structure

                if structure_fingerprint(read_structure(args.structure)) != structure_fingerprint(structure):
                    _fail(f"--resume: {args.structure} is not the starting structure recorded in {partial}")
        else:
            missing = [flag for flag, key in (("--structure", "structure"), ("--temperatures", "temperatures"),
                                              ("--frames-per-temperature", "frames_per_temperature"))
                       if getattr(args, key) is None]
            if missing:
                _fail(f"generate needs {', '.join(missing)} (or --resume to continue a partial run)")
            from so3krates_openmm.data.structures import read_structure

            structure = read_structure(args.structure)
            settings = SamplingSettings(**given)
        result = generate_reference_data(
            structure,
            args.output,
            settings,
            energy_unit=args.energy_unit,
            resume=True if args.resume else None,
            restart=args.restart,
            stop_after_frames=args.stop_after_frames,
            progress=not args.no_progress,
            log=log,
        )
    except (DataError, ValueError, FileNotFoundError) as error:
        _fail(str(error))
    if result is None:
        return 3  # stopped before the end; the partial file holds the work so far
    return 0
