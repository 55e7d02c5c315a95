"""``so3krates-data {generate,build,merge,label,info}``: GFN2-xTB reference data (sampled, or labels for the
frames of an existing trajectory), showcase molecules, merging, data set summaries (:mod:`so3krates_openmm.data`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jsonargparse import ArgumentParser

from so3krates_openmm.cli.common import NO_PROCESS_TUNING, NO_PROCESS_TUNING_HELP, error, tune_process

PROG = "so3krates-data"


def _add_process_flags(parser: ArgumentParser) -> None:
    """The process-setting flags of the xTB subcommands."""
    parser.add_argument("--no-openblas", action="store_true", help="do not preload Debian's OpenBLAS")
    parser.add_argument(NO_PROCESS_TUNING, action="store_true", help=NO_PROCESS_TUNING_HELP + "; no OpenBLAS")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; exit code 0 done, 2 bad input, 3 stopped early (the partial file holds the frames).

    When run as a program (``argv`` is None) the xTB-heavy subcommands re-execute
    themselves with Debian's OpenBLAS preloaded if it is installed (``configure_process(openblas=True)``),
    unless given ``--no-openblas`` or ``--no-process-tuning``.
    """
    from so3krates_openmm.data.reference import SamplingSettings

    defaults = SamplingSettings(temperatures_K=[300.0], frames_per_temperature=1)
    parser = ArgumentParser(
        prog=PROG,
        description="Reference data for SO3krates without the internet: Langevin MD sampling labelled with "
        "GFN2-xTB (tblite), offline builders of the showcase molecules, and data set summaries.",
    )

    generate = ArgumentParser(
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
    _add_process_flags(generate)

    build = ArgumentParser(
        description="Build Ac-Ala3-NHMe (ACE-ALA-ALA-ALA-NME PDB with bonds) or the C60@C60H28 buckyball catcher "
        "from SMILES (RDKit) and ASE's C60, relax with GFN2-xTB and write OUTPUT_DIR/structure.pdb and structure.xyz.",
    )
    build.add_argument("molecule", choices=("ac_ala3_nhme", "buckyball_catcher", "dha"),
                       help="showcase molecule, or dha (docosahexaenoic acid, the stability study's flexible molecule)")
    build.add_argument("--output-dir", required=True, help="directory for structure.pdb and structure.xyz")
    build.add_argument("--seed", type=int, default=7, help="RDKit embedding seed (default 7)")
    build.add_argument("--fmax", type=float, default=0.01, help="relaxation threshold in eV/Angstrom (default 0.01)")
    build.add_argument("--no-relax", action="store_true", help="skip the GFN2-xTB relaxation (RDKit/MMFF geometry)")
    _add_process_flags(build)

    merge = ArgumentParser(
        description="Concatenate data sets in the given order into one .npz (MD22 layout, one molecule) or extended "
        "XYZ. Energies are converted to the first file's unit; each part's metadata is kept under 'parts'.",
    )
    merge.add_argument("inputs", nargs="+", help="data set files (.npz or ASE-readable)")
    merge.add_argument("-o", "--output", required=True, help="output .npz or .xyz/.extxyz")
    merge.add_argument("--float32", action="store_true", help="store positions and forces as float32 in .npz")
    merge.add_argument("--name", help="data set name recorded in the .npz")

    label = ArgumentParser(
        description="Label frames of an existing trajectory (e.g. a model-driven MD run) with GFN2-xTB (tblite) "
        "energies and forces, as generate does, and write an MD22-layout .npz (kcal/mol, Angstrom) or extended XYZ "
        "that `merge` can add to a training set. Input: a DCD with --structure (PDB/XYZ with the same atoms in the "
        "same order), an extended/multi-frame XYZ, or an .npz with R (and z). The frames so far are saved to "
        "OUTPUT_STEM.partial.npz every --checkpoint-every frames and on Ctrl-C; the same command again continues.",
    )
    label.add_argument("trajectory", help="DCD (with --structure), extended XYZ, (multi-model) PDB, or .npz with "
                                          "R (M,N,3) and z (N,)")
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
    label.add_argument("--checkpoint-every", type=int, default=10,
                       help="frames between partial-file writes (default 10)")
    label.add_argument("--float32", action="store_true", help="store positions and forces as float32")
    label.add_argument("--restart", action="store_true", help="discard an existing partial file and start afresh")
    label.add_argument("--stop-after-frames", type=int,
                       help="stop at the first partial-file write after this many new frames; run again to continue")
    label.add_argument("--no-progress", action="store_true", help="no progress bar")
    label.add_argument("--workers", type=int, default=1,
                       help="label the frames as Dask tasks on a local cluster of N single-threaded processes "
                            "(journal <output stem>.labels.jsonl; default 1: in this process)")
    label.add_argument("--scheduler", help="address of a Dask scheduler (e.g. tcp://10.0.0.5:8786) whose workers "
                                           "label the frames instead of a local cluster")
    _add_process_flags(label)

    info = ArgumentParser(
        description="Summarise a data set file (.npz, extended XYZ, or a partial file).")
    info.add_argument("path")
    info.add_argument("--energy-unit", help="unit of the file's energies if it does not record one")

    commands = parser.add_subcommands(dest="command")
    commands.add_subcommand("generate", generate,
                            help="sample frames by Langevin MD with GFN2-xTB energies and forces (resumable)")
    commands.add_subcommand("build", build,
                            help="build a showcase molecule offline and relax it with GFN2-xTB")
    commands.add_subcommand("merge", merge,
                            help="concatenate data set files (e.g. runs at different temperatures) into one")
    commands.add_subcommand("label", label,
                            help="GFN2-xTB energies and forces for the frames of an existing trajectory (resumable)")
    commands.add_subcommand("info", info,
                            help="summarise a data set file (.npz, extended XYZ, or a partial file)")

    arguments = parser.parse_args(argv)
    command = arguments.command
    args = arguments[command]
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731

    if command in ("generate", "build", "label"):
        tune_process(argv, openblas=not args.no_openblas, log=log)

    from so3krates_openmm.data.dataset import DataError

    if command == "info":
        from so3krates_openmm.data.formats import load_dataset

        try:
            dataset = load_dataset(args.path, **({"energy_unit": args.energy_unit} if args.energy_unit else {}))
        except (DataError, FileNotFoundError) as problem:
            return error(PROG, problem)
        print(dataset.summary())
        return 0

    if command == "merge":
        from pathlib import Path

        from so3krates_openmm.data.formats import merge_datasets

        try:
            merged = merge_datasets([Path(p) for p in args.inputs], args.output, float32=args.float32, name=args.name)
        except (DataError, FileNotFoundError) as problem:
            return error(PROG, problem)
        print(f"wrote {args.output}: {len(merged)} frames from {len(args.inputs)} files")
        return 0

    if command == "label":
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
                                  inputs=inputs, workers=args.workers, scheduler=args.scheduler)
        except (DataError, ValueError, FileNotFoundError) as problem:
            return error(PROG, problem)
        return 0 if result is not None else 3  # 3: stopped early; the partial file holds the frames so far

    if command == "build":
        from so3krates_openmm.data.builders import build_and_write

        try:
            build_and_write(args.molecule, args.output_dir, seed=args.seed, relax=not args.no_relax,
                            fmax=args.fmax, log=log)
        except (RuntimeError, ValueError, OSError) as problem:
            return error(PROG, problem)
        return 0

    from so3krates_openmm.data.reference import generate_reference_data, resumed_settings
    from so3krates_openmm.data.structures import read_structure

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
            settings, structure = resumed_settings(args.output, given, args.structure)
        else:
            missing = [flag for flag, key in (("--structure", "structure"), ("--temperatures", "temperatures"),
                                              ("--frames-per-temperature", "frames_per_temperature"))
                       if getattr(args, key) is None]
            if missing:
                return error(PROG, f"generate needs {', '.join(missing)} (or --resume to continue a partial run)")
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
    except (DataError, ValueError, FileNotFoundError) as problem:
        return error(PROG, problem)
    if result is None:
        return 3  # stopped before the end; the partial file holds the work so far
    return 0


if __name__ == "__main__":
    sys.exit(main())
