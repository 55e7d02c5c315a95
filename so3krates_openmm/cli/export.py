"""``so3krates-export CHECKPOINT --structure FILE -o model.pt``: TorchScript model for openmm-torch
(:func:`so3krates_openmm.export.export_checkpoint`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jsonargparse import ArgumentParser

from so3krates_openmm.cli.common import NO_PROCESS_TUNING, NO_PROCESS_TUNING_HELP, error, tune_process

PROG = "so3krates-export"


def main(argv: Sequence[str] | None = None) -> int:
    """``so3krates-export CHECKPOINT --structure FILE -o model.pt``."""
    parser = ArgumentParser(
        prog=PROG,
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
    parser.add_argument("--outputs-forces", action="store_true",
                        help="return (energy, forces): TorchForce.setOutputsForces(True)")
    parser.add_argument(
        "--static-pairs", action="store_true", help="fixed all-pairs edge list, needed for CUDA graphs (O(N^2) work)"
    )
    parser.add_argument(
        "--kernels", choices=("reference", "analytic", "fused"), default="reference",
        help="reference: the readable model, forces by autograd; analytic: hand-derived forces in pure TorchScript; "
        "fused: analytic with C++/OpenMP pair and filter kernels (load them with `import so3krates_openmm.model` "
        "before openmm-torch reads the .pt); the fast kinds return forces. Recorded in the .pt's metadata")
    parser.add_argument(NO_PROCESS_TUNING, action="store_true", help=NO_PROCESS_TUNING_HELP)
    args = parser.parse_args(argv)
    tune_process(argv)

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
            kernels=args.kernels,
            static_pairs=args.static_pairs,
        )
    except (OSError, ValueError, RuntimeError) as problem:
        return error(PROG, problem)
    metadata = read_export_metadata(path)
    print(
        f"wrote {path}: {len(metadata['atomic_numbers'])} modelled atoms of {metadata['n_particles']} particles, "
        f"{metadata['dtype']}, kernels {metadata.get('kernels', 'reference')}, cutoff {metadata['cutoff_nm']} nm, "
        f"periodic={metadata['periodic']}, "
        f"from checkpoint {metadata['checkpoint']} (sha256 {metadata['checkpoint_sha256'][:12]}); self-check passed"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
