#!/usr/bin/env python
"""OpenMM step time of TorchMD-Net TensorNet through openmm-ml's ``MLPotential('torchmdnet')``.

Run with the TensorNet venv's python (``bash bench/peers/setup_venvs.sh tensornet``)::

    bench/peers/.venvs/tensornet/bin/python bench/peers/tensornet_step.py STRUCTURE.pdb [...] --threads 2

The model is torchmd-net's own ``create_model`` output with random weights:
TensorNet, 2 layers, 128 channels, 32 exponential-normal radial functions,
r_c = 5 Å, O(3), float32, scalar output summed over atoms (eV and Å assumed,
openmm-ml's defaults). It is written as a checkpoint of torchmd-net's layout
(``hyper_parameters`` and a ``model.``-prefixed ``state_dict``) and loaded by
openmm-ml 1.8, which sets ``static_shapes``, caps the neighbours at
min(64, N), and runs it in an ``openmm.PythonForce`` through
``torch.compile`` (inductor; the first steps compile, the warm-up absorbs
them). The bare time is the eager model's energy and forces (autograd), as
loaded by openmm-ml but not compiled. Prints one JSON line.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peer_common import (
    Molecule,
    configure_torch,
    emit,
    log,
    parameter_count,
    parse_args,
    read_molecule,
    step_record,
)

CUTOFF_ANGSTROM = 5.0
MODELS = {"2x128": "TensorNet 2 layers, 128 channels"}


def hyperparameters(molecule: Molecule) -> dict[str, Any]:
    """torchmd-net training arguments of the benchmarked TensorNet."""
    return {
        "model": "tensornet",
        "precision": 32,
        "embedding_dimension": 128,
        "num_layers": 2,
        "num_rbf": 32,
        "rbf_type": "expnorm",
        "trainable_rbf": False,
        "activation": "silu",
        "cutoff_lower": 0.0,
        "cutoff_upper": CUTOFF_ANGSTROM,
        "max_z": 128,
        "max_num_neighbors": 64,
        "equivariance_invariance_group": "O(3)",
        "static_shapes": False,
        "derivative": False,
        "atom_filter": -1,
        "prior_model": None,
        "output_model": "Scalar",
        "reduce_op": "add",
        "remove_ref_energy": False,
        "coulomb_cutoff": None,
        "charge": False,
        "spin": False,
    }


def write_checkpoint(molecule: Molecule, path: Path) -> int:
    """Build a random-weight TensorNet, save it as a torchmd-net checkpoint, return its parameter count."""
    import torch
    from torchmdnet.models.model import create_model

    torch.manual_seed(0)
    args = hyperparameters(molecule)
    model = create_model(dict(args))
    state = {f"model.{name}": value for name, value in model.state_dict().items()}
    torch.save({"hyper_parameters": args, "state_dict": state}, path)
    return parameter_count(model)


def bare_call(checkpoint: Path, molecule: Molecule) -> Callable[[], None]:
    """Energy and forces (autograd) of the checkpoint's eager model, loaded as openmm-ml loads it."""
    import torch
    from torchmdnet.models.model import load_model

    model = load_model(
        str(checkpoint),
        derivative=False,
        max_num_neighbors=min(64, molecule.n_atoms),
        static_shapes=True,
    ).eval()
    numbers = torch.tensor(molecule.atomic_numbers, dtype=torch.long)
    batch = torch.zeros_like(numbers)
    positions = torch.tensor(molecule.positions_angstrom, dtype=torch.float32)

    def energy_forces() -> None:
        p = positions.clone().requires_grad_(True)
        energy = model(z=numbers, pos=p, batch=batch)[0]
        torch.autograd.grad(energy.sum(), p)

    return energy_forces


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], list(MODELS))
    configure_torch(args.threads)
    from openmmml import MLPotential

    results = []
    with tempfile.TemporaryDirectory(prefix="tensornet_step_") as workdir:
        for path in args.structures:
            molecule = read_molecule(path)
            for key in args.models:
                log(f"{MODELS[key]} on {molecule.name} ({molecule.n_atoms} atoms)")
                checkpoint = Path(workdir) / f"tensornet_{molecule.name}.ckpt"
                parameters = write_checkpoint(molecule, checkpoint)
                system = MLPotential("torchmdnet", modelPath=str(checkpoint)).createSystem(molecule.topology)
                results.append(step_record(
                    f"tensornet-{key}", MODELS[key],
                    "openmm-ml 1.8 MLPotential('torchmdnet') -> openmm.PythonForce (torch.compile inductor)",
                    molecule, CUTOFF_ANGSTROM, system, args.threads, args.repeats, args.warmup,
                    bare=None if args.no_bare else bare_call(checkpoint, molecule), parameters=parameters,
                    bare_note="eager (openmm-ml's step runs the torch.compile'd model)",
                ))
    emit("tensornet", args, ["torchmd-net", "warp-lang"], results)


if __name__ == "__main__":
    main()
