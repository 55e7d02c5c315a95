#!/usr/bin/env python
"""OpenMM step time of MACE (mace-torch) through openmm-ml's ``MLPotential('mace')``.

Run with the MACE venv's python (``bash bench/peers/setup_venvs.sh mace``)::

    bench/peers/.venvs/mace/bin/python bench/peers/mace_step.py STRUCTURE.pdb [...] --threads 2

Two models, built with random weights from mace-torch's own constructor
(``ScaleShiftMACE`` with the settings of ``mace_run_train``'s defaults: 8 Bessel
functions, polynomial cutoff p=5, spherical harmonics to l=3, correlation 3,
radial MLP [64, 64, 64], 2 interactions, r_c = 5 Å):

- ``L0``: hidden irreps ``64x0e`` (64 channels, L=0),
- ``L1``: hidden irreps ``128x0e+128x1o`` (128 channels, L=1).

Each is saved with ``torch.save`` and loaded by openmm-ml 1.8
(``MLPotential('mace', modelPath=...)``, ``precision='single'``), which adds it
as an ``openmm.PythonForce``. The elements are those of each structure. The
bare time is one call of the model's forward with forces on a ready input dict
(neighbour list built once, outside the timing). Prints one JSON line.
"""

from __future__ import annotations

import os

# mace-torch unpickles whole modules; torch >= 2.6 refuses that by default.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import functools
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from peer_common import (
    Molecule,
    configure_torch,
    count_pairs,
    emit,
    log,
    parameter_count,
    parse_args,
    read_molecule,
    step_record,
)

CUTOFF_ANGSTROM = 5.0
#: model name -> (hidden irreps, description)
MODELS = {
    "L0": ("64x0e", "MACE 64 ch, L=0, 2 layers"),
    "L1": ("128x0e+128x1o", "MACE 128x0e+128x1o (L=1), 2 layers"),
}


def build_mace(hidden_irreps: str, molecule: Molecule) -> Any:
    """A random-weight ``ScaleShiftMACE`` in float32 for the molecule's elements."""
    import torch
    from e3nn import o3
    from mace import modules

    elements = molecule.elements
    torch.manual_seed(0)
    model = modules.ScaleShiftMACE(
        r_max=CUTOFF_ANGSTROM,
        num_bessel=8,
        num_polynomial_cutoff=5,
        max_ell=3,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
        num_interactions=2,
        num_elements=len(elements),
        hidden_irreps=o3.Irreps(hidden_irreps),
        MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.zeros(len(elements)),
        avg_num_neighbors=max(1.0, count_pairs(molecule, CUTOFF_ANGSTROM) / molecule.n_atoms),
        atomic_numbers=elements,
        correlation=3,
        gate=torch.nn.functional.silu,
        radial_MLP=[64, 64, 64],
        radial_type="bessel",
        atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
    )
    return model.float().eval()


def bare_input(model: Any, molecule: Molecule) -> dict[str, Any]:
    """The input dict openmm-ml's MACE force builds each step, for a non-periodic molecule."""
    import torch
    from mace.data.neighborhood import get_neighborhood
    from mace.tools import atomic_numbers_to_indices, to_one_hot, utils

    table = utils.AtomicNumberTable([int(z) for z in model.atomic_numbers])
    indices = torch.tensor(atomic_numbers_to_indices(molecule.atomic_numbers, z_table=table), dtype=torch.long)
    node_attrs = to_one_hot(indices.unsqueeze(-1), num_classes=len(table)).float()
    cell = np.identity(3)
    edge_index, shifts, _, _ = get_neighborhood(molecule.positions_angstrom, CUTOFF_ANGSTROM, [False] * 3, cell)
    cell_tensor = torch.tensor(cell, dtype=torch.float32)
    n_atoms = molecule.n_atoms
    return {
        "ptr": torch.tensor([0, n_atoms]),
        "node_attrs": node_attrs,
        "batch": torch.zeros(n_atoms, dtype=torch.long),
        "pbc": torch.zeros(3, dtype=torch.bool),
        "positions": torch.tensor(molecule.positions_angstrom, dtype=torch.float32),
        "edge_index": torch.tensor(edge_index, dtype=torch.long),
        "shifts": torch.tensor(shifts, dtype=torch.float32),
        "cell": cell_tensor,
        "rcell": 2 * torch.pi * torch.linalg.inv(cell_tensor.mT),
        "volume": torch.linalg.det(cell_tensor),
        "total_charge": torch.zeros(1),
        "total_spin": torch.ones(1),
        "external_field": torch.zeros((1, 3)),
        "fermi_level": torch.zeros(1),
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], list(MODELS))
    configure_torch(args.threads)
    import torch
    from openmmml import MLPotential

    molecules = [read_molecule(path) for path in args.structures]
    results = []
    with tempfile.TemporaryDirectory(prefix="mace_step_") as workdir:
        for molecule in molecules:
            for key in args.models:
                hidden_irreps, description = MODELS[key]
                log(f"{description} on {molecule.name} ({molecule.n_atoms} atoms)")
                model = build_mace(hidden_irreps, molecule)
                model_path = Path(workdir) / f"mace_{key}_{molecule.name}.model"
                torch.save(model, model_path)
                system = MLPotential("mace", modelPath=str(model_path)).createSystem(
                    molecule.topology, precision="single"
                )
                bare = None if args.no_bare else functools.partial(
                    model, bare_input(model, molecule), compute_force=True
                )
                results.append(step_record(
                    f"mace-{key}", description, "openmm-ml 1.8 MLPotential('mace') -> openmm.PythonForce",
                    molecule, CUTOFF_ANGSTROM, system, args.threads, args.repeats, args.warmup,
                    bare=bare, parameters=parameter_count(model),
                ))
    emit("mace", args, ["mace-torch", "e3nn"], results)


if __name__ == "__main__":
    main()
