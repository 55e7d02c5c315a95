"""Ramachandran (phi, psi) angles of a peptide trajectory, with mdtraj, and their plot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from so3krates_openmm.md.plotting import pyplot, save_figure


@dataclass
class Dihedrals:
    """phi and psi in degrees (frames, residues) for the residues that have both."""

    residues: list[str]
    phi_deg: np.ndarray
    psi_deg: np.ndarray


def backbone_dihedrals(trajectory, residue_name: str | None = "ALA") -> Dihedrals:
    """phi/psi of every residue (optionally only those named ``residue_name``) that has both angles.

    ``trajectory`` is an ``mdtraj.Trajectory`` whose topology has backbone
    atom names (N, CA, C), e.g. from a PDB of Ac-Ala3-NHMe.
    """
    import mdtraj

    phi_indices, phi = mdtraj.compute_phi(trajectory)
    psi_indices, psi = mdtraj.compute_psi(trajectory)
    topology = trajectory.topology
    # phi = C(i-1)-N-CA-C and psi = N-CA-C-N(i+1): the residue is that of CA (index 2 and 1).
    phi_by_residue = {topology.atom(q[2]).residue.index: k for k, q in enumerate(phi_indices)}
    psi_by_residue = {topology.atom(q[1]).residue.index: k for k, q in enumerate(psi_indices)}
    residues = sorted(set(phi_by_residue) & set(psi_by_residue))
    if residue_name is not None:
        residues = [r for r in residues if topology.residue(r).name == residue_name]
    if not residues:
        names = [str(r) for r in topology.residues]
        raise ValueError(
            f"no residue{'' if residue_name is None else ' ' + residue_name} with both phi and psi in the "
            f"topology (residues: {names}); the structure needs backbone atom names N, CA, C"
        )
    return Dihedrals(
        residues=[str(topology.residue(r)) for r in residues],
        phi_deg=np.degrees(phi[:, [phi_by_residue[r] for r in residues]]),
        psi_deg=np.degrees(psi[:, [psi_by_residue[r] for r in residues]]),
    )


def write_dihedrals_csv(path: str | Path, time_ps: np.ndarray, dihedrals: Dihedrals) -> Path:
    """CSV: ``time_ps`` then ``phi_<res>_deg,psi_<res>_deg`` per residue."""
    path = Path(path)
    header = ["time_ps"]
    columns = [np.asarray(time_ps)]
    for k, name in enumerate(dihedrals.residues):
        header += [f"phi_{name}_deg", f"psi_{name}_deg"]
        columns += [dihedrals.phi_deg[:, k], dihedrals.psi_deg[:, k]]
    np.savetxt(path, np.stack(columns, axis=1), delimiter=",", header=",".join(header), comments="", fmt="%.4f")
    return path


def plot_ramachandran(dihedrals: Dihedrals, path: str | Path, title: str = "") -> Path:
    """One (phi, psi) panel per residue, points coloured by time."""
    plt = pyplot()
    n = len(dihedrals.residues)
    figure, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.8), squeeze=False)
    colours = np.arange(dihedrals.phi_deg.shape[0])
    for k, axis in enumerate(axes[0]):
        axis.scatter(dihedrals.phi_deg[:, k], dihedrals.psi_deg[:, k], c=colours, s=4, cmap="viridis")
        axis.set_xlim(-180, 180)
        axis.set_ylim(-180, 180)
        axis.set_xticks(range(-180, 181, 90))
        axis.set_yticks(range(-180, 181, 90))
        axis.axhline(0, color="0.8", lw=0.5)
        axis.axvline(0, color="0.8", lw=0.5)
        axis.set_aspect("equal")
        axis.set_title(dihedrals.residues[k])
        axis.set_xlabel(r"$\phi$ (deg)")
        axis.set_ylabel(r"$\psi$ (deg)")
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)
