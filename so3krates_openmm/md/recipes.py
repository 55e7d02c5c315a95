"""The MD protocols as library functions: run (or read) a trajectory, analyse it, write the results.

One function per protocol of ``md_protocols/``, each taking that protocol's
options object (:mod:`so3krates_openmm.md.protocols`) and returning a
:class:`ProtocolResult`; the command-line programs (:mod:`so3krates_openmm.cli`)
only parse options and map the result to an exit code. Summary lines go to
``log`` (default ``print``). Bad input raises :class:`ValueError` (including
:class:`~so3krates_openmm.md.protocols.ProtocolError`) or
:class:`FileNotFoundError`; a run that became unstable before it produced
anything to analyse raises :class:`RunUnstable`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openmm as mm
from openmm import unit

from so3krates_openmm.data.structures import Structure, read_structure
from so3krates_openmm.data.trajectory import DCDTrajectory, read_dcd
from so3krates_openmm.md.protocols import (
    PRETRAINED_DIR,
    CatcherDistanceOptions,
    DynamicsOptions,
    LangevinNVTOptions,
    MinimaOptions,
    MLMMSolvatedOptions,
    NVEOptions,
    ProtocolError,
    RamachandranOptions,
    SpectrumOptions,
    StabilityOptions,
)
from so3krates_openmm.md.runner import FINAL_STATE, LOG, TRAJECTORY, VELOCITIES, RunConfig, RunResult, run_md
from so3krates_openmm.md.simulation import SimulationSettings, model_system
from so3krates_openmm.md.stability import StabilityCriteria

Log = Callable[[str], None]


class RunUnstable(RuntimeError):
    """The MD run of a protocol became unstable before there was anything to analyse."""


@dataclass
class ProtocolResult:
    """Outcome of a protocol: whether its MD stayed stable (True when it only analysed existing files) and the
    seed of the run made (``None`` when none was made)."""

    stable: bool
    seed: int | None = None


class _Runner:
    """Runs MD for one protocol's options (structure, model and output known) and remembers the seed."""

    def __init__(self, options: DynamicsOptions, structure_path: Path, model_path: Path, log: Log) -> None:
        self.options = options
        self.structure_path = structure_path
        self.model_path = model_path
        self.log = log
        self.seed: int | None = options.seed

    def settings(self, ensemble: str, seed: int | None = None) -> SimulationSettings:
        options = self.options
        return SimulationSettings(
            ensemble=ensemble,
            temperature_K=options.temperature,
            # NVE protocols have no friction option: their Langevin equilibration uses 1/ps.
            friction_per_ps=getattr(options, "friction", 1.0),
            timestep_fs=options.timestep_fs,
            platform=options.platform,
            threads=options.threads,
            precision=options.precision,
            seed=options.seed if seed is None else seed,
            minimize=options.minimize,
            hydrogen_mass_amu=options.hydrogen_mass,
        )

    def run(self, structure: Structure, *, ensemble: str, steps: int, output_dir: Path, velocity_interval: int = 0,
            initial_state: Path | None = None, trajectory_interval: int | None = None,
            system: mm.System | None = None, seed: int | None = None, resume: bool | None = None) -> RunResult:
        """One run of ``steps`` into ``output_dir``; ``seed`` and ``resume`` default to the options'."""
        options = self.options
        if system is None:
            system = model_system(structure, self.model_path, cuda_graphs=options.cuda_graphs, backend=options.backend,
                                  kernels=options.kernels)
        config = RunConfig(
            steps=steps,
            output_dir=output_dir,
            log_interval=options.log_interval,
            trajectory_interval=trajectory_interval or options.trajectory_interval,
            velocity_interval=velocity_interval,
            checkpoint_interval=options.checkpoint_interval,
            stability=stability_criteria(options),
            stability_interval=options.stability_interval,
            progress=options.progress,
            resume=options.resume if resume is None else resume,
            overwrite=options.overwrite and not resume,
            identity={"structure": str(self.structure_path.resolve()), "model": str(self.model_path.resolve())},
            initial_state=initial_state,
        )
        result = run_md(structure, system, self.settings(ensemble, seed), config)
        self.seed = result.seed  # drawn at random when not given: recorded so that the run can be repeated
        done = f"{result.final_step}/{result.steps_requested} steps"
        if result.resumed_from_step is not None:
            done += f" (resumed from step {result.resumed_from_step})"
        self.log(f"{result.output_dir}: {done} on {result.platform}, seed {result.seed}, "
                 f"{result.ns_per_day:.3g} ns/day")
        if result.stability is not None:
            self.log(f"stability: {result.stability.summary()}")
        return result

    def equilibrated_nve(self, structure: Structure, *, velocity_interval: int = 0) -> RunResult:
        """Langevin equilibration (``equilibration_steps``) then the NVE run of ``steps``/``ns``, both from
        ``initial_state`` when given."""
        output = self.options.output
        initial_state = self.options.initial_state
        if self.options.equilibration_steps > 0:
            equilibration = self.run(structure, ensemble="nvt", steps=self.options.equilibration_steps,
                                     output_dir=output / "equilibration", initial_state=initial_state)
            if not is_stable(equilibration):
                return equilibration
            initial_state = output / "equilibration" / FINAL_STATE
        return self.run(structure, ensemble="nve", steps=self.options.n_steps, output_dir=output,
                        velocity_interval=velocity_interval, initial_state=initial_state)

    def trajectory(self, structure: Structure, dcd: Path | None, skip_ps: float, run: Callable[[], RunResult],
                   run_dir: Path | None = None) -> tuple[DCDTrajectory, RunResult | None]:
        """The trajectory to analyse: ``dcd`` if given, else the DCD of a run made now in ``run_dir``."""
        result = None
        if dcd is not None:
            path = Path(dcd)
        else:
            result = run()
            path = Path(run_dir or self.options.output) / TRAJECTORY
        trajectory = read_dcd(path)
        if trajectory.positions_angstrom.shape[1] != structure.n_atoms:
            raise ValueError(f"{path} has {trajectory.positions_angstrom.shape[1]} atoms but {structure.source} has "
                             f"{structure.n_atoms}")
        trajectory = trajectory.after(skip_ps)
        if trajectory.n_frames == 0:
            if result is not None and not is_stable(result):
                raise RunUnstable(
                    f"the run became unstable before its first frame; see {path.parent / 'stability.json'}"
                )
            raise ValueError(f"{path} has no frames to analyse (after skipping {skip_ps} ps)")
        return trajectory, result


def stability_criteria(options: StabilityOptions) -> StabilityCriteria | None:
    """The monitor's criteria from the options, ``None`` when the check is off."""
    if not options.stability_check:
        return None
    return StabilityCriteria(bond_stretch_factor=options.bond_stretch_factor,
                             collision_factor=options.collision_factor)


def is_stable(result: RunResult | None) -> bool:
    """Whether a run stayed stable (no run or no monitor counts as stable)."""
    return result is None or result.stability is None or result.stability.stable


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def _runner(options, log: Log, *, need_model: bool = True) -> tuple[_Runner, Structure]:
    structure_path, model_path = options.system_files(need_model=need_model)
    return _Runner(options, structure_path, model_path, log), read_structure(structure_path)


# --------------------------------------------------------------------------- protocols


def run_langevin_nvt(options: LangevinNVTOptions, log: Log = print) -> ProtocolResult:
    """Langevin NVT production: trajectory, log, checkpoints, stability report and the energy plot."""
    from so3krates_openmm.md.energy import plot_energy_trace
    from so3krates_openmm.md.reporters import read_csv_log

    runner, structure = _runner(options, log)
    if options.segment_ps is not None:
        return _langevin_nvt_segments(options, runner, structure, log)
    if options.max_segments is not None:
        raise ProtocolError("--max-segments needs --segment-ps (it counts closed segments)")
    result = runner.run(structure, ensemble="nvt", steps=options.n_steps, output_dir=options.output,
                        velocity_interval=options.velocity_interval)
    trace = read_csv_log(options.output / LOG)
    if len(trace["step"]) > 1:
        plot_energy_trace(trace, options.output / "energy.png")
    return ProtocolResult(is_stable(result), runner.seed)


def _langevin_nvt_segments(options: LangevinNVTOptions, runner: _Runner, structure: Structure,
                           log: Log) -> ProtocolResult:
    """The Langevin run as closed segments (:mod:`so3krates_openmm.md.segments`)."""
    from so3krates_openmm.md.segments import file_identity, run_segmented

    segment_steps = round(options.segment_ps * 1000.0 / options.timestep_fs)
    if segment_steps < 1:
        raise ProtocolError(f"--segment-ps {options.segment_ps} is shorter than one time step")
    system = model_system(structure, runner.model_path, cuda_graphs=options.cuda_graphs, backend=options.backend)

    def run_segment(directory: Path, steps: int, initial_state: Path | None, seed: int) -> RunResult:
        return runner.run(structure, ensemble="nvt", steps=steps, output_dir=directory,
                          velocity_interval=options.velocity_interval, initial_state=initial_state, system=system,
                          seed=seed, resume=directory.exists())  # an open segment continues from its checkpoint

    identity = {**file_identity(runner.structure_path, runner.model_path), "temperature_K": options.temperature,
                "friction_per_ps": options.friction, "hydrogen_mass_amu": options.hydrogen_mass,
                "minimize": options.minimize}
    status = run_segmented(run_segment, options.output, total_steps=options.n_steps, segment_steps=segment_steps,
                           timestep_fs=options.timestep_fs, seed=options.seed, identity=identity,
                           resume=options.resume, overwrite=options.overwrite,
                           max_new_segments=options.max_segments, log=log)
    runner.seed = status.seed
    log(f"{options.output}: {status.simulated_ps:.4g} of {status.total_steps * options.timestep_fs * 1e-3:.4g} ps "
        f"stable in {len(status.segments)} segment(s) (stable fraction {status.stable_fraction:.4f})"
        + (f"; stopped by the stability monitor: {status.unstable.reason}" if status.unstable else ""))
    return ProtocolResult(status.unstable is None, status.seed)


def run_nve(options: NVEOptions, log: Log = print) -> ProtocolResult:
    """NVE run after a Langevin equilibration (or an existing ``log``): energy drift per ns per atom and plots."""
    from so3krates_openmm.md.energy import energy_drift, plot_energy_drift, plot_energy_trace, write_drift
    from so3krates_openmm.md.reporters import read_csv_log

    output = options.output
    runner, structure = _runner(options, log, need_model=options.log is None)
    if options.log is not None:
        log_path = options.log
    else:
        result = runner.equilibrated_nve(structure)
        if not is_stable(result):
            return ProtocolResult(False, runner.seed)
        log_path = output / LOG
    trace = read_csv_log(log_path)
    drift = energy_drift(trace["time_ps"], trace["total_energy_kJ/mol"], structure.n_atoms)
    output.mkdir(parents=True, exist_ok=True)
    write_drift(output / "energy_drift.json", drift)
    plot_energy_drift(trace["time_ps"], trace["total_energy_kJ/mol"], drift, output / "energy_drift.png")
    plot_energy_trace(trace, output / "energy.png")
    log(f"NVE drift over {drift.duration_ps:.3g} ps: {drift.drift_kj_mol_per_ns_per_atom:.4g} kJ/mol/ns/atom "
        f"({drift.drift_mev_per_ps_per_atom:.3g} meV/ps/atom), fluctuation {drift.residual_std_kj_mol:.3g} kJ/mol; "
        f"plot {output / 'energy_drift.png'}")
    return ProtocolResult(True, runner.seed)


def run_spectrum(options: SpectrumOptions, log: Log = print) -> ProtocolResult:
    """VACF power spectrum of an NVE run (or of existing ``velocities`` or a ``dcd``): CSV and PNG."""
    from so3krates_openmm.elements import masses_dalton
    from so3krates_openmm.md.reporters import read_velocities
    from so3krates_openmm.md.spectrum import (
        finite_difference_velocities,
        plot_spectrum,
        vibrational_spectrum,
        write_spectrum_csv,
        write_vacf_csv,
    )

    output = options.output
    if options.velocities is not None and options.dcd is not None:
        raise ProtocolError("give either --velocities or --dcd, not both")
    analyse_only = options.velocities is not None or options.dcd is not None
    runner, structure = _runner(options, log, need_model=not analyse_only)
    if options.dcd is not None:
        trajectory, _ = runner.trajectory(structure, options.dcd, options.skip_ps, run=lambda: None)
        velocities = finite_difference_velocities(trajectory.positions_angstrom, trajectory.frame_interval_ps)
        interval_ps = trajectory.frame_interval_ps
        source = f"central finite differences of positions in {options.dcd}"
    else:
        path = options.velocities
        if path is None:
            result = runner.equilibrated_nve(structure, velocity_interval=options.velocity_interval)
            if not is_stable(result):
                return ProtocolResult(False, runner.seed)
            path = output / VELOCITIES
        velocities, interval_ps = read_velocities(path)
        velocities = velocities[round(options.skip_ps / interval_ps):]
        source = f"integrator velocities from {path}"
    if velocities.shape[1] != structure.n_atoms:
        raise ValueError(
            f"the velocities have {velocities.shape[1]} atoms but {structure.source} has {structure.n_atoms}"
        )
    masses = np.asarray(masses_dalton(structure.atomic_numbers)) if options.mass_weighted else None
    spectrum = vibrational_spectrum(velocities, interval_ps, masses=masses, max_lag_ps=options.max_lag_ps,
                                    source=source)
    output.mkdir(parents=True, exist_ok=True)
    write_spectrum_csv(output / "spectrum.csv", spectrum, options.max_wavenumber)
    write_vacf_csv(output / "vacf.csv", spectrum)
    kind = "finite differences of positions" if options.dcd is not None else "integrator velocities"
    plot_spectrum(spectrum, output / "spectrum.png", options.max_wavenumber,
                  title=f"VACF power spectrum, {velocities.shape[0]} frames ({kind})")
    peaks = ", ".join(f"{x:.0f}" for x in spectrum.peak_wavenumbers(5))
    log(f"spectrum from {velocities.shape[0]} frames every {interval_ps * 1000:.3g} fs ({source}); "
        f"strongest peaks (cm^-1): {peaks}; {output / 'spectrum.png'}")
    return ProtocolResult(True, runner.seed)


def run_catcher_distance(options: CatcherDistanceOptions, log: Log = print) -> ProtocolResult:
    """C60-catcher centroid distance over a Langevin run (or an existing ``dcd``): CSV, JSON summary and plot."""
    from so3krates_openmm.md.catcher import centroid_distances, identify_ball, plot_distance, write_distance_csv

    output = options.output
    runner, structure = _runner(options, log, need_model=options.dcd is None)
    atoms = identify_ball(structure, options.ball_residue)
    trajectory, result = runner.trajectory(
        structure, options.dcd, options.skip_ps,
        run=lambda: runner.run(structure, ensemble="nvt", steps=options.n_steps, output_dir=output))
    distance = centroid_distances(trajectory.positions_angstrom, atoms)
    start = float(centroid_distances(structure.positions_angstrom[None], atoms)[0])
    output.mkdir(parents=True, exist_ok=True)
    write_distance_csv(output / "catcher_distance.csv", trajectory.times_ps, distance)
    plot_distance(trajectory.times_ps, distance, output / "catcher_distance.png", reference_angstrom=start)
    _write_json(output / "catcher_distance.json", {
        "ball_atoms": len(atoms.ball), "host_atoms": len(atoms.host), "ball_identified_by": atoms.method,
        "start_distance_angstrom": start, "mean_distance_angstrom": float(distance.mean()),
        "std_distance_angstrom": float(distance.std()), "min_distance_angstrom": float(distance.min()),
        "max_distance_angstrom": float(distance.max()), "frames": int(trajectory.n_frames),
    })
    log(f"C60-catcher distance over {trajectory.n_frames} frames: mean {distance.mean():.3f} Å, "
        f"range {distance.min():.3f}-{distance.max():.3f} Å (start {start:.3f} Å); {output / 'catcher_distance.png'}")
    return ProtocolResult(is_stable(result), runner.seed if result is not None else None)


def run_ramachandran(options: RamachandranOptions, log: Log = print) -> ProtocolResult:
    """Backbone (phi, psi) of the chosen residues over a Langevin run (or an existing ``dcd``): CSV and plot."""
    from so3krates_openmm.data.trajectory import mdtraj_trajectory
    from so3krates_openmm.md.ramachandran import backbone_dihedrals, plot_ramachandran, write_dihedrals_csv

    output = options.output
    runner, structure = _runner(options, log, need_model=options.dcd is None)
    trajectory, result = runner.trajectory(
        structure, options.dcd, options.skip_ps,
        run=lambda: runner.run(structure, ensemble="nvt", steps=options.n_steps, output_dir=output))
    frames = mdtraj_trajectory(structure.openmm_topology(), trajectory.positions_angstrom, trajectory.times_ps)
    dihedrals = backbone_dihedrals(frames, options.residue_name or None)
    output.mkdir(parents=True, exist_ok=True)
    write_dihedrals_csv(output / "ramachandran.csv", trajectory.times_ps, dihedrals)
    plot_ramachandran(dihedrals, output / "ramachandran.png",
                      title=f"{trajectory.n_frames} frames, {trajectory.times_ps[-1] - trajectory.times_ps[0]:.3g} ps")
    log(f"Ramachandran angles of {', '.join(dihedrals.residues)} over {trajectory.n_frames} frames; "
        f"{output / 'ramachandran.png'}")
    return ProtocolResult(is_stable(result), runner.seed if result is not None else None)


def run_minima(options: MinimaOptions, log: Log = print) -> ProtocolResult:
    """Minima exploration: MD snapshots (or an existing ``dcd``) minimised as Dask tasks (resumable), deduplicated."""
    from so3krates_openmm.md.minima import (
        MINIMA_JOURNAL,
        ModelSystemFactory,
        deduplicate,
        minimize_snapshots,
        write_minima,
    )

    output = options.output
    runner, structure = _runner(options, log)
    trajectory, result = runner.trajectory(
        structure, options.dcd, options.skip_ps,
        run=lambda: runner.run(structure, ensemble="nvt", steps=options.n_steps, output_dir=output / "md",
                               trajectory_interval=options.snapshot_interval),
        run_dir=output / "md")
    if options.dcd is not None:
        trajectory = trajectory.every(options.snapshot_interval)
    steps = trajectory.first_step + np.arange(trajectory.n_frames) * trajectory.steps_between_frames
    start = time.perf_counter()
    factory = ModelSystemFactory(str(runner.structure_path.resolve()), str(runner.model_path.resolve()),
                                 options.kernels)
    journal = output / MINIMA_JOURNAL
    if journal.is_file() and not options.resume:
        if not options.overwrite:
            raise ValueError(f"{journal} holds snapshots minimised by an earlier run: pass --resume to continue it "
                             "or --overwrite to start again")
        journal.unlink()
    snapshots = minimize_snapshots(
        trajectory.positions_angstrom, steps, factory, journal, workers=options.workers, scheduler=options.scheduler,
        platform=options.platform, tolerance_kj_mol_nm=options.minimize_tolerance,
        max_iterations=options.max_iterations, progress=options.progress,
    )
    wall = time.perf_counter() - start
    criteria = stability_criteria(options) or StabilityCriteria()
    minima, rejected = deduplicate(snapshots, structure, rmsd_threshold_angstrom=options.rmsd_threshold,
                                   criteria=criteria)
    summary = {
        "snapshots": len(snapshots), "workers": options.workers, "scheduler": options.scheduler,
        "minimisation_wall_seconds": wall,
        "minimisation_worker_seconds": float(np.nansum([snapshot.seconds for snapshot in snapshots])),
        "minimisation_cpu_seconds": float(np.nansum([snapshot.cpu_seconds for snapshot in snapshots])),
        "rmsd_threshold_angstrom": options.rmsd_threshold, "temperature_K": options.temperature,
        "journal": str(journal),
        "md_steps": int(steps[-1]) if len(steps) else 0, "snapshot_interval": int(trajectory.steps_between_frames),
    }
    write_minima(output, minima, rejected, structure, summary)
    energies = ", ".join(f"{m.energy_kj_mol - minima[0].energy_kj_mol:.2f}" for m in minima[:10])
    where = options.scheduler or f"{options.workers} local workers"
    log(f"{len(minima)} distinct minima from {len(snapshots)} snapshots ({len(rejected)} rejected) in {wall:.1f} s "
        f"on {where}; relative energies (kJ/mol): {energies}; {output / 'minima.csv'}")
    return ProtocolResult(is_stable(result), runner.seed if result is not None else None)


def run_mlmm_solvated(options: MLMMSolvatedOptions, log: Log = print) -> ProtocolResult:
    """The molecule in ML (openmm-ml mixed system), TIP3P water in amber14 with PME, Langevin NVT."""
    from so3krates_openmm.md.mlmm import solvated_mixed_system

    structure_path, _ = options.system_files(need_model=False)
    checkpoint = options.checkpoint
    if checkpoint is None:
        if options.system is None:
            raise ProtocolError("no checkpoint given: pass --checkpoint FILE or choose a pretrained --system")
        checkpoint = PRETRAINED_DIR / options.system / "best_checkpoint.pt"
    if not Path(checkpoint).is_file():
        raise ProtocolError(f"checkpoint file {str(checkpoint)!r} does not exist (key 'checkpoint')")
    setup = solvated_mixed_system(structure_path, checkpoint, padding_nm=options.padding_nm,
                                  precision=options.ml_precision, backend=options.backend, kernels=options.kernels)
    box = np.asarray(setup.topology.getPeriodicBoxVectors().value_in_unit(unit.angstrom))
    solvated = Structure(
        [atom.element.atomic_number for atom in setup.topology.atoms()],
        np.asarray(setup.positions.value_in_unit(unit.angstrom)),
        box_angstrom=box,
        topology=setup.topology,
        source=f"{structure_path} in TIP3P",
    )
    log(f"{options.name}: {len(setup.ml_atoms)} ML atoms in {solvated.n_atoms} atoms, box {box[0, 0] / 10:.3f} nm")
    runner = _Runner(options, structure_path, Path(checkpoint), log)
    result = runner.run(solvated, ensemble="nvt", steps=options.n_steps, output_dir=options.output,
                        system=setup.system)
    return ProtocolResult(is_stable(result), runner.seed)
