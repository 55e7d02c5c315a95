"""Production MD with checkpoints, resume and the stability monitor: the engine behind the protocols.

:func:`run_md` takes a structure, its ``System`` and the run's settings, and
writes to one output directory:

==========================  ==================================================
``trajectory.dcd``          positions every ``trajectory_interval`` steps
``log.csv``                 energies, temperature, ns/day (:class:`CSVLogReporter`)
``velocities.vel``          velocities every ``velocity_interval`` steps (if > 0)
``checkpoint.zip``          every ``checkpoint_interval`` steps and at the end
``final_state.xml``/``.pdb`` the state after the last step
``run.json``                parameters, seed, platform, speed, stability result
``stability.json``          the stability result (when monitored)
==========================  ==================================================

With ``resume=True`` the run continues from ``checkpoint.zip``: the Context is
restored exactly and every output file is cut back to what the checkpoint
covers, so frames written after the checkpoint by a killed run are neither
lost nor duplicated.
"""

from __future__ import annotations

import json
import logging
import platform as host_platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import openmm as mm
from openmm import app

from so3krates_openmm.data.structures import Structure
from so3krates_openmm.md.checkpoint import (
    identity_differences,
    read_checkpoint,
    restore_context,
    write_checkpoint,
)
from so3krates_openmm.md.reporters import (
    CSVLogReporter,
    DCDReporter,
    ProgressReporter,
    VelocityReporter,
    truncate_dcd,
    truncate_output,
)
from so3krates_openmm.md.simulation import (
    SimulationSettings,
    build_simulation,
    resolve_seed,
)
from so3krates_openmm.md.stability import (
    SimulationUnstable,
    StabilityCriteria,
    StabilityMonitor,
    StabilityResult,
    write_stability_report,
)

logger = logging.getLogger(__name__)

TRAJECTORY = "trajectory.dcd"
LOG = "log.csv"
VELOCITIES = "velocities.vel"
CHECKPOINT = "checkpoint.zip"
FINAL_STATE = "final_state.xml"
FINAL_PDB = "final.pdb"
RUN_INFO = "run.json"
STABILITY = "stability.json"


class OutputExistsError(FileExistsError):
    """The output directory already holds a run and neither resume nor overwrite was asked for."""


@dataclass
class RunConfig:
    """What to run and what to write (steps and intervals in MD steps).

    Attributes:
        steps: total number of steps of the run (a resumed run continues up to it).
        output_dir: directory for all outputs (created if needed).
        log_interval: CSV log interval.
        trajectory_interval: DCD interval.
        velocity_interval: velocity file interval; 0 writes no velocities.
        checkpoint_interval: checkpoint interval; a checkpoint is also written at the end.
        stability: criteria of the stability monitor, ``None`` to run without it.
        stability_interval: how often the monitor checks.
        progress: show a progress bar with ETA on stderr.
        resume: continue from the checkpoint in ``output_dir`` if there is one.
        overwrite: replace a previous run in ``output_dir``.
        identity: parameters recorded in checkpoints that must match on resume
            (e.g. structure and model paths); the settings and intervals are added.
        initial_state: start from this state XML (positions and velocities, e.g. the
            ``final_state.xml`` of an equilibration) instead of the structure with
            minimisation and fresh velocities; time and step start at 0.
        reporters: further OpenMM reporters, called after the run's own ones.
    """

    steps: int
    output_dir: Path
    log_interval: int = 100
    trajectory_interval: int = 100
    velocity_interval: int = 0
    checkpoint_interval: int = 10_000
    stability: StabilityCriteria | None = field(default_factory=StabilityCriteria)
    stability_interval: int = 100
    progress: bool = True
    resume: bool = False
    overwrite: bool = False
    identity: dict = field(default_factory=dict)
    initial_state: Path | None = None
    reporters: list = field(default_factory=list)


@dataclass
class RunResult:
    """Summary of a run (also written to ``run.json``)."""

    output_dir: Path
    steps_requested: int
    start_step: int
    final_step: int
    resumed_from_step: int | None
    seed: int
    platform: str
    wall_seconds: float
    ns_per_day: float
    stability: StabilityResult | None
    exact_resume: bool | None = None

    @property
    def completed(self) -> bool:
        return self.final_step >= self.steps_requested

    def to_dict(self) -> dict:
        data = asdict(self)
        data["output_dir"] = str(self.output_dir)
        data["stability"] = None if self.stability is None else self.stability.to_dict()
        data["completed"] = self.completed
        return data


def _jsonable(value: dict) -> dict:
    return json.loads(json.dumps(value, default=str))


def _run_identity(config: RunConfig, settings: SimulationSettings, n_atoms: int) -> dict:
    identity = dict(config.identity)
    identity.update(
        n_atoms=n_atoms,
        ensemble=settings.ensemble,
        temperature_K=settings.temperature_K,
        friction_per_ps=settings.friction_per_ps,
        timestep_fs=settings.timestep_fs,
        log_interval=config.log_interval,
        trajectory_interval=config.trajectory_interval,
        velocity_interval=config.velocity_interval,
    )
    return _jsonable(identity)


def warm_up_forces(context: mm.Context, evaluations: int = 2) -> None:
    """Evaluate the forces ``evaluations`` times before the first step.

    A TorchScript model runs its first call through the profiling executor's
    unoptimised graph, whose energies and forces differ from those of later
    calls in the last bits (float32). Without this, the first step after a
    resume (a new Context loads the model anew) would use such a force where
    the uninterrupted run used an optimised one, and the two trajectories would
    drift apart from the last bits on.
    """
    for _ in range(evaluations):
        context.getState(getForces=True)


def _check_output_dir(directory: Path, config: RunConfig) -> None:
    previous = [name for name in (CHECKPOINT, TRAJECTORY, LOG) if (directory / name).exists()]
    if previous and not (config.resume or config.overwrite):
        raise OutputExistsError(
            f"output directory {directory} already holds a run ({', '.join(previous)}); "
            "resume it (--resume) or start again (--overwrite)"
        )


def run_md(structure: Structure, system: mm.System, settings: SimulationSettings, config: RunConfig) -> RunResult:
    """Run (or resume) MD of ``structure`` with ``system`` as ``settings`` and ``config`` say.

    Returns a :class:`RunResult`; an unstable run (stability monitor) returns
    normally with ``result.stability.stable == False`` after writing the last
    good state. Any other error propagates after the outputs are closed.
    """
    if config.steps < 0:
        raise ValueError(f"steps must not be negative, got {config.steps}")
    if config.resume and config.overwrite:
        raise ValueError("resume and overwrite contradict each other: give one of --resume, --overwrite")
    for name in ("log_interval", "trajectory_interval", "checkpoint_interval", "stability_interval"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be at least 1 step, got {getattr(config, name)}")
    directory = Path(config.output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    _check_output_dir(directory, config)

    checkpoint = None
    if config.resume and (directory / CHECKPOINT).exists():
        checkpoint = read_checkpoint(directory / CHECKPOINT)
        # The random stream continues from the checkpoint; the recorded seed is the run's seed.
        settings.seed = checkpoint.extra.get("seed", settings.seed)
    elif config.resume:
        start = "the given initial state" if config.initial_state is not None else "the beginning"
        logger.warning("no checkpoint in %s: this directory's run starts from %s", directory, start)
    identity = _run_identity(config, settings, structure.n_atoms)
    if checkpoint is not None:
        differences = identity_differences(checkpoint.identity, identity)
        if differences:
            raise ValueError(
                f"cannot resume {directory / CHECKPOINT}: the run's parameters changed ("
                + "; ".join(differences)
                + "); use another output directory or --overwrite"
            )

    resuming = checkpoint is not None
    settings.seed = resolve_seed(settings.seed)
    seed = settings.seed
    fresh_start = not resuming and config.initial_state is None
    simulation = build_simulation(
        structure,
        system,
        SimulationSettings(**{**asdict(settings), "minimize": settings.minimize and fresh_start}),
        set_velocities=fresh_start,
    )
    if not resuming and config.initial_state is not None:
        simulation.context.setState(mm.XmlSerializer.deserialize(Path(config.initial_state).read_text()))
        simulation.context.setTime(0.0)
        simulation.context.setStepCount(0)
    exact = None
    if resuming:
        exact = restore_context(simulation, checkpoint)
        truncate_output(directory / LOG, checkpoint.outputs["log"]["bytes"])
        truncate_dcd(directory / TRAJECTORY, checkpoint.outputs["trajectory"]["bytes"],
                     checkpoint.outputs["trajectory"]["frames"], config.trajectory_interval)
        if config.velocity_interval > 0:
            truncate_output(directory / VELOCITIES, checkpoint.outputs["velocities"]["bytes"])
        logger.info("resuming %s from step %d", directory, checkpoint.step)
    else:
        for name in (CHECKPOINT, STABILITY, "last_good_state.xml", "last_good.pdb", FINAL_STATE, FINAL_PDB):
            (directory / name).unlink(missing_ok=True)

    warm_up_forces(simulation.context)

    outputs = {
        "log": CSVLogReporter(directory / LOG, config.log_interval, system, settings.timestep_fs, append=resuming),
        "trajectory": DCDReporter(directory / TRAJECTORY, config.trajectory_interval, simulation.topology,
                                  settings.timestep_fs, append=resuming),
    }
    if config.velocity_interval > 0:
        outputs["velocities"] = VelocityReporter(directory / VELOCITIES, config.velocity_interval,
                                                 structure.n_atoms, settings.timestep_fs, append=resuming)
    simulation.reporters.extend(outputs.values())
    monitor = None
    if config.stability is not None:
        monitor = StabilityMonitor(structure, config.stability_interval, config.steps, directory, config.stability)
        monitor.start(simulation)
        simulation.reporters.append(monitor)
    simulation.reporters.extend(config.reporters)
    progress = None
    start_step = simulation.currentStep
    if config.progress:
        progress = ProgressReporter(max(config.log_interval, 1), config.steps, start_step, system)
        simulation.reporters.append(progress)

    def save_checkpoint() -> None:
        records = {name: reporter.checkpoint_record() for name, reporter in outputs.items()}
        write_checkpoint(directory / CHECKPOINT, simulation, identity, records, extra={"seed": seed})

    wall_start = time.perf_counter()
    stability = None
    try:
        while simulation.currentStep < config.steps:
            current = simulation.currentStep
            target = min(config.steps, (current // config.checkpoint_interval + 1) * config.checkpoint_interval)
            simulation.step(target - current)
            save_checkpoint()
        if monitor is not None and monitor.result().last_good_step != simulation.currentStep:
            monitor.report(
                simulation, simulation.context.getState(getPositions=True, getVelocities=True, getEnergy=True)
            )
        if monitor is not None:
            stability = monitor.result()
    except SimulationUnstable as unstable:
        stability = unstable.result
        logger.error("%s; last good state written to %s", unstable, directory / "last_good_state.xml")
    except mm.OpenMMException as error:
        if monitor is None or "nan" not in str(error).lower():
            raise
        try:
            monitor.fail(simulation.currentStep, f"OpenMM stopped: {error}")
        except SimulationUnstable as unstable:
            stability = unstable.result
            logger.error("%s; last good state written to %s", unstable, directory / "last_good_state.xml")
    finally:
        for reporter in list(outputs.values()):
            reporter.close()
        if progress is not None:
            progress.close()
    wall = time.perf_counter() - wall_start

    final_step = simulation.currentStep
    if stability is None or stability.stable:
        state = simulation.context.getState(getPositions=True, getVelocities=True, getParameters=True)
        (directory / FINAL_STATE).write_text(mm.XmlSerializer.serialize(state))
        with open(directory / FINAL_PDB, "w") as handle:
            app.PDBFile.writeFile(simulation.topology, state.getPositions(), handle, keepIds=True)
    if stability is not None:
        write_stability_report(directory / STABILITY, stability)
    steps_run = final_step - start_step
    ns_per_day = steps_run * settings.timestep_fs * 1e-6 / (wall / 86400.0) if wall > 0 and steps_run > 0 else 0.0
    result = RunResult(
        output_dir=directory,
        steps_requested=config.steps,
        start_step=start_step,
        final_step=final_step,
        resumed_from_step=checkpoint.step if resuming else None,
        seed=seed,
        platform=simulation.context.getPlatform().getName(),
        wall_seconds=wall,
        ns_per_day=ns_per_day,
        stability=stability,
        exact_resume=exact,
    )
    info = result.to_dict()
    info.update(identity=identity, settings=_jsonable(asdict(settings)), host=host_platform.node(),
                openmm_version=mm.__version__, timestep_fs=settings.timestep_fs)
    (directory / RUN_INFO).write_text(json.dumps(info, indent=2, default=str) + "\n")
    return result
