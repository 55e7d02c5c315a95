"""Stability monitor: stop a run when the molecule falls apart, and say how far it got.

The paper measures a force field's stability as the fraction of the requested
simulation time that passes before the dynamics become unphysical. The
:class:`StabilityMonitor` reporter checks, every ``interval`` steps,

- every covalent bond of the starting topology (the PDB's bonds, or bonds
  guessed from covalent radii when the structure has none): it fails when a
  bond is longer than ``bond_stretch_factor`` times its starting length;
- every pair of atoms that is not bonded: it fails when they come closer than
  ``collision_factor`` times the sum of their covalent radii;
- the potential energy and the positions: they fail when NaN or infinite.

On failure it writes the last state that passed (``last_good_state.xml`` and
``last_good.pdb``), and raises :class:`SimulationUnstable`, which carries a
:class:`StabilityResult`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import openmm as mm
from openmm import app, unit

from so3krates_openmm.data.structures import Structure


@dataclass
class StabilityCriteria:
    """Thresholds of the stability monitor (dimensionless ratios).

    Attributes:
        bond_stretch_factor: a bond fails when longer than this times its starting length.
        collision_factor: a non-bonded pair fails when closer than this times the sum
            of the two covalent radii.
        bond_detection_factor: when the structure has no bonds, atoms closer than this
            times the sum of their covalent radii are taken as bonded.
        new_bond_factor: with ``new_bonds`` (minima), a non-bonded pair closer than this
            times the sum of the two covalent radii is a new bond. 1.3, not 1.2: the peptide
            model's searches left two carbonyl oxygens 1.59 Å apart (1.20x) in minima, while
            no minimum of the model or of GFN2-xTB has a non-bonded pair below 1.56x.
    """

    bond_stretch_factor: float = 1.5
    collision_factor: float = 0.5
    bond_detection_factor: float = 1.2
    new_bond_factor: float = 1.3

    def __post_init__(self) -> None:
        if self.bond_stretch_factor <= 1.0:
            raise ValueError(f"bond_stretch_factor must be larger than 1, got {self.bond_stretch_factor}")
        if not 0.0 < self.collision_factor < 1.0:
            raise ValueError(f"collision_factor must be between 0 and 1, got {self.collision_factor}")
        if self.bond_detection_factor <= 1.0:
            raise ValueError(f"bond_detection_factor must be larger than 1, got {self.bond_detection_factor}")
        if self.new_bond_factor <= 1.0:
            raise ValueError(f"new_bond_factor must be larger than 1, got {self.new_bond_factor}")


@dataclass
class StabilityResult:
    """Outcome of a monitored run.

    ``stable_fraction`` is ``last_good_step / steps_requested``: the part of the
    requested run verified to be stable (1.0 when the run completed).
    """

    stable: bool
    steps_requested: int
    last_good_step: int
    failure_step: int | None
    reason: str
    max_bond_stretch: float
    min_nonbonded_ratio: float
    n_bonds: int
    bond_source: str

    @property
    def stable_fraction(self) -> float:
        if self.stable:
            return 1.0
        return self.last_good_step / self.steps_requested if self.steps_requested else 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["stable_fraction"] = self.stable_fraction
        return data

    def summary(self) -> str:
        """One line for logs."""
        if self.stable:
            return (
                f"stable for all {self.steps_requested} steps (stable fraction 1.0; largest bond stretch "
                f"{self.max_bond_stretch:.3f}x, closest non-bonded pair {self.min_nonbonded_ratio:.3f}x covalent radii)"
            )
        return (
            f"UNSTABLE at step {self.failure_step}: {self.reason}; last good step {self.last_good_step} "
            f"of {self.steps_requested} (stable fraction {self.stable_fraction:.4f})"
        )


class SimulationUnstable(RuntimeError):
    """Raised by the monitor when a check fails; ``result`` holds the :class:`StabilityResult`."""

    def __init__(self, result: StabilityResult):
        super().__init__(result.summary())
        self.result = result


def covalent_radii_angstrom(atomic_numbers: np.ndarray) -> np.ndarray:
    """Covalent radii in Å (ASE's table, Cordero et al. 2008)."""
    from ase.data import covalent_radii

    return np.asarray(covalent_radii)[np.asarray(atomic_numbers)]


def minimum_image(vectors: np.ndarray, box: np.ndarray | None) -> np.ndarray:
    """Minimum-image displacement vectors for a box in OpenMM's reduced (lower-triangular) form."""
    if box is None:
        return vectors
    for axis in (2, 1, 0):
        shift = np.round(vectors[..., axis] / box[axis, axis])
        vectors = vectors - shift[..., None] * box[axis]
    return vectors


def pair_distances(positions: np.ndarray, box: np.ndarray | None = None) -> np.ndarray:
    """All pair distances (N, N) of positions (N, 3), minimum image when a box is given (same unit)."""
    delta = positions[None, :, :] - positions[:, None, :]
    return np.linalg.norm(minimum_image(delta, box), axis=-1)


def covalent_bonds(structure: Structure, bond_detection_factor: float = 1.2) -> tuple[np.ndarray, str]:
    """Bonds (M, 2) of the starting structure and where they came from.

    Uses the PDB topology's bonds (residue templates and CONECT records) when
    there are any; otherwise atoms closer than ``bond_detection_factor`` times
    the sum of their covalent radii in the starting positions.
    """
    topology = structure.topology
    if topology is not None and topology.getNumBonds() > 0:
        bonds = np.array(sorted((min(b[0].index, b[1].index), max(b[0].index, b[1].index)) for b in topology.bonds()))
        return bonds.reshape(-1, 2), "topology"
    radii = covalent_radii_angstrom(structure.atomic_numbers)
    distances = pair_distances(structure.positions_angstrom, structure.box_angstrom)
    limit = bond_detection_factor * (radii[:, None] + radii[None, :])
    i, j = np.nonzero(np.triu(distances < limit, k=1))
    return np.stack([i, j], axis=1).reshape(-1, 2), "covalent radii"


def bond_graph(n_atoms: int, bonds: np.ndarray):
    """The bond graph as a sparse (n_atoms, n_atoms) matrix for ``scipy.sparse.csgraph`` (use ``directed=False``)."""
    from scipy.sparse import coo_matrix

    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    return coo_matrix((np.ones(len(bonds)), (bonds[:, 0], bonds[:, 1])), shape=(n_atoms, n_atoms))


def bond_graph_components(n_atoms: int, bonds: np.ndarray) -> list[np.ndarray]:
    """Connected components (arrays of atom indices, largest first) of the bond graph."""
    from scipy.sparse.csgraph import connected_components

    _, labels = connected_components(bond_graph(n_atoms, bonds), directed=False)
    components = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    return sorted(components, key=len, reverse=True)


class StabilityChecker:
    """The geometric and energetic checks, independent of OpenMM's reporter machinery."""

    def __init__(self, structure: Structure, criteria: StabilityCriteria | None = None):
        criteria = criteria or StabilityCriteria()
        self.criteria = criteria
        self.bonds, self.bond_source = covalent_bonds(structure, criteria.bond_detection_factor)
        self.box = structure.box_angstrom
        start = structure.positions_angstrom
        self.reference_lengths = self._bond_lengths(start)
        radii = covalent_radii_angstrom(structure.atomic_numbers)
        n = structure.n_atoms
        nonbonded = np.triu(np.ones((n, n), dtype=bool), k=1)
        nonbonded[self.bonds[:, 0], self.bonds[:, 1]] = False
        self._pairs = np.nonzero(nonbonded)
        self._radius_sums = radii[self._pairs[0]] + radii[self._pairs[1]]
        self._collision_limits = criteria.collision_factor * self._radius_sums
        self._new_bond_limits = criteria.new_bond_factor * self._radius_sums
        self.symbols = structure.symbols
        self.max_bond_stretch = 1.0
        self.min_nonbonded_ratio = math.inf

    def _bond_lengths(self, positions_angstrom: np.ndarray) -> np.ndarray:
        delta = positions_angstrom[self.bonds[:, 1]] - positions_angstrom[self.bonds[:, 0]]
        return np.linalg.norm(minimum_image(delta, self.box), axis=-1)

    def check(self, positions_angstrom: np.ndarray, potential_energy_kj_mol: float, *,
              new_bonds: bool = False) -> str | None:
        """``None`` when the frame passes, else the reason it fails (names atoms by 0-based index).

        With ``new_bonds``, two non-bonded atoms within covalent-bond distance (``new_bond_factor`` times
        the sum of their covalent radii) fail too: a bond the starting topology does not have, i.e. another
        molecule. Off for MD, which may pass through such a contact; on for minima, where one means the minimum
        is not a conformer of the molecule.
        """
        if not math.isfinite(potential_energy_kj_mol):
            return f"potential energy is {potential_energy_kj_mol}"
        if not np.all(np.isfinite(positions_angstrom)):
            return "positions are NaN or infinite"
        if len(self.bonds):
            stretch = self._bond_lengths(positions_angstrom) / self.reference_lengths
            worst = int(np.argmax(stretch))
            self.max_bond_stretch = max(self.max_bond_stretch, float(stretch[worst]))
            if stretch[worst] > self.criteria.bond_stretch_factor:
                i, j = self.bonds[worst]
                return (
                    f"bond {self.symbols[i]}{i}-{self.symbols[j]}{j} stretched to {stretch[worst]:.2f}x its starting "
                    f"length {self.reference_lengths[worst]:.3f} Å (limit {self.criteria.bond_stretch_factor}x)"
                )
        if len(self._pairs[0]):
            distances = pair_distances(positions_angstrom, self.box)[self._pairs]
            ratio = distances / self._radius_sums
            closest = int(np.argmin(ratio))
            self.min_nonbonded_ratio = min(self.min_nonbonded_ratio, float(ratio[closest]))
            if distances[closest] < self._collision_limits[closest]:
                i, j = self._pairs[0][closest], self._pairs[1][closest]
                return (
                    f"non-bonded atoms {self.symbols[i]}{i} and {self.symbols[j]}{j} collided at "
                    f"{distances[closest]:.3f} Å (limit {self._collision_limits[closest]:.3f} Å)"
                )
            if new_bonds:
                closest = int(np.argmin(distances / self._new_bond_limits))
                if distances[closest] < self._new_bond_limits[closest]:
                    i, j = self._pairs[0][closest], self._pairs[1][closest]
                    return (f"non-bonded atoms {self.symbols[i]}{i} and {self.symbols[j]}{j} at "
                            f"{distances[closest]:.3f} Å, within covalent-bond distance "
                            f"({self._new_bond_limits[closest]:.3f} Å): a new bond")
        return None


class StabilityMonitor:
    """OpenMM reporter that runs :class:`StabilityChecker` every ``interval`` steps.

    Call :meth:`start` before stepping (records the current state as the last
    good one). On failure it writes ``last_good_state.xml`` and ``last_good.pdb``
    to ``output_dir`` and raises :class:`SimulationUnstable`.
    """

    def __init__(
        self,
        structure: Structure,
        interval: int,
        steps_requested: int,
        output_dir: str | Path,
        criteria: StabilityCriteria | None = None,
    ):
        if interval < 1:
            raise ValueError(f"stability check interval must be at least 1 step, got {interval}")
        self.interval = int(interval)
        self.steps_requested = int(steps_requested)
        self.output_dir = Path(output_dir)
        self.checker = StabilityChecker(structure, criteria)
        self.topology = structure.openmm_topology()
        self._last_good: mm.State | None = None
        self._last_good_step = 0
        self._failure: StabilityResult | None = None

    def start(self, simulation: app.Simulation) -> None:
        """Take the simulation's current state as the last good one."""
        self._last_good = simulation.context.getState(getPositions=True, getVelocities=True, getEnergy=True)
        self._last_good_step = simulation.currentStep

    def describeNextReport(self, simulation: app.Simulation) -> dict:
        steps = self.interval - simulation.currentStep % self.interval
        return {"steps": steps, "periodic": False, "include": ["positions", "velocities", "energy"]}

    def report(self, simulation: app.Simulation, state: mm.State) -> None:
        positions = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
        energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        reason = self.checker.check(np.asarray(positions), energy)
        if reason is None:
            self._last_good, self._last_good_step = state, simulation.currentStep
            return
        self.fail(simulation.currentStep, reason)

    def fail(self, step: int, reason: str) -> None:
        """Record a failure at ``step``, write the last good state and raise :class:`SimulationUnstable`."""
        self._failure = self._result(stable=False, failure_step=step, reason=reason)
        self.write_last_good_state()
        raise SimulationUnstable(self._failure)

    def write_last_good_state(self) -> tuple[Path, Path]:
        """Write the last good state as ``last_good_state.xml`` (positions, velocities) and ``last_good.pdb``."""
        if self._last_good is None:
            raise RuntimeError("StabilityMonitor.start() was not called before the run")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        xml_path = self.output_dir / "last_good_state.xml"
        pdb_path = self.output_dir / "last_good.pdb"
        xml_path.write_text(mm.XmlSerializer.serialize(self._last_good))
        with open(pdb_path, "w") as handle:
            app.PDBFile.writeFile(self.topology, self._last_good.getPositions(), handle, keepIds=True)
        return xml_path, pdb_path

    def _result(self, *, stable: bool, failure_step: int | None, reason: str) -> StabilityResult:
        return StabilityResult(
            stable=stable,
            steps_requested=self.steps_requested,
            last_good_step=self._last_good_step,
            failure_step=failure_step,
            reason=reason,
            max_bond_stretch=self.checker.max_bond_stretch,
            min_nonbonded_ratio=self.checker.min_nonbonded_ratio,
            n_bonds=len(self.checker.bonds),
            bond_source=self.checker.bond_source,
        )

    def result(self) -> StabilityResult:
        """The failure if there was one, else a result saying the run so far is stable."""
        if self._failure is not None:
            return self._failure
        return self._result(stable=self._last_good_step >= self.steps_requested, failure_step=None, reason="")


def write_stability_report(path: str | Path, result: StabilityResult) -> None:
    """Write a :class:`StabilityResult` as JSON."""
    Path(path).write_text(json.dumps(result.to_dict(), indent=2) + "\n")


#: Largest deviation of a bond from its equilibrium length (Å) before a run counts as broken (Fu et al. 2023).
FU_BOND_DEVIATION_ANGSTROM = 0.5


def stability_coefficient(
    positions_angstrom: np.ndarray,
    times_ps: np.ndarray,
    total_ps: float,
    bonds: np.ndarray,
    equilibrium_angstrom: np.ndarray,
    *,
    max_deviation_angstrom: float = FU_BOND_DEVIATION_ANGSTROM,
    box_angstrom: np.ndarray | None = None,
) -> float:
    """Stability coefficient of Fu et al. ("Forces are not enough", TMLR 2023) for one trajectory.

    The fraction of the requested simulation time ``total_ps`` completed before
    any bond ``(i, j)`` deviates from its equilibrium length by more than
    ``max_deviation_angstrom``: the time of the last frame before the first
    failing frame, over ``total_ps``; 1.0 when no frame fails and the frames reach
    ``total_ps`` (a run that ended early without a failing frame gets the time of
    its last frame).

    Args:
        positions_angstrom: (T, N, 3) frames in Å, in time order.
        times_ps: (T,) time of each frame in ps.
        total_ps: the requested length of the run, ps.
        bonds: (M, 2) atom indices, e.g. :func:`covalent_bonds` of the starting structure.
        equilibrium_angstrom: (M,) equilibrium lengths, e.g. the starting structure's.
        max_deviation_angstrom: tolerated deviation, Å (0.5 Å as in Fu et al.).
        box_angstrom: periodic box (3, 3) in Å for minimum-image distances, or ``None``.
    """
    positions = np.asarray(positions_angstrom, dtype=np.float64)
    times = np.asarray(times_ps, dtype=np.float64)
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    equilibrium = np.asarray(equilibrium_angstrom, dtype=np.float64)
    if positions.ndim != 3 or positions.shape[2] != 3 or len(times) != len(positions):
        raise ValueError(f"expected (T, N, 3) positions and T times, got {positions.shape} and {times.shape}")
    if len(equilibrium) != len(bonds):
        raise ValueError(f"{len(bonds)} bonds but {len(equilibrium)} equilibrium lengths")
    if total_ps <= 0:
        raise ValueError(f"total_ps must be positive, got {total_ps}")
    if len(times) > 1 and np.any(np.diff(times) <= 0):
        raise ValueError("frame times must increase")
    vectors = minimum_image(positions[:, bonds[:, 1]] - positions[:, bonds[:, 0]], box_angstrom)
    deviation = np.abs(np.linalg.norm(vectors, axis=-1) - equilibrium)  # (T, M)
    failing = np.flatnonzero((deviation > max_deviation_angstrom).any(axis=1))
    if len(failing) == 0:
        completed = times[-1] if len(times) else 0.0
    else:
        completed = times[failing[0] - 1] if failing[0] > 0 else 0.0
    return float(min(max(completed, 0.0) / total_ps, 1.0))
