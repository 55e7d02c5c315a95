"""The schema of every protocol in ``md_protocols/`` (keys, types, defaults, units)."""

from __future__ import annotations

from pathlib import Path

from so3krates_openmm.md.platforms import GPU_PRECISIONS, KNOWN_PLATFORMS
from so3krates_openmm.md.protocols import PRETRAINED_SYSTEMS, Parameter, ProtocolSchema

P = Parameter


def system_parameters(default_system: str) -> list[Parameter]:
    """Structure, model and platform keys shared by all protocols."""
    return [
        P("system", str, default_system, "shipped showcase system whose structure.pdb and model.pt are used "
          "when --structure/--model are not given", choices=PRETRAINED_SYSTEMS),
        P("structure", Path, None, "starting structure (PDB keeps residues and bonds; XYZ and other ASE formats work)", metavar="FILE"),
        P("model", Path, None, "exported TorchScript model (.pt) for this structure (so3krates-export), a checkpoint "
          "(exported in memory), or a serialised OpenMM System (.xml) to run the protocol with another force field",
          metavar="MODEL.pt"),
        P("platform", str, "CPU", "OpenMM platform", choices=KNOWN_PLATFORMS),
        P("threads", int, None, "CPU threads for OpenMM and PyTorch (default: all cores available)", minimum=1, metavar="N"),
        P("precision", str, "mixed", "precision on GPU platforms", choices=GPU_PRECISIONS),
        P("cuda_graphs", bool, False, "capture the model in CUDA graphs (CUDA platform; model exported with --static-pairs)"),
        P("backend", str, "torchforce", "how OpenMM runs the model: openmm-torch's TorchForce (C++) or openmm.PythonForce "
          "(the model called from Python; with a checkpoint as --model, the eager model)", choices=("torchforce", "pythonforce")),
        P("seed", int, None, "seed of the integrator and the initial velocities (default: random, recorded in run.json)", minimum=1, metavar="N"),
    ]


def dynamics_parameters(*, temperature_K: float = 300.0, steps: int | None = 10_000, friction: bool = True) -> list[Parameter]:
    """Integrator and run-length keys."""
    parameters = [
        P("temperature", float, temperature_K, "temperature in K (bath, and initial velocities)", minimum=0.0, metavar="K"),
        P("timestep_fs", float, 0.5, "time step in fs", minimum=0.0, metavar="FS"),
        P("steps", int, steps, "number of MD steps (or give --ns)", minimum=0, metavar="N"),
        P("ns", float, None, "run length in ns (instead of --steps)", minimum=0.0, metavar="NS"),
        P("minimize", bool, True, "minimise the starting structure before assigning velocities"),
    ]
    if friction:
        parameters.insert(1, P("friction", float, 1.0, "Langevin friction coefficient in 1/ps", minimum=0.0, metavar="PER_PS"))
    return parameters


def output_parameters(output: str, *, log_interval: int = 100, trajectory_interval: int = 100,
                      checkpoint_interval: int = 10_000) -> list[Parameter]:
    """Output directory, report intervals, checkpoints and resume."""
    return [
        P("output", Path, Path(output), "output directory (relative to the working directory)", input_file=False, metavar="DIR"),
        P("log_interval", int, log_interval, "CSV log interval in steps", minimum=1),
        P("trajectory_interval", int, trajectory_interval, "DCD frame interval in steps", minimum=1),
        P("checkpoint_interval", int, checkpoint_interval, "checkpoint interval in steps", minimum=1),
        P("resume", bool, False, "continue the run in --output from its last checkpoint"),
        P("overwrite", bool, False, "replace a previous run in --output"),
        P("progress", bool, True, "progress bar with ETA on stderr"),
    ]


def stability_parameters() -> list[Parameter]:
    """Stability monitor keys."""
    return [
        P("stability_check", bool, True, "stop when bonds break, atoms collide or the energy is NaN"),
        P("stability_interval", int, 100, "steps between stability checks", minimum=1),
        P("bond_stretch_factor", float, 1.5, "a bond breaks when longer than this times its starting length", minimum=1.0),
        P("collision_factor", float, 0.5, "non-bonded atoms collide when closer than this times the sum of "
          "their covalent radii", minimum=0.0),
    ]


def trajectory_input_parameters() -> list[Parameter]:
    """Analyse an existing trajectory instead of running MD."""
    return [
        P("dcd", Path, None, "analyse this existing DCD (atoms in the order of --structure) instead of running MD",
          must_exist=True, metavar="FILE.dcd"),
        P("skip_ps", float, 0.0, "discard this much of the start of the trajectory as equilibration, ps", minimum=0.0),
    ]


LANGEVIN_NVT = ProtocolSchema(
    "langevin_nvt",
    "Langevin NVT production (LangevinMiddleIntegrator) with checkpoints, --resume and the stability monitor.",
    system_parameters("ac_ala3_nhme")
    + dynamics_parameters()
    + output_parameters("runs/langevin_nvt")
    + [P("velocity_interval", int, 0, "write velocities every N steps (0: none)", minimum=0)]
    + stability_parameters(),
)

NVE = ProtocolSchema(
    "nve",
    "NVE energy conservation: velocity Verlet after a Langevin equilibration; drift per ns per atom and its plot.",
    system_parameters("ac_ala3_nhme")
    + dynamics_parameters(steps=10_000, friction=False)
    + [P("equilibration_steps", int, 1000, "Langevin NVT steps (friction 1/ps) before the NVE run", minimum=0)]
    + output_parameters("runs/nve", log_interval=10)
    + stability_parameters()
    + [P("log", Path, None, "analyse this existing CSV log (log.csv of an NVE run) instead of running MD", must_exist=True)],
)

SPECTRUM = ProtocolSchema(
    "spectrum",
    "Vibrational power spectrum from the velocity autocorrelation function of an NVE run (paper Fig. 1b).",
    system_parameters("ac_ala3_nhme")
    + dynamics_parameters(steps=20_000, friction=False)
    + [
        P("equilibration_steps", int, 1000, "Langevin NVT steps (friction 1/ps) before the NVE run", minimum=0),
        P("velocity_interval", int, 2, "steps between velocity samples (the spectrum reaches 1/(2 dt) in cm^-1)", minimum=1),
        P("max_lag_ps", float, 1.0, "longest VACF lag in ps (sets the resolution, 1/(2 max_lag))", minimum=0.0),
        P("max_wavenumber", float, 4000.0, "upper end of the plotted spectrum, cm^-1", minimum=0.0),
        P("mass_weighted", bool, True, "weight each atom's VACF by its mass"),
        P("velocities", Path, None, "analyse this existing velocity file (velocities.vel) instead of running MD",
          must_exist=True),
    ]
    + trajectory_input_parameters()
    + output_parameters("runs/spectrum", log_interval=100)
    + stability_parameters(),
)

CATCHER_DISTANCE = ProtocolSchema(
    "catcher_distance",
    "Buckyball catcher: distance between the C60 centre and the catcher's centre over a Langevin run.",
    system_parameters("buckyball_catcher")
    + dynamics_parameters(steps=10_000)
    + [P("ball_residue", str, None, "residue name of the C60 (default: the 60-carbon component of the bond graph)")]
    + trajectory_input_parameters()
    + output_parameters("runs/catcher_distance")
    + stability_parameters(),
)

RAMACHANDRAN = ProtocolSchema(
    "ramachandran",
    "Ac-Ala3-NHMe: Ramachandran (phi, psi) plot of the three alanines over a Langevin run.",
    system_parameters("ac_ala3_nhme")
    + dynamics_parameters(steps=10_000)
    + [P("residue_name", str, "ALA", "residues to plot (those with both phi and psi)")]
    + trajectory_input_parameters()
    + output_parameters("runs/ramachandran")
    + stability_parameters(),
)

MINIMA = ProtocolSchema(
    "minima",
    "Minima exploration: Langevin MD at raised temperature, snapshots minimised in parallel workers, "
    "duplicates removed by heavy-atom RMSD.",
    system_parameters("ac_ala3_nhme")
    + dynamics_parameters(temperature_K=500.0, steps=20_000)
    + [
        P("snapshot_interval", int, 200, "steps between snapshots to minimise (with --dcd: a multiple of its frame interval)",
          minimum=1),
        P("workers", int, 2, "worker processes (each one thread)", minimum=1),
        P("rmsd_threshold", float, 0.1, "heavy-atom RMSD below which two minima are the same, Å", minimum=0.0),
        P("minimize_tolerance", float, 1.0, "minimiser convergence: root-mean-square force component, kJ/mol/nm", minimum=0.0),
        P("max_iterations", int, 0, "minimiser iteration limit per snapshot (0: until converged)", minimum=0),
    ]
    + trajectory_input_parameters()
    + output_parameters("runs/minima")
    + stability_parameters(),
)

MLMM_SOLVATED = ProtocolSchema(
    "mlmm_solvated",
    "ML/MM: the molecule modelled by SO3krates (openmm-ml createMixedSystem, mechanical embedding) in a periodic "
    "TIP3P water box modelled by amber14 with PME; Langevin NVT.",
    system_parameters("ac_ala3_nhme")
    + [
        P("checkpoint", Path, None, "SO3krates checkpoint for the molecule (default: the shipped system's "
          "best_checkpoint.pt); openmm-ml exports it for the solvated topology", metavar="CHECKPOINT"),
        P("padding_nm", float, 1.0, "water padding around the molecule, nm", minimum=0.5),
        P("ml_precision", str, "single", "precision of the ML part", choices=("single", "double")),
    ]
    + dynamics_parameters(steps=2_000)
    + output_parameters("runs/mlmm_solvated")
    + stability_parameters(),
)

SCHEMAS = {
    schema.name: schema
    for schema in (LANGEVIN_NVT, NVE, SPECTRUM, CATCHER_DISTANCE, RAMACHANDRAN, MINIMA, MLMM_SOLVATED)
}
