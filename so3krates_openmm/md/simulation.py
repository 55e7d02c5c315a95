"""Building an OpenMM ``Simulation`` for a structure and a model (or any ``System``).

The pieces a protocol needs, each overridable: the integrator for the ensemble
(``LangevinMiddleIntegrator`` for NVT, ``VerletIntegrator`` for NVE), the
platform and thread counts, seeds for the integrator and the initial
velocities, and an optional local energy minimisation.
"""

from __future__ import annotations

import logging
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openmm as mm
from openmm import app, unit

from so3krates_openmm.data.structures import Structure
from so3krates_openmm.md.minimize import AS_GIVEN, MinimizationError, Minimizer
from so3krates_openmm.md.platforms import get_platform
from so3krates_openmm.openmm_force import positions_nm
from so3krates_openmm.units import ANGSTROM_PER_NM

logger = logging.getLogger(__name__)

#: Largest seed OpenMM accepts (a C ``int``); 0 would mean "pick one at random".
MAX_SEED = 2**31 - 1
ENSEMBLES = ("nvt", "nve")


def resolve_seed(seed: int | None) -> int:
    """Return ``seed`` checked, or a fresh random seed when it is ``None``.

    The seed drives both the integrator's random stream and the initial
    velocities; it is always recorded with the run so that any run can be repeated.
    """
    if seed is None:
        return 1 + secrets.randbelow(MAX_SEED - 1)
    seed = int(seed)
    if not 1 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be between 1 and {MAX_SEED}, got {seed} (OpenMM treats 0 as 'random')")
    return seed


def make_integrator(
    ensemble: str = "nvt",
    *,
    temperature_K: float = 300.0,
    friction_per_ps: float = 1.0,
    timestep_fs: float = 0.5,
    seed: int = 1,
) -> mm.Integrator:
    """Integrator for an ensemble: ``nvt`` -> LangevinMiddleIntegrator, ``nve`` -> VerletIntegrator.

    Args:
        temperature_K: bath temperature in K (NVT only).
        friction_per_ps: Langevin friction coefficient in 1/ps (NVT only).
        timestep_fs: time step in fs.
        seed: random number seed of the Langevin integrator.
    """
    if timestep_fs <= 0:
        raise ValueError(f"timestep_fs must be positive, got {timestep_fs}")
    timestep = timestep_fs * unit.femtoseconds
    ensemble = ensemble.lower()
    if ensemble == "nvt":
        if temperature_K <= 0:
            raise ValueError(f"temperature_K must be positive, got {temperature_K}")
        if friction_per_ps < 0:
            raise ValueError(f"friction_per_ps must not be negative, got {friction_per_ps}")
        integrator = mm.LangevinMiddleIntegrator(
            temperature_K * unit.kelvin, friction_per_ps / unit.picosecond, timestep
        )
        integrator.setRandomNumberSeed(resolve_seed(seed))
        return integrator
    if ensemble == "nve":
        return mm.VerletIntegrator(timestep)
    raise ValueError(f"unknown ensemble {ensemble!r}; choose one of {ENSEMBLES}")


def model_system(
    structure: Structure,
    model_path: str | Path,
    *,
    cuda_graphs: bool = False,
    backend: str = "torchforce",
    kernels: str | None = None,
) -> mm.System:
    """OpenMM ``System`` for ``structure`` from a model file.

    ``model_path`` is either an exported SO3krates model (``.pt``) or a
    checkpoint, run through ``backend`` (``"torchforce"`` or ``"pythonforce"``)
    and scripted as the kind of module ``kernels`` names (checkpoints; ``None``:
    the ``.pt``'s own kind, ``"reference"`` for a checkpoint; see
    :func:`so3krates_openmm.openmm_force.create_system`), or a serialised OpenMM ``System``
    (``.xml``, e.g. a classical force field to compare against or to test a
    protocol with), whose particle count must match the structure.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"model file {str(model_path)!r} does not exist")
    if model_path.suffix.lower() == ".xml":
        if kernels is not None:
            raise ValueError(f"kernels ({kernels!r}) choose how an SO3krates model is run; {model_path} is a "
                             "serialised OpenMM System: leave kernels unset")
        try:
            system = mm.XmlSerializer.deserialize(model_path.read_text())
        except Exception as error:  # OpenMM raises a plain Exception for bad XML
            raise ValueError(f"{model_path} is not a serialised OpenMM System: {error}") from error
        if not isinstance(system, mm.System):
            raise ValueError(f"{model_path} holds a serialised {type(system).__name__}, not a System")
        if system.getNumParticles() != structure.n_atoms:
            raise ValueError(
                f"{model_path} has {system.getNumParticles()} particles but {structure.source} has "
                f"{structure.n_atoms} atoms"
            )
        return system
    from so3krates_openmm.openmm_force import create_system

    return create_system(structure, model_path, use_cuda_graphs=cuda_graphs, backend=backend, kernels=kernels)


@dataclass
class SimulationSettings:
    """Everything needed to set up a simulation besides the System itself.

    Attributes:
        ensemble: ``nvt`` (Langevin) or ``nve`` (velocity Verlet).
        temperature_K: bath temperature (NVT) and initial velocity temperature, K.
        friction_per_ps: Langevin friction, 1/ps.
        timestep_fs: time step, fs.
        platform: OpenMM platform name.
        threads: CPU threads for OpenMM and PyTorch (``None``: all available cores).
        precision: GPU precision (``single``, ``mixed``, ``double``).
        seed: integrator and velocity seed (``None``: drawn at random and recorded).
        minimize: run a local energy minimisation before assigning velocities.
        minimize_tolerance_kj_mol_nm: minimiser convergence, kJ/mol/nm.
        minimize_max_iterations: 0 means until converged.
    """

    ensemble: str = "nvt"
    temperature_K: float = 300.0
    friction_per_ps: float = 1.0
    timestep_fs: float = 0.5
    platform: str = "CPU"
    threads: int | None = None
    precision: str = "mixed"
    seed: int | None = None
    minimize: bool = False
    minimize_tolerance_kj_mol_nm: float = 10.0
    minimize_max_iterations: int = 0
    hydrogen_mass_amu: float | None = None


def repartition_hydrogen_mass(system: mm.System, bonds: np.ndarray, hydrogen_mass_amu: float) -> int:
    """Hydrogen mass repartitioning, as ``ForceField.createSystem(hydrogenMass=...)`` does, in place.

    Every hydrogen bonded to a heavier atom gets ``hydrogen_mass_amu``; the mass it gains is taken from
    its bonded partner, so the total mass (and the configurational distribution) stays the same while the
    fastest vibrations slow down and a longer time step becomes stable. The dynamics change (spectra and
    kinetics from such runs are not those of the real masses). Returns the number of hydrogens changed.

    Args:
        system: the System whose particle masses are changed.
        bonds: (M, 2) bonded atom pairs (e.g. :func:`~so3krates_openmm.md.stability.covalent_bonds`).
        hydrogen_mass_amu: the new hydrogen mass in amu (Da), e.g. 3 or 4.
    """
    if not hydrogen_mass_amu > 0:
        raise ValueError(f"hydrogen mass must be positive, got {hydrogen_mass_amu} amu")
    masses = [system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles())]
    changed = 0
    for i, j in np.asarray(bonds, dtype=np.int64).reshape(-1, 2):
        for hydrogen, partner in ((i, j), (j, i)):
            if 0.5 < masses[hydrogen] < 1.5 and masses[partner] > 1.5:  # a hydrogen (any isotope below 1.5 Da)
                transfer = hydrogen_mass_amu - masses[hydrogen]
                if masses[partner] - transfer < 1.0:
                    raise ValueError(
                        f"repartitioning to {hydrogen_mass_amu} amu leaves atom {partner} with "
                        f"{masses[partner] - transfer:.2f} amu: choose a smaller hydrogen mass")
                system.setParticleMass(int(hydrogen), hydrogen_mass_amu * unit.dalton)
                system.setParticleMass(int(partner), (masses[partner] - transfer) * unit.dalton)
                masses[partner] -= transfer
                masses[hydrogen] = hydrogen_mass_amu
                changed += 1
    return changed


def build_simulation(
    structure: Structure,
    system: mm.System,
    settings: SimulationSettings,
    *,
    set_velocities: bool = True,
) -> app.Simulation:
    """Create a ``Simulation`` for ``structure`` and ``system`` as ``settings`` say.

    With ``settings.hydrogen_mass_amu`` the System's hydrogen masses are repartitioned
    first (:func:`repartition_hydrogen_mass`, in place; bonds of the structure).
    Positions come from the structure (Å -> nm), the periodic box too when the
    structure has one. With ``set_velocities`` the velocities are drawn from the
    Maxwell-Boltzmann distribution at ``settings.temperature_K`` with the
    settings' seed (after minimisation, when requested). ``settings.seed`` is
    replaced by the seed actually used.
    """
    if system.getNumParticles() != structure.n_atoms:
        raise ValueError(
            f"the System has {system.getNumParticles()} particles but {structure.source} "
            f"has {structure.n_atoms} atoms"
        )
    if settings.hydrogen_mass_amu is not None:
        from so3krates_openmm.md.stability import covalent_bonds

        repartition_hydrogen_mass(system, covalent_bonds(structure)[0], settings.hydrogen_mass_amu)
    settings.seed = resolve_seed(settings.seed)
    platform, properties = get_platform(settings.platform, threads=settings.threads, precision=settings.precision)
    integrator = make_integrator(
        settings.ensemble,
        temperature_K=settings.temperature_K,
        friction_per_ps=settings.friction_per_ps,
        timestep_fs=settings.timestep_fs,
        seed=settings.seed,
    )
    simulation = app.Simulation(structure.openmm_topology(), system, integrator, platform, properties)
    if structure.box_angstrom is not None:
        simulation.context.setPeriodicBoxVectors(*(np.asarray(structure.box_angstrom) / ANGSTROM_PER_NM))
    simulation.context.setPositions(positions_nm(structure))
    if settings.minimize:
        minimize_from_start(simulation, structure, settings)
    if set_velocities:
        simulation.context.setVelocitiesToTemperature(settings.temperature_K * unit.kelvin, settings.seed)
    return simulation


def minimize_from_start(simulation: app.Simulation, structure: Structure, settings: SimulationSettings) -> None:
    """OpenMM's L-BFGS minimisation of the starting structure, or the unminimised start with a warning.

    The minimiser's first trial step moves atoms far (an ångström or more) outside the
    configurations a model was trained on, where a float32 model's energy can overflow;
    :class:`~so3krates_openmm.md.minimize.Minimizer` then repeats the minimisation with a
    float64 copy of the model. Should that fail too (a System with no float32
    ``TorchForce``), the run continues from the starting positions and says so (pass
    ``--no-minimize`` to skip the attempt).
    """
    minimizer = Minimizer(simulation.context, settings.minimize_tolerance_kj_mol_nm, settings.minimize_max_iterations)
    try:
        how = minimizer()
        if how != AS_GIVEN:
            logger.info("OpenMM's L-BFGS alone failed on this model; minimised with: %s", how)
    except (mm.OpenMMException, MinimizationError) as error:
        if isinstance(error, mm.OpenMMException) and "NaN" not in str(error):
            raise
        warnings.warn(
            f"energy minimisation failed ({error}); continuing from the unminimised starting structure. "
            "Relax the structure with the reference method, or pass --no-minimize to skip minimisation.",
            RuntimeWarning,
            stacklevel=2,
        )
        simulation.context.setPositions(positions_nm(structure))


def potential_energy_kj_mol(simulation: app.Simulation) -> float:
    """Current potential energy of a simulation in kJ/mol."""
    state = simulation.context.getState(getEnergy=True)
    return state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
