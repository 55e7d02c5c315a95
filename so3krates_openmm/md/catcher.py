"""Buckyball catcher: distance between the centre of the C60 ball and the centre of its host.

The 60 atoms of the ball are found by residue name when given, else as the
connected component of the covalent bond graph (topology bonds, or bonds from
covalent radii) made of exactly 60 carbon atoms. The host ("catcher") is every
other atom. Centres are unweighted centroids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from so3krates_openmm.data.structures import Structure
from so3krates_openmm.md.plotting import broken_at_gaps, pyplot, save_figure
from so3krates_openmm.md.stability import bond_graph_components, covalent_bonds

C60_SIZE = 60


@dataclass
class CatcherAtoms:
    """Atom indices of the ball and of the host, and how the ball was identified."""

    ball: np.ndarray
    host: np.ndarray
    method: str


def identify_ball(structure: Structure, ball_residue: str | None = None) -> CatcherAtoms:
    """Find the C60 atoms of a buckyball-catcher structure.

    Raises ``ValueError`` when no residue of that name, or no 60-carbon
    component, exists (the message says what was found instead).
    """
    n_atoms = structure.n_atoms
    if ball_residue is not None:
        topology = structure.openmm_topology()
        ball = np.array([a.index for a in topology.atoms() if a.residue.name == ball_residue], dtype=np.int64)
        if len(ball) == 0:
            names = sorted({r.name for r in topology.residues()})
            raise ValueError(f"{structure.source}: no residue named {ball_residue!r}; residues are {names}")
        method = f"residue {ball_residue}"
    else:
        bonds, source = covalent_bonds(structure)
        components = bond_graph_components(n_atoms, bonds)
        candidates = [c for c in components if len(c) == C60_SIZE and np.all(structure.atomic_numbers[c] == 6)]
        if not candidates:
            sizes = [len(c) for c in components]
            raise ValueError(
                f"{structure.source}: no connected component of 60 carbon atoms (component sizes {sizes}, "
                f"bonds from {source}); pass the ball's residue name"
            )
        ball = np.sort(candidates[0])
        method = f"60-carbon component of the bond graph (bonds from {source})"
    host = np.setdiff1d(np.arange(n_atoms), ball)
    if len(host) == 0:
        raise ValueError(f"{structure.source}: every atom belongs to the ball; there is no catcher")
    return CatcherAtoms(ball=ball, host=host, method=method)


def centroid_distances(positions_angstrom: np.ndarray, atoms: CatcherAtoms) -> np.ndarray:
    """Distance (Å) between the ball's and the host's centroids for each frame of (frames, atoms, 3)."""
    positions = np.asarray(positions_angstrom, dtype=np.float64).reshape(-1, positions_angstrom.shape[-2], 3)
    ball = positions[:, atoms.ball].mean(axis=1)
    host = positions[:, atoms.host].mean(axis=1)
    return np.linalg.norm(ball - host, axis=-1)


def pulled_out(positions_angstrom: np.ndarray, atoms: CatcherAtoms, shifts_angstrom: np.ndarray) -> np.ndarray:
    """Frames (S, N, 3; Å) of one structure with the ball moved rigidly by each shift along the opening.

    The opening is the unit vector from the host's centroid to the ball's; every host atom stays where it is, so
    the energies of these frames relative to the unshifted one trace the binding curve (a negative shift pushes
    the ball into the catcher).
    """
    positions = np.asarray(positions_angstrom, dtype=np.float64)
    opening = positions[atoms.ball].mean(axis=0) - positions[atoms.host].mean(axis=0)
    norm = np.linalg.norm(opening)
    if norm < 1e-6:
        raise ValueError("the ball's and the host's centroids coincide: no opening direction to pull along")
    frames = np.repeat(positions[None], len(shifts_angstrom), axis=0)
    frames[:, atoms.ball] += np.asarray(shifts_angstrom, dtype=np.float64)[:, None, None] * (opening / norm)
    return frames


def write_distance_csv(path: str | Path, time_ps: np.ndarray, distance_angstrom: np.ndarray) -> Path:
    """CSV with columns ``time_ps,distance_angstrom``."""
    path = Path(path)
    np.savetxt(path, np.stack([time_ps, distance_angstrom], axis=1), delimiter=",",
               header="time_ps,distance_angstrom", comments="", fmt="%.6f")
    return path


def plot_distance(
    time_ps: np.ndarray, distance_angstrom: np.ndarray, path: str | Path, reference_angstrom: float | None = None
) -> Path:
    """Distance between the ball and catcher centres against time."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 3.8))
    axis.plot(*broken_at_gaps(time_ps, distance_angstrom), lw=0.8)
    if reference_angstrom is not None:
        axis.axhline(reference_angstrom, color="k", ls="--", lw=0.8, label="starting structure")
        axis.legend()
    axis.set_xlabel("time (ps)")
    axis.set_ylabel("C$_{60}$-catcher centroid distance (Å)")
    axis.set_title("Buckyball catcher: does the ball stay in?")
    return save_figure(figure, path)
