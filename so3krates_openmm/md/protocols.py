"""The MD protocols' options as typed dataclasses (keys, types, defaults, units, help).

Each protocol of ``md_protocols/`` has one options class here (for example
:class:`LangevinNVTOptions`), assembled from groups shared by the protocols
(structure and model, dynamics, output, stability monitor, trajectory input).
The recipes in :mod:`so3krates_openmm.md.recipes` take these objects; the
command-line layer (:mod:`so3krates_openmm.cli`) turns every field into a flag
(``timestep_fs`` -> ``--timestep-fs``) and a key of a YAML protocol file
(``--protocol FILE``), with ``help`` and ``minimum`` from the field metadata.
Input files (``input_file``) must exist; in a protocol file a relative path is
relative to that file.

From Python::

    from so3krates_openmm.md.protocols import LangevinNVTOptions
    from so3krates_openmm.md.recipes import run_langevin_nvt
    run_langevin_nvt(LangevinNVTOptions(system="ac_ala3_nhme", steps=2000, output=Path("runs/nvt")))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from so3krates_openmm.options import option

PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"
PRETRAINED_SYSTEMS = ("ac_ala3_nhme", "buckyball_catcher")
PretrainedSystem = Literal["ac_ala3_nhme", "buckyball_catcher"]
Platform = Literal["Reference", "CPU", "CUDA", "OpenCL", "HIP"]
Precision = Literal["single", "mixed", "double"]


class ProtocolError(ValueError):
    """Options of a protocol that cannot be used together (the message says what to change)."""


@dataclass
class SystemOptions:
    """Structure, model and platform."""

    system: PretrainedSystem | None = option(
        "ac_ala3_nhme", "shipped showcase system whose structure.pdb and model.pt are used when "
        "--structure/--model are not given")
    structure: Path | None = option(
        None, "starting structure (PDB keeps residues and bonds; XYZ and other ASE formats work)", input_file=True)
    model: Path | None = option(
        None, "exported TorchScript model (.pt) for this structure (so3krates-export), a checkpoint (exported in "
        "memory), or a serialised OpenMM System (.xml) to run the protocol with another force field", input_file=True)
    platform: Platform = option("CPU", "OpenMM platform")
    threads: int | None = option(None, "CPU threads for OpenMM and PyTorch (default: all cores available)",
                                    minimum=1)
    precision: Precision = option("mixed", "precision on GPU platforms")
    cuda_graphs: bool = option(False, "capture the model in CUDA graphs (CUDA platform; model exported with "
                                      "--static-pairs)")
    backend: Literal["torchforce", "pythonforce"] = option(
        "torchforce", "how OpenMM runs the model: openmm-torch's TorchForce (C++) or openmm.PythonForce (the model "
        "called from Python; with a checkpoint as --model, the eager model)")
    kernels: Literal["reference", "analytic", "fused"] | None = option(
        None, "kind of TorchScript module a checkpoint given as --model is run as (so3krates-export --kernels): "
        "reference (readable model, forces by autograd), analytic (hand-derived forces) or fused (C++/OpenMP pair "
        "kernels, ~1.8x faster on the CPU); default: reference for a checkpoint, an exported .pt's own kind "
        "(another kind than the .pt's is an error)")
    seed: int | None = option(None, "seed of the integrator and the initial velocities (default: random, "
                                       "recorded in run.json)", minimum=1)

    def system_files(self, *, need_model: bool = True) -> tuple[Path, Path | None]:
        """``(structure, model)``: the given files, else those of the shipped ``system``; checked to exist."""
        shipped = pretrained_files(self.system) if self.system else {}
        files = {}
        for key in ("structure", "model") if need_model else ("structure",):
            path = getattr(self, key)
            if path is None:
                if not shipped:
                    raise ProtocolError(f"no {key} given: pass --{key} FILE or choose a pretrained --system")
                path = shipped[key]
                if not path.is_file():
                    raise ProtocolError(
                        f"the shipped {key} of {self.system!r} is not present ({path}); pass --{key} FILE"
                    )
            elif not Path(path).is_file():
                raise ProtocolError(f"{key} file {str(path)!r} does not exist (key {key!r})")
            files[key] = Path(path)
        return files["structure"], files.get("model")


@dataclass
class DynamicsOptions:
    """Integrator and run length (``steps`` or ``ns``)."""

    #: Run length when neither ``steps`` nor ``ns`` is given.
    default_steps: ClassVar[int] = 10_000

    temperature: float = option(300.0, "temperature in K (bath, and initial velocities)", minimum=0.0)
    timestep_fs: float = option(0.5, "time step in fs", minimum=0.0)
    steps: int | None = option(None, "number of MD steps (or give --ns; default: the protocol's run length)",
                                  minimum=0)
    ns: float | None = option(None, "run length in ns (instead of --steps)", minimum=0.0)
    minimize: bool = option(True, "minimise the starting structure before assigning velocities")
    hydrogen_mass: float | None = option(
        None, "hydrogen mass repartitioning: hydrogens get this mass in amu (e.g. 3), taken from their bonded "
        "partner (as ForceField.createSystem(hydrogenMass=...)); allows longer time steps, keeps the "
        "configurational distribution, changes the dynamics (not for spectra)", minimum=0.0)

    @property
    def n_steps(self) -> int:
        """Number of MD steps: from ``steps``, or ``ns`` and ``timestep_fs``, or the protocol's default."""
        if self.steps is not None and self.ns is not None:
            raise ProtocolError(f"give either steps ({self.steps}) or ns ({self.ns}), not both")
        if self.ns is not None:
            return round(self.ns * 1e6 / self.timestep_fs)
        return int(self.steps) if self.steps is not None else self.default_steps


@dataclass
class LangevinOptions:
    """The Langevin bath's friction."""

    friction: float = option(1.0, "Langevin friction coefficient in 1/ps", minimum=0.0)


@dataclass
class NVEEquilibrationOptions:
    """Where an NVE run starts: a Langevin equilibration (friction 1/ps), from a given state or the structure."""

    equilibration_steps: int = option(1000, "Langevin NVT steps (friction 1/ps) before the NVE run", minimum=0)
    initial_state: Path | None = option(
        None, "start from this OpenMM state XML (positions and velocities, e.g. final_state.xml of a Langevin run) "
        "instead of the minimised structure with fresh velocities; the equilibration, if any, starts from it",
        input_file=True)


@dataclass
class OutputOptions:
    """Output directory, report intervals, checkpoints and resume."""

    output: Path = option(Path("runs/md"), "output directory (relative to the working directory)")
    log_interval: int = option(100, "CSV log interval in steps", minimum=1)
    trajectory_interval: int = option(100, "DCD frame interval in steps", minimum=1)
    checkpoint_interval: int = option(10_000, "checkpoint interval in steps", minimum=1)
    resume: bool = option(False, "continue the run in --output from its last checkpoint")
    overwrite: bool = option(False, "replace a previous run in --output")
    progress: bool = option(True, "progress bar with ETA on stderr")


@dataclass
class StabilityOptions:
    """The stability monitor."""

    stability_check: bool = option(True, "stop when bonds break, atoms collide or the energy is NaN")
    stability_interval: int = option(100, "steps between stability checks", minimum=1)
    bond_stretch_factor: float = option(1.5, "a bond breaks when longer than this times its starting length",
                                        minimum=1.0)
    collision_factor: float = option(0.5, "non-bonded atoms collide when closer than this times the sum of their "
                                          "covalent radii", minimum=0.0)


@dataclass
class TrajectoryInputOptions:
    """Analyse an existing trajectory instead of running MD."""

    dcd: Path | None = option(None, "analyse this existing DCD (atoms in the order of --structure) instead of "
                                       "running MD", input_file=True)
    skip_ps: float = option(0.0, "discard this much of the start of the trajectory as equilibration, ps", minimum=0.0)


# Field order in --help and in files follows the MRO from the last base to the first.
@dataclass
class LangevinNVTOptions(StabilityOptions, OutputOptions, LangevinOptions, DynamicsOptions, SystemOptions):
    """Langevin NVT production (LangevinMiddleIntegrator) with checkpoints, --resume and the stability monitor."""

    name: ClassVar[str] = "langevin_nvt"
    output: Path = option(Path("runs/langevin_nvt"), "output directory (relative to the working directory)")
    velocity_interval: int = option(0, "write velocities every N steps (0: none)", minimum=0)
    segment_ps: float | None = option(
        None, "write the run as closed segments of this many ps (segment_0000/, segment_0001/, ...: each a complete "
        "run folder; segment k starts from the final state of segment k-1 with seed + k): a closed segment never "
        "changes, so long runs can be copied or committed as they progress; --resume continues in the open "
        "segment", minimum=0.0)
    max_segments: int | None = option(
        None, "with --segment-ps: close at most this many new segments in this call, then stop (a session's share "
        "of a long run; --resume continues)", minimum=1)


@dataclass
class NVEOptions(StabilityOptions, OutputOptions, NVEEquilibrationOptions, DynamicsOptions, SystemOptions):
    """NVE energy conservation: velocity Verlet after a Langevin equilibration; drift per ns per atom and its plot."""

    name: ClassVar[str] = "nve"
    output: Path = option(Path("runs/nve"), "output directory (relative to the working directory)")
    log_interval: int = option(10, "CSV log interval in steps", minimum=1)
    log: Path | None = option(None, "analyse this existing CSV log (log.csv of an NVE run) instead of running MD",
                                 input_file=True)


@dataclass
class SpectrumOptions(StabilityOptions, OutputOptions, TrajectoryInputOptions, NVEEquilibrationOptions,
                      DynamicsOptions, SystemOptions):
    """Vibrational power spectrum from the velocity autocorrelation function of an NVE run (paper Fig. 1b)."""

    name: ClassVar[str] = "spectrum"
    default_steps: ClassVar[int] = 20_000
    output: Path = option(Path("runs/spectrum"), "output directory (relative to the working directory)")
    velocity_interval: int = option(2, "steps between velocity samples (the spectrum reaches 1/(2 dt) in cm^-1)",
                                    minimum=1)
    max_lag_ps: float = option(1.0, "longest VACF lag in ps (sets the resolution, 1/(2 max_lag))", minimum=0.0)
    max_wavenumber: float = option(4000.0, "upper end of the plotted spectrum, cm^-1", minimum=0.0)
    mass_weighted: bool = option(True, "weight each atom's VACF by its mass")
    velocities: Path | None = option(None, "analyse this existing velocity file (velocities.vel) instead of "
                                              "running MD", input_file=True)


@dataclass
class CatcherDistanceOptions(StabilityOptions, OutputOptions, TrajectoryInputOptions, LangevinOptions,
                             DynamicsOptions, SystemOptions):
    """Buckyball catcher: distance between the C60 centre and the catcher's centre over a Langevin run."""

    name: ClassVar[str] = "catcher_distance"
    system: PretrainedSystem | None = option(
        "buckyball_catcher", "shipped showcase system whose structure.pdb and model.pt are used when "
        "--structure/--model are not given")
    output: Path = option(Path("runs/catcher_distance"), "output directory (relative to the working directory)")
    ball_residue: str | None = option(None, "residue name of the C60 (default: the 60-carbon component of the "
                                               "bond graph)")


@dataclass
class RamachandranOptions(StabilityOptions, OutputOptions, TrajectoryInputOptions, LangevinOptions, DynamicsOptions,
                          SystemOptions):
    """Ac-Ala3-NHMe: Ramachandran (phi, psi) plot of the three alanines over a Langevin run."""

    name: ClassVar[str] = "ramachandran"
    output: Path = option(Path("runs/ramachandran"), "output directory (relative to the working directory)")
    residue_name: str = option("ALA", "residues to plot (those with both phi and psi)")


@dataclass
class MinimaOptions(StabilityOptions, OutputOptions, TrajectoryInputOptions, LangevinOptions, DynamicsOptions,
                    SystemOptions):
    """Minima exploration: Langevin MD at raised temperature, snapshots minimised as Dask tasks (a local cluster
    or --scheduler), duplicates removed by heavy-atom RMSD."""

    name: ClassVar[str] = "minima"
    default_steps: ClassVar[int] = 20_000
    temperature: float = option(500.0, "temperature in K (bath, and initial velocities)", minimum=0.0)
    output: Path = option(Path("runs/minima"), "output directory (relative to the working directory)")
    snapshot_interval: int = option(200, "steps between snapshots to minimise (with --dcd: a multiple of its frame "
                                         "interval)", minimum=1)
    workers: int = option(2, "worker processes of the local Dask cluster (each one thread)", minimum=1)
    scheduler: str | None = option(None, "address of a Dask scheduler (e.g. tcp://10.0.0.5:8786) whose workers "
                                         "minimise the snapshots instead of a local cluster (they must see the "
                                         "structure and model at the same paths)")
    rmsd_threshold: float = option(0.1, "heavy-atom RMSD below which two minima are the same, Å", minimum=0.0)
    minimize_tolerance: float = option(1.0, "minimiser convergence: root-mean-square force component, kJ/mol/nm",
                                       minimum=0.0)
    max_iterations: int = option(0, "minimiser iteration limit per snapshot (0: until converged)", minimum=0)


@dataclass
class MLMMSolvatedOptions(StabilityOptions, OutputOptions, LangevinOptions, DynamicsOptions, SystemOptions):
    """ML/MM: the molecule modelled by SO3krates (openmm-ml createMixedSystem, mechanical embedding) in a periodic
    TIP3P water box modelled by amber14 with PME; Langevin NVT."""

    name: ClassVar[str] = "mlmm_solvated"
    default_steps: ClassVar[int] = 2_000
    output: Path = option(Path("runs/mlmm_solvated"), "output directory (relative to the working directory)")
    checkpoint: Path | None = option(None, "SO3krates checkpoint for the molecule (default: the shipped system's "
                                              "best_checkpoint.pt); openmm-ml exports it for the solvated topology",
                                        input_file=True)
    padding_nm: float = option(1.0, "water padding around the molecule, nm", minimum=0.5)
    ml_precision: Literal["single", "double"] = option("single", "precision of the ML part")


#: Every protocol's options class by protocol name.
PROTOCOLS: dict[str, type] = {
    cls.name: cls
    for cls in (LangevinNVTOptions, NVEOptions, SpectrumOptions, CatcherDistanceOptions, RamachandranOptions,
                MinimaOptions, MLMMSolvatedOptions)
}


def pretrained_files(system: str) -> dict[str, Path]:
    """Paths of a shipped showcase system: ``structure`` (structure.pdb) and ``model`` (model.pt)."""
    if system not in PRETRAINED_SYSTEMS:
        raise ProtocolError(f"unknown pretrained system {system!r}; choose one of {', '.join(PRETRAINED_SYSTEMS)}")
    directory = PRETRAINED_DIR / system
    return {"structure": directory / "structure.pdb", "model": directory / "model.pt"}


def write_resolved_protocol(options: Any, path: Path, *, seed: int | None, source: str) -> None:
    """Every key's final value as a protocol file for ``--protocol`` (the run length in steps, the seed used,
    input files as absolute paths)."""
    resolved: dict[str, Any] = {"protocol": options.name}
    for item in dataclasses.fields(options):
        value = getattr(options, item.name)
        if item.name in ("resume", "overwrite", "ns", "max_segments"):
            continue
        if item.name == "steps":
            value = options.n_steps
        if item.name == "seed" and value is None:
            value = seed
        if isinstance(value, Path):
            value = str(value.resolve() if item.metadata.get("input_file") else value)
        if value is not None:
            resolved[item.name] = value
    path.write_text(f"# values used ({source})\n" + yaml.safe_dump(resolved, sort_keys=False))
