"""Entry points of the ``md_protocols/`` scripts: parse, run, analyse, report.

Each ``*_main(argv)`` resolves its protocol (schema defaults < ``--protocol``
file < flags), runs what is needed and prints a short summary; it returns the
process exit code (0: done, 1: the run became unstable, 2: bad input).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import openmm as mm
from openmm import unit

from so3krates_openmm.data.structures import Structure, read_structure
from so3krates_openmm.data.trajectory import DCDTrajectory, read_dcd
from so3krates_openmm.md.protocols import (
    ProtocolError,
    ProtocolSchema,
    resolve_system_files,
    steps_from,
)
from so3krates_openmm.md.reporters import OutputReplacedError
from so3krates_openmm.md.runner import (
    FINAL_STATE,
    LOG,
    TRAJECTORY,
    VELOCITIES,
    RunConfig,
    RunResult,
    run_md,
)
from so3krates_openmm.md.simulation import SimulationSettings, model_system
from so3krates_openmm.md.stability import StabilityCriteria

logger = logging.getLogger("so3krates_openmm.md")
EXIT_OK, EXIT_UNSTABLE, EXIT_BAD_INPUT = 0, 1, 2


class RunUnstable(RuntimeError):
    """The MD run of a protocol became unstable before there was anything to analyse."""


def _configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)


def _entry(schema: ProtocolSchema, body: Callable[[dict[str, Any]], int], argv: Optional[Sequence[str]]) -> int:
    """Resolve the protocol and run ``body``; bad input becomes a one-line error and exit code 2."""
    _configure_logging()
    try:
        values = schema.resolve(argv)
        code = body(values)
        output = Path(values["output"])
        if output.is_dir():
            _write_resolved_protocol(values, output / "protocol_resolved.yaml")
        return code
    except RunUnstable as error:
        print(f"{schema.name}: {error}", file=sys.stderr)
        return EXIT_UNSTABLE
    except (ProtocolError, FileNotFoundError, FileExistsError) as error:
        print(f"{schema.name}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ValueError, OutputReplacedError) as error:
        print(f"{schema.name}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _inputs(schema: ProtocolSchema, values: dict[str, Any], *, need_model: bool = True) -> Structure:
    resolve_system_files(schema, values, need_model=need_model)
    return read_structure(values["structure"])


def _settings(values: dict[str, Any], ensemble: str) -> SimulationSettings:
    return SimulationSettings(
        ensemble=ensemble,
        temperature_K=values["temperature"],
        # NVE protocols have no friction key: their Langevin equilibration uses 1/ps.
        friction_per_ps=values["friction"] if values.get("friction") is not None else 1.0,
        timestep_fs=values["timestep_fs"],
        platform=values["platform"],
        threads=values["threads"],
        precision=values["precision"],
        seed=values["seed"],
        minimize=values["minimize"],
    )


def _criteria(values: dict[str, Any]) -> Optional[StabilityCriteria]:
    if not values.get("stability_check", True):
        return None
    return StabilityCriteria(bond_stretch_factor=values["bond_stretch_factor"], collision_factor=values["collision_factor"])


def _run(
    values: dict[str, Any],
    structure: Structure,
    *,
    ensemble: str,
    steps: int,
    output_dir: Path,
    velocity_interval: int = 0,
    initial_state: Optional[Path] = None,
    trajectory_interval: Optional[int] = None,
    system: Optional[mm.System] = None,
) -> RunResult:
    if system is None:
        system = model_system(structure, values["model"], cuda_graphs=values["cuda_graphs"], backend=values["backend"])
    config = RunConfig(
        steps=steps,
        output_dir=output_dir,
        log_interval=values["log_interval"],
        trajectory_interval=trajectory_interval or values["trajectory_interval"],
        velocity_interval=velocity_interval,
        checkpoint_interval=values["checkpoint_interval"],
        stability=_criteria(values),
        stability_interval=values["stability_interval"],
        progress=values["progress"],
        resume=values["resume"],
        overwrite=values["overwrite"],
        identity={"structure": str(Path(values["structure"]).resolve()), "model": str(Path(values["model"]).resolve())},
        initial_state=initial_state,
    )
    result = run_md(structure, system, _settings(values, ensemble), config)
    if values["seed"] is None:
        values["_seed"] = result.seed  # drawn at random: recorded so that the run can be repeated
    _report_run(result)
    return result


def _write_resolved_protocol(values: dict[str, Any], path: Path) -> None:
    """Every key's final value (random seed and run length included), as a protocol file for ``--protocol``."""
    import yaml

    resolved = {}
    for key, value in values.items():
        if key.startswith("_") or key in ("resume", "overwrite", "ns"):
            continue
        if key == "seed" and value is None:
            value = values.get("_seed")
        if key == "steps" and "timestep_fs" in values:
            value = steps_from(values)
        if isinstance(value, Path):
            value = str(value.resolve() if key != "output" else value)  # inputs absolute: the file can move
        if value is not None:
            resolved[key] = value
    header = f"# values used (defaults < {values.get('_protocol_file') or 'no protocol file'} < flags)\n"
    path.write_text(header + yaml.safe_dump(resolved, sort_keys=False))


def _report_run(result: RunResult) -> None:
    done = f"{result.final_step}/{result.steps_requested} steps"
    if result.resumed_from_step is not None:
        done += f" (resumed from step {result.resumed_from_step})"
    print(f"{result.output_dir}: {done} on {result.platform}, seed {result.seed}, {result.ns_per_day:.3g} ns/day")
    if result.stability is not None:
        print(f"stability: {result.stability.summary()}")


def _stable(result: RunResult) -> bool:
    return result.stability is None or result.stability.stable


def _equilibrated_nve(values: dict[str, Any], structure: Structure, *, velocity_interval: int = 0) -> RunResult:
    """Langevin equilibration (``equilibration_steps``) then the NVE run of ``steps``/``ns``."""
    output = Path(values["output"])
    initial_state = None
    if values["equilibration_steps"] > 0:
        equilibration = _run(values, structure, ensemble="nvt", steps=values["equilibration_steps"],
                             output_dir=output / "equilibration")
        if not _stable(equilibration):
            return equilibration
        initial_state = output / "equilibration" / FINAL_STATE
    return _run(values, structure, ensemble="nve", steps=steps_from(values), output_dir=output,
                velocity_interval=velocity_interval, initial_state=initial_state)


def _trajectory(
    values: dict[str, Any], structure: Structure, run: Callable[[], RunResult], run_dir: Optional[Path] = None
) -> tuple[DCDTrajectory, Optional[RunResult]]:
    """The trajectory to analyse: ``--dcd`` if given, else the DCD of a run made now in ``run_dir``."""
    result = None
    if values.get("dcd") is not None:
        path = Path(values["dcd"])
    else:
        result = run()
        path = Path(run_dir or values["output"]) / TRAJECTORY
    trajectory = read_dcd(path)
    if trajectory.positions_angstrom.shape[1] != structure.n_atoms:
        raise ValueError(
            f"{path} has {trajectory.positions_angstrom.shape[1]} atoms but {structure.source} has {structure.n_atoms}"
        )
    trajectory = trajectory.after(values.get("skip_ps", 0.0))
    if trajectory.n_frames == 0:
        if result is not None and not _stable(result):
            raise RunUnstable(f"the run became unstable before its first frame; see {path.parent / 'stability.json'}")
        raise ValueError(f"{path} has no frames to analyse (after skipping {values.get('skip_ps', 0.0)} ps)")
    return trajectory, result


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


# --------------------------------------------------------------------------- protocols


def langevin_nvt_main(argv: Optional[Sequence[str]] = None) -> int:
    """``md_protocols/langevin_nvt.py``: Langevin NVT production."""
    from so3krates_openmm.md.energy import plot_energy_trace
    from so3krates_openmm.md.reporters import read_csv_log
    from so3krates_openmm.md.schemas import LANGEVIN_NVT

    def body(values: dict[str, Any]) -> int:
        structure = _inputs(LANGEVIN_NVT, values)
        steps = steps_from(values)
        result = _run(values, structure, ensemble="nvt", steps=steps, output_dir=Path(values["output"]),
                      velocity_interval=values["velocity_interval"])
        log = read_csv_log(Path(values["output"]) / LOG)
        if len(log["step"]) > 1:
            plot_energy_trace(log, Path(values["output"]) / "energy.png")
        return EXIT_OK if _stable(result) else EXIT_UNSTABLE

    return _entry(LANGEVIN_NVT, body, argv)


def nve_main(argv: Optional[Sequence[str]] = None) -> int:
    """``md_protocols/nve.py``: NVE run, energy drift per ns per atom and its plot."""
    from so3krates_openmm.md.energy import (
        energy_drift,
        plot_energy_drift,
        plot_energy_trace,
        write_drift,
    )
    from so3krates_openmm.md.reporters import read_csv_log
    from so3krates_openmm.md.schemas import NVE

    def body(values: dict[str, Any]) -> int:
        output = Path(values["output"])
        if values["log"] is not None:
            structure = _inputs(NVE, values, need_model=False)
            log_path, code = Path(values["log"]), EXIT_OK
        else:
            structure = _inputs(NVE, values)
            result = _equilibrated_nve(values, structure)
            if not _stable(result):
                return EXIT_UNSTABLE
            log_path, code = output / LOG, EXIT_OK
        log = read_csv_log(log_path)
        drift = energy_drift(log["time_ps"], log["total_energy_kJ/mol"], structure.n_atoms)
        output.mkdir(parents=True, exist_ok=True)
        write_drift(output / "energy_drift.json", drift)
        plot_energy_drift(log["time_ps"], log["total_energy_kJ/mol"], drift, output / "energy_drift.png")
        plot_energy_trace(log, output / "energy.png")
        print(
            f"NVE drift over {drift.duration_ps:.3g} ps: {drift.drift_kj_mol_per_ns_per_atom:.4g} kJ/mol/ns/atom "
            f"({drift.drift_mev_per_ps_per_atom:.3g} meV/ps/atom), fluctuation {drift.residual_std_kj_mol:.3g} kJ/mol; "
            f"plot {output / 'energy_drift.png'}"
        )
        return code

    return _entry(NVE, body, argv)


def spectrum_main(argv: Optional[Sequence[str]] = None) -> int:
    """``md_protocols/spectrum.py``: VACF -> power spectrum (CSV and PNG)."""
    from so3krates_openmm.elements import masses_dalton
    from so3krates_openmm.md.reporters import read_velocities
    from so3krates_openmm.md.schemas import SPECTRUM
    from so3krates_openmm.md.spectrum import (
        finite_difference_velocities,
        plot_spectrum,
        vibrational_spectrum,
        write_spectrum_csv,
        write_vacf_csv,
    )

    def body(values: dict[str, Any]) -> int:
        output = Path(values["output"])
        if values["velocities"] is not None and values["dcd"] is not None:
            raise ProtocolError("give either --velocities or --dcd, not both")
        analyse_only = values["velocities"] is not None or values["dcd"] is not None
        structure = _inputs(SPECTRUM, values, need_model=not analyse_only)
        if values["dcd"] is not None:
            trajectory, _ = _trajectory(values, structure, run=lambda: None)  # --dcd given: no run
            velocities = finite_difference_velocities(trajectory.positions_angstrom, trajectory.frame_interval_ps)
            interval_ps, source = trajectory.frame_interval_ps, f"central finite differences of positions in {values['dcd']}"
        else:
            path = values["velocities"]
            if path is None:
                result = _equilibrated_nve(values, structure, velocity_interval=values["velocity_interval"])
                if not _stable(result):
                    return EXIT_UNSTABLE
                path = output / VELOCITIES
            velocities, interval_ps = read_velocities(path)
            skip = round(values["skip_ps"] / interval_ps)
            velocities = velocities[skip:]
            source = f"integrator velocities from {path}"
        if velocities.shape[1] != structure.n_atoms:
            raise ValueError(f"the velocities have {velocities.shape[1]} atoms but {structure.source} has {structure.n_atoms}")
        masses = np.asarray(masses_dalton(structure.atomic_numbers)) if values["mass_weighted"] else None
        spectrum = vibrational_spectrum(velocities, interval_ps, masses=masses, max_lag_ps=values["max_lag_ps"], source=source)
        output.mkdir(parents=True, exist_ok=True)
        write_spectrum_csv(output / "spectrum.csv", spectrum, values["max_wavenumber"])
        write_vacf_csv(output / "vacf.csv", spectrum)
        kind = "finite differences of positions" if values["dcd"] is not None else "integrator velocities"
        plot_spectrum(spectrum, output / "spectrum.png", values["max_wavenumber"],
                      title=f"VACF power spectrum, {velocities.shape[0]} frames ({kind})")
        peaks = ", ".join(f"{x:.0f}" for x in spectrum.peak_wavenumbers(5))
        print(f"spectrum from {velocities.shape[0]} frames every {interval_ps * 1000:.3g} fs ({source}); "
              f"strongest peaks (cm^-1): {peaks}; {output / 'spectrum.png'}")
        return EXIT_OK

    return _entry(SPECTRUM, body, argv)


def catcher_distance_main(argv: Optional[Sequence[str]] = None) -> int:
    """``md_protocols/catcher_distance.py``: C60-catcher centroid distance over time."""
    from so3krates_openmm.md.catcher import (
        centroid_distances,
        identify_ball,
        plot_distance,
        write_distance_csv,
    )
    from so3krates_openmm.md.schemas import CATCHER_DISTANCE

    def body(values: dict[str, Any]) -> int:
        output = Path(values["output"])
        structure = _inputs(CATCHER_DISTANCE, values, need_model=values["dcd"] is None)
        atoms = identify_ball(structure, values["ball_residue"])
        run = lambda: _run(values, structure, ensemble="nvt", steps=steps_from(values), output_dir=output)
        trajectory, result = _trajectory(values, structure, run)
        distance = centroid_distances(trajectory.positions_angstrom, atoms)
        start = float(centroid_distances(structure.positions_angstrom[None], atoms)[0])
        output.mkdir(parents=True, exist_ok=True)
        write_distance_csv(output / "catcher_distance.csv", trajectory.times_ps, distance)
        plot_distance(trajectory.times_ps, distance, output / "catcher_distance.png", reference_angstrom=start)
        summary = {
            "ball_atoms": len(atoms.ball), "host_atoms": len(atoms.host), "ball_identified_by": atoms.method,
            "start_distance_angstrom": start, "mean_distance_angstrom": float(distance.mean()),
            "std_distance_angstrom": float(distance.std()), "min_distance_angstrom": float(distance.min()),
            "max_distance_angstrom": float(distance.max()), "frames": int(trajectory.n_frames),
        }
        _write_json(output / "catcher_distance.json", summary)
        print(f"C60-catcher distance over {trajectory.n_frames} frames: mean {distance.mean():.3f} Å, "
              f"range {distance.min():.3f}-{distance.max():.3f} Å (start {start:.3f} Å); {output / 'catcher_distance.png'}")
        return EXIT_OK if result is None or _stable(result) else EXIT_UNSTABLE

    return _entry(CATCHER_DISTANCE, body, argv)


def ramachandran_main(argv: Optional[Sequence[str]] = None) -> int:
    """``md_protocols/ramachandran.py``: phi/psi of the alanines over a run."""
    from so3krates_openmm.md.ramachandran import (
        backbone_dihedrals,
        plot_ramachandran,
        write_dihedrals_csv,
    )
    from so3krates_openmm.md.schemas import RAMACHANDRAN
    from so3krates_openmm.data.trajectory import mdtraj_trajectory

    def body(values: dict[str, Any]) -> int:
        output = Path(values["output"])
        structure = _inputs(RAMACHANDRAN, values, need_model=values["dcd"] is None)
        run = lambda: _run(values, structure, ensemble="nvt", steps=steps_from(values), output_dir=output)
        trajectory, result = _trajectory(values, structure, run)
        frames = mdtraj_trajectory(structure.openmm_topology(), trajectory.positions_angstrom, trajectory.times_ps)
        dihedrals = backbone_dihedrals(frames, values["residue_name"] or None)
        output.mkdir(parents=True, exist_ok=True)
        write_dihedrals_csv(output / "ramachandran.csv", trajectory.times_ps, dihedrals)
        plot_ramachandran(dihedrals, output / "ramachandran.png",
                          title=f"{trajectory.n_frames} frames, {trajectory.times_ps[-1] - trajectory.times_ps[0]:.3g} ps")
        print(f"Ramachandran angles of {', '.join(dihedrals.residues)} over {trajectory.n_frames} frames; "
              f"{output / 'ramachandran.png'}")
        return EXIT_OK if result is None or _stable(result) else EXIT_UNSTABLE

    return _entry(RAMACHANDRAN, body, argv)


def minima_main(argv: Optional[Sequence[str]] = None) -> int:
    """``md_protocols/minima.py``: minima exploration with parallel minimisation."""
    import time

    from so3krates_openmm.md.minima import (
        MINIMA_JOURNAL,
        ModelSystemFactory,
        deduplicate,
        minimize_snapshots,
        write_minima,
    )
    from so3krates_openmm.md.schemas import MINIMA

    def body(values: dict[str, Any]) -> int:
        output = Path(values["output"])
        structure = _inputs(MINIMA, values)
        run = lambda: _run(values, structure, ensemble="nvt", steps=steps_from(values), output_dir=output / "md",
                           trajectory_interval=values["snapshot_interval"])
        trajectory, result = _trajectory(values, structure, run, run_dir=output / "md")
        if values.get("dcd") is not None:
            trajectory = trajectory.every(values["snapshot_interval"])
        steps = trajectory.first_step + np.arange(trajectory.n_frames) * trajectory.steps_between_frames
        start = time.perf_counter()
        factory = ModelSystemFactory(str(Path(values["structure"]).resolve()), str(Path(values["model"]).resolve()))
        journal = output / MINIMA_JOURNAL
        if journal.is_file() and not values["resume"]:
            if not values["overwrite"]:
                raise ValueError(f"{journal} holds snapshots minimised by an earlier run: pass --resume to continue "
                                 "it or --overwrite to start again")
            journal.unlink()
        snapshots = minimize_snapshots(
            trajectory.positions_angstrom, steps, factory, workers=values["workers"], platform=values["platform"],
            tolerance_kj_mol_nm=values["minimize_tolerance"], max_iterations=values["max_iterations"],
            progress=values["progress"], journal=journal,
        )
        wall = time.perf_counter() - start
        criteria = _criteria(values) or StabilityCriteria()
        minima, rejected = deduplicate(snapshots, structure, rmsd_threshold_angstrom=values["rmsd_threshold"], criteria=criteria)
        summary = {
            "snapshots": len(snapshots), "workers": values["workers"], "minimisation_wall_seconds": wall,
            "minimisation_worker_seconds": float(np.nansum([snapshot.seconds for snapshot in snapshots])),
            "rmsd_threshold_angstrom": values["rmsd_threshold"], "temperature_K": values["temperature"],
            "journal": str(journal),
            "md_steps": int(steps[-1]) if len(steps) else 0, "snapshot_interval": int(trajectory.steps_between_frames),
        }
        write_minima(output, minima, rejected, structure, summary)
        energies = ", ".join(f"{m.energy_kj_mol - minima[0].energy_kj_mol:.2f}" for m in minima[:10])
        print(f"{len(minima)} distinct minima from {len(snapshots)} snapshots ({len(rejected)} rejected) in "
              f"{wall:.1f} s with {values['workers']} workers; relative energies (kJ/mol): {energies}; {output / 'minima.csv'}")
        return EXIT_OK if result is None or _stable(result) else EXIT_UNSTABLE

    return _entry(MINIMA, body, argv)


def mlmm_solvated_main(argv: Optional[Sequence[str]] = None) -> int:
    """``md_protocols/mlmm_solvated.py``: the molecule in ML, TIP3P water in amber14, periodic, Langevin NVT."""
    from so3krates_openmm.md.mlmm import solvated_mixed_system
    from so3krates_openmm.md.protocols import PRETRAINED_DIR
    from so3krates_openmm.md.schemas import MLMM_SOLVATED

    def body(values: dict[str, Any]) -> int:
        _inputs(MLMM_SOLVATED, values, need_model=False)
        if values["checkpoint"] is None:
            values["checkpoint"] = PRETRAINED_DIR / values["system"] / "best_checkpoint.pt"
        MLMM_SOLVATED.check_file(values, "checkpoint")
        values["model"] = values["checkpoint"]
        setup = solvated_mixed_system(
            values["structure"], values["checkpoint"], padding_nm=values["padding_nm"],
            precision=values["ml_precision"], backend=values["backend"],
        )
        box = np.asarray(setup.topology.getPeriodicBoxVectors().value_in_unit(unit.angstrom))
        solvated = Structure(
            [atom.element.atomic_number for atom in setup.topology.atoms()],
            np.asarray(setup.positions.value_in_unit(unit.angstrom)),
            box_angstrom=box,
            topology=setup.topology,
            source=f"{values['structure']} in TIP3P",
        )
        print(f"{MLMM_SOLVATED.name}: {len(setup.ml_atoms)} ML atoms in {solvated.n_atoms} atoms, "
              f"box {box[0, 0] / 10:.3f} nm")
        result = _run(values, solvated, ensemble="nvt", steps=steps_from(values),
                      output_dir=Path(values["output"]), system=setup.system)
        return EXIT_OK if _stable(result) else EXIT_UNSTABLE

    return _entry(MLMM_SOLVATED, body, argv)
