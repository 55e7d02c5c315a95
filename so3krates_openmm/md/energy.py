"""Energy analyses of a CSV log: NVE energy drift (per ns per atom) and energy traces."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from so3krates_openmm.md.plotting import pyplot, save_figure
from so3krates_openmm.units import KJ_PER_MOL_PER_ENERGY_UNIT

#: kJ/mol per meV.
KJ_MOL_PER_MEV = KJ_PER_MOL_PER_ENERGY_UNIT["meV"]


@dataclass
class EnergyDrift:
    """Linear fit of the total energy against time.

    Attributes:
        drift_kj_mol_per_ns: slope of the total energy, kJ/mol per ns.
        drift_kj_mol_per_ns_per_atom: slope divided by the number of atoms.
        drift_mev_per_ps_per_atom: the same in meV per ps per atom.
        intercept_kj_mol: fitted total energy at t = 0.
        residual_std_kj_mol: standard deviation of the total energy about the fit.
        duration_ps: time span of the fitted data.
        n_atoms: atoms in the system.
        n_points: samples fitted.
    """

    drift_kj_mol_per_ns: float
    drift_kj_mol_per_ns_per_atom: float
    drift_mev_per_ps_per_atom: float
    intercept_kj_mol: float
    residual_std_kj_mol: float
    duration_ps: float
    n_atoms: int
    n_points: int

    def to_dict(self) -> dict:
        return asdict(self)


def energy_drift(time_ps: np.ndarray, total_energy_kj_mol: np.ndarray, n_atoms: int) -> EnergyDrift:
    """Least-squares line through the total energy: the NVE drift per ns and per atom."""
    time_ps = np.asarray(time_ps, dtype=np.float64)
    energy = np.asarray(total_energy_kj_mol, dtype=np.float64)
    if len(time_ps) < 2 or np.ptp(time_ps) == 0:
        raise ValueError("an energy drift needs at least two samples at different times")
    if not np.all(np.isfinite(energy)):
        raise ValueError("the total energy contains NaN or infinite values: the run was unstable")
    slope_per_ps, intercept = np.polyfit(time_ps, energy, 1)
    residual = energy - (slope_per_ps * time_ps + intercept)
    per_ns = slope_per_ps * 1000.0
    return EnergyDrift(
        drift_kj_mol_per_ns=float(per_ns),
        drift_kj_mol_per_ns_per_atom=float(per_ns / n_atoms),
        drift_mev_per_ps_per_atom=float(slope_per_ps / KJ_MOL_PER_MEV / n_atoms),
        intercept_kj_mol=float(intercept),
        residual_std_kj_mol=float(residual.std()),
        duration_ps=float(np.ptp(time_ps)),
        n_atoms=int(n_atoms),
        n_points=len(time_ps),
    )


def write_drift(path: str | Path, drift: EnergyDrift) -> Path:
    """Write the drift as JSON."""
    path = Path(path)
    path.write_text(json.dumps(drift.to_dict(), indent=2) + "\n")
    return path


def plot_energy_drift(
    time_ps: np.ndarray, total_energy_kj_mol: np.ndarray, drift: EnergyDrift, path: str | Path
) -> Path:
    """Total energy (relative to its first value) against time, with the fitted line."""
    plt = pyplot()
    time_ps = np.asarray(time_ps)
    energy = np.asarray(total_energy_kj_mol)
    reference = energy[0]
    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    axis.plot(time_ps, energy - reference, lw=0.8, label="total energy")
    fit = drift.drift_kj_mol_per_ns / 1000.0 * time_ps + drift.intercept_kj_mol - reference
    axis.plot(time_ps, fit, "k--", lw=1.2,
              label=f"fit: {drift.drift_kj_mol_per_ns_per_atom:.3g} kJ/mol/ns/atom")
    axis.set_xlabel("time (ps)")
    axis.set_ylabel("E$_{tot}$ - E$_{tot}$(0) (kJ/mol)")
    axis.set_title(f"NVE energy conservation ({drift.n_atoms} atoms)")
    axis.legend()
    return save_figure(figure, path)


def plot_energy_trace(log: dict[str, np.ndarray], path: str | Path) -> Path:
    """Potential and total energy relative to their first value (a model's energies carry large
    atomic offsets) and temperature against time, from a CSV log."""
    plt = pyplot()
    time_ps = log["time_ps"]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 5.6), sharex=True)
    for column, label in (("potential_energy_kJ/mol", "potential"), ("total_energy_kJ/mol", "total")):
        if column in log and len(log[column]):
            top.plot(time_ps, log[column] - log[column][0], lw=0.8,
                     label=f"{label} (first: {log[column][0]:.6g} kJ/mol)")
    top.set_ylabel("E - E(first sample) (kJ/mol)")
    top.legend()
    if "temperature_K" in log:
        bottom.plot(time_ps, log["temperature_K"], lw=0.8, color="tab:red")
    bottom.set_ylabel("temperature (K)")
    bottom.set_xlabel("time (ps)")
    return save_figure(figure, path)
