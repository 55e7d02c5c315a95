#!/usr/bin/env python
"""OpenMM step time of NequIP (nequip 0.19) through openmm-ml's ``MLPotential('nequip')``.

Run with the NequIP venv's python (``bash bench/peers/setup_venvs.sh nequip``)::

    bench/peers/.venvs/nequip/bin/python bench/peers/nequip_step.py STRUCTURE.pdb [...] --threads 2

The model is nequip's own ``NequIPGNNModel`` with random weights: l_max 1,
32 features, 4 layers, r_c = 5 Å, model dtype float32 (nequip keeps positions
in float64, its convention), the builder's other defaults (parity on, 8 Bessel
functions, radial MLP of depth 1 and width 128). openmm-ml 1.8 adds it as an
``openmm.PythonForce``; it reads the model with nequip's ``load_saved_model``
from a training checkpoint or a package, which a random model does not have,
so that one call is pointed at the model built here and everything after it
(atom types, neighbour list, the per-step callback) is openmm-ml's own code.
The bare time is one model call (energy and forces) on a ready input dict
(neighbour list built once, outside the timing). Prints one JSON line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

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
MODELS = {"lmax1": "NequIP l_max 1, 32 features, 4 layers"}
#: the random model is taken to predict eV from Å, as nequip's own OpenMM examples assume
LENGTH_SCALE_NM_PER_UNIT = 0.1
ENERGY_SCALE_KJ_MOL_PER_UNIT = 96.4853  # eV -> kJ/mol, the factor openmm-ml uses for MACE


def build_nequip(molecule: Molecule) -> Any:
    """A random-weight NequIP GraphModel for the molecule's elements."""
    from nequip.model import NequIPGNNModel
    from nequip.utils.global_state import set_global_state
    from openmm.app import Element

    set_global_state()
    type_names = [Element.getByAtomicNumber(z).symbol for z in molecule.elements]
    model = NequIPGNNModel(
        seed=0,
        model_dtype="float32",
        type_names=type_names,
        r_max=CUTOFF_ANGSTROM,
        num_layers=4,
        l_max=1,
        num_features=32,
        avg_num_neighbors=max(1.0, count_pairs(molecule, CUTOFF_ANGSTROM) / molecule.n_atoms),
        per_type_energy_scales=1.0,
        per_type_energy_shifts=0.0,
    )
    return model.eval()


@contextlib.contextmanager
def serve_model(model: Any) -> Iterator[None]:
    """Make nequip's ``load_saved_model`` return ``model`` (openmm-ml imports it at call time)."""
    from nequip.model.saved_models import load_utils

    original = load_utils.load_saved_model
    load_utils.load_saved_model = lambda *args, **kwargs: model
    try:
        yield
    finally:
        load_utils.load_saved_model = original


def bare_call(model: Any, molecule: Molecule) -> Callable[[], object]:
    """The model's call on the input dict openmm-ml's NequIP force builds each step (non-periodic).

    The dict, neighbour list included, is built here once; each call gets a fresh shallow copy.
    """
    import torch
    from nequip.data._nl import compute_neighborlist_
    from openmm.app import Element

    type_index = {name: i for i, name in enumerate(model.metadata["type_names"].split())}
    types = [type_index[Element.getByAtomicNumber(z).symbol] for z in molecule.atomic_numbers]
    data = {
        "pos": torch.tensor(molecule.positions_angstrom, dtype=torch.float64),
        "atom_types": torch.tensor(types, dtype=torch.long),
        "pbc": torch.zeros(3, dtype=torch.bool),
    }
    compute_neighborlist_(data, CUTOFF_ANGSTROM)
    return lambda: model(dict(data))


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], list(MODELS))
    configure_torch(args.threads)
    from openmmml import MLPotential

    results = []
    for path in args.structures:
        molecule = read_molecule(path)
        for key in args.models:
            log(f"{MODELS[key]} on {molecule.name} ({molecule.n_atoms} atoms)")
            model = build_nequip(molecule)
            potential = MLPotential(
                "nequip",
                modelPath="<random-weight model built in nequip_step.py>",
                lengthScale=LENGTH_SCALE_NM_PER_UNIT,
                energyScale=ENERGY_SCALE_KJ_MOL_PER_UNIT,
            )
            with serve_model(model):
                system = potential.createSystem(molecule.topology, precision="single")
            results.append(step_record(
                f"nequip-{key}", MODELS[key], "openmm-ml 1.8 MLPotential('nequip') -> openmm.PythonForce",
                molecule, CUTOFF_ANGSTROM, system, args.threads, args.repeats, args.warmup,
                bare=None if args.no_bare else bare_call(model, molecule), parameters=parameter_count(model),
            ))
    emit("nequip", args, ["nequip", "e3nn"], results)


if __name__ == "__main__":
    main()
