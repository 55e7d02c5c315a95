"""What the command-line programs share: process tuning before heavy imports, one-line errors, exit codes,
and the frame of the MD protocol programs.

Kept free of PyTorch and OpenMM imports: :func:`tune_process` must run before either loads.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_UNSTABLE, EXIT_BAD_INPUT = 0, 1, 2
NO_PROCESS_TUNING = "--no-process-tuning"
NO_PROCESS_TUNING_HELP = (
    "leave this process's settings alone: by default OMP_WAIT_POLICY=PASSIVE (unless set) and glibc keeps freed "
    "memory for reuse (so3krates_openmm.runtime.configure_process)"
)


def tune_process(argv: Sequence[str] | None, *, openblas: bool = False,
                 log: Callable[[str], None] | None = None) -> None:
    """Apply :func:`~so3krates_openmm.runtime.configure_process` unless ``--no-process-tuning`` is in ``argv``
    (``sys.argv[1:]`` when None).

    Read ahead of the full parse: OpenMP takes ``OMP_WAIT_POLICY`` when PyTorch
    loads, and parsing imports the option classes. ``openblas`` (re-executing
    the process with OpenBLAS preloaded) is only honoured for a program run from
    the shell (``argv is None``).
    """
    arguments = sys.argv[1:] if argv is None else list(argv)
    if NO_PROCESS_TUNING in arguments:
        return
    from so3krates_openmm.runtime import configure_process

    configure_process(openblas=openblas and argv is None, log=log)


def error(prog: str, message: Any) -> int:
    """Print ``prog: error: message`` (one line, no traceback) and return the bad-input exit code."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def protocol_parser(cls: type):
    """The parser of an MD protocol: ``--protocol FILE`` plus one flag per field of its options class ``cls``."""
    from so3krates_openmm.options import add_switch, options_parser

    parser = options_parser(
        cls, prog=cls.name, description=cls.__doc__, config_flag="--protocol", name_key="protocol",
        config_help="YAML protocol file (keys as in --help with underscores, e.g. 'timestep_fs: 0.5'); flags "
        "override its values; relative input paths in it are relative to the file",
    )
    add_switch(parser, NO_PROCESS_TUNING, NO_PROCESS_TUNING_HELP)
    return parser


def parse_protocol(cls: type, argv: Sequence[str] | None) -> tuple[Any, list[str]]:
    """The options (an instance of ``cls``) of a protocol command line and the protocol files read.

    A run length given as a flag (``--steps`` or ``--ns``) replaces the other one from a file. Raises
    :class:`~so3krates_openmm.options.OptionsError`.
    """
    from so3krates_openmm.options import flags_given, parse_options

    parser = protocol_parser(cls)
    options, namespace, _ = parse_options(parser, cls, argv)
    flags = flags_given(parser, argv)
    if "ns" in flags and "steps" not in flags:
        options.steps = None
    elif "steps" in flags and "ns" not in flags:
        options.ns = None
    return options, [str(path) for path in namespace.config_files or ()]


def run_protocol(options_class: str, recipe_name: str, argv: Sequence[str] | None) -> int:
    """The whole program of one MD protocol: parse ``--protocol FILE`` and flags into the options class
    :mod:`so3krates_openmm.md.protocols`.``options_class``, run the recipe
    :mod:`so3krates_openmm.md.recipes`.``recipe_name``, write ``protocol_resolved.yaml``, map the outcome to
    an exit code (0 done, 1 unstable, 2 bad input). Names, not objects: the md package loads PyTorch and
    OpenMM, which must come after :func:`tune_process`."""
    tune_process(argv)
    import logging

    from so3krates_openmm.md import protocols, recipes
    from so3krates_openmm.md.protocols import ProtocolError, write_resolved_protocol
    from so3krates_openmm.md.reporters import OutputReplacedError
    from so3krates_openmm.options import OptionsError

    cls = getattr(protocols, options_class)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        options, files = parse_protocol(cls, argv)
        result = getattr(recipes, recipe_name)(options)
    except recipes.RunUnstable as unstable:
        print(f"{cls.name}: {unstable}", file=sys.stderr)
        return EXIT_UNSTABLE
    except (OptionsError, ProtocolError, FileNotFoundError, FileExistsError, ValueError,
            OutputReplacedError) as bad:
        return error(cls.name, bad)
    output = Path(options.output)
    if output.is_dir():
        write_resolved_protocol(options, output / "protocol_resolved.yaml", seed=result.seed,
                                source=f"defaults < {', '.join(files) or 'no protocol file'} < flags")
    return EXIT_OK if result.stable else EXIT_UNSTABLE


def add_minima_search_arguments(parser: argparse.ArgumentParser, *, structure: Path, model: Path, work: Path,
                                output: Path) -> None:
    """The options that the minima searches (``bench/minima_large/``) share, with their defaults: the structure
    and model, what counts as a distinct minimum, the model's minimiser, the random backbone dihedrals, GFN2-xTB's
    optimisation, the Dask tasks and where journals (``work``) and results (``output``) go."""
    parser.add_argument("--structure", type=Path, default=structure, help="starting structure (PDB)")
    parser.add_argument("--model", type=Path, default=model,
                        help="exported model (.pt; e.g. so3krates-export --kernels fused) or OpenMM System (.xml)")
    parser.add_argument("--rmsd-threshold", type=float, default=0.1, help="heavy-atom RMSD of distinct minima, Å")
    parser.add_argument("--minimize-tolerance", type=float, default=1.0, help="minimiser RMS force, kJ/mol/nm")
    parser.add_argument("--max-iterations", type=int, default=0, help="minimiser iterations (0: until converged)")
    parser.add_argument("--torsion-seed", type=int, default=0, help="seed of the random backbone dihedrals")
    parser.add_argument("--xtb-fmax", type=float, default=0.01, help="xTB optimisation: largest force, eV/Å")
    parser.add_argument("--xtb-max-steps", type=int, default=1000, help="xTB optimisation: at most this many steps")
    parser.add_argument("--charge", type=int, default=0, help="total charge for xTB, e")
    parser.add_argument("--platform", default="CPU", help="OpenMM platform of the MD and the minimisations")
    parser.add_argument("--workers", type=int, default=2, help="processes of the local Dask cluster")
    parser.add_argument("--scheduler", help="Dask scheduler address (its workers must see the files at the same "
                                            "paths) instead of a local cluster")
    parser.add_argument("--work", type=Path, default=work, help="runs, journals and all minima (not committed)")
    parser.add_argument("--output", type=Path, default=output, help="summary and figures (committed)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs)")


def run_minima_search(run: Callable[[argparse.Namespace, Sequence[str] | None], int], args: argparse.Namespace,
                      argv: Sequence[str] | None) -> int:
    """``run(args, argv)`` holding ``args.work``/run.lock, so that two minima searches never share their journals;
    a journal of other settings or a held lock ends the program with a one-line message."""
    from so3krates_openmm.files import LockedError, exclusive_lock
    from so3krates_openmm.tasks import JournalMismatch

    try:
        with exclusive_lock(Path(args.work).resolve() / "run.lock"):
            return run(args, argv)
    except JournalMismatch as error:
        raise SystemExit(str(error)) from None
    except LockedError:
        raise SystemExit(f"another minima search (bench/minima_large/run.py or reference_search.py) works in "
                         f"{args.work}; wait for it or stop it first") from None
