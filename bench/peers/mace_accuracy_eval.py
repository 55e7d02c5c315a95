#!/usr/bin/env python
"""Predict energies and forces of a trained MACE model on test frames (run with the MACE venv's python).

::

    bench/peers/.venvs/mace/bin/python bench/peers/mace_accuracy_eval.py MODEL TEST.xyz \\
        --predictions OUT.npz [--threads 1] [--dtype float32]

``MODEL`` is the ``<name>.model`` file written by mace_run_train; ``TEST.xyz``
the extended XYZ of ``accuracy.py`` (``REF_energy`` in eV, ``REF_forces`` in
eV/Å). Each frame goes through mace-torch's ASE calculator
(``mace.calculators.MACECalculator``), as a user would evaluate it. The
predictions (``energies`` (B,) eV, ``forces`` (B, N, 3) eV/Å) are written to
``--predictions``; the errors are computed by ``accuracy.py`` with
:func:`peer_common.error_metrics`, the same function as for SO3krates, and
are also printed here in the result line (with the parameter count and the
evaluation time).
"""

from __future__ import annotations

import os

# mace-torch unpickles whole modules; torch >= 2.6 refuses that by default.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from peer_common import RESULT_KEY, error_metrics, log, read_reference_extxyz, versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="MACE model file (<name>.model of mace_run_train)")
    parser.add_argument("test", type=Path, help="extended XYZ test frames with REF_energy / REF_forces")
    parser.add_argument("--predictions", type=Path, required=True, help="output .npz of predicted energies and forces")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="evaluation precision")
    args = parser.parse_args()

    import torch
    from mace.calculators import MACECalculator

    torch.set_num_threads(args.threads)
    frames, reference_energies, reference_forces = read_reference_extxyz(args.test)
    calculator = MACECalculator(model_paths=str(args.model), device="cpu", default_dtype=args.dtype)
    parameters = sum(p.numel() for p in calculator.models[0].parameters())
    log(f"{args.model}: {parameters} parameters; {len(frames)} test frames")
    energies = np.empty(len(frames))
    forces = np.empty_like(reference_forces)
    started = time.perf_counter()
    for index, atoms in enumerate(frames):
        atoms = atoms.copy()
        atoms.calc = calculator
        energies[index] = atoms.get_potential_energy()
        forces[index] = atoms.get_forces()
    seconds = time.perf_counter() - started
    args.predictions.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.predictions, energies=energies, forces=forces)
    record = {
        RESULT_KEY: 1,
        "peer": "mace",
        "versions": versions(["torch", "mace-torch", "e3nn", "ase"]),
        "model": str(args.model),
        "parameters": int(parameters),
        "dtype": args.dtype,
        "threads": args.threads,
        "eval_s": seconds,
        "predictions": str(args.predictions),
        "errors_ev": error_metrics(energies, reference_energies, forces, reference_forces),
    }
    sys.stdout.flush()
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
