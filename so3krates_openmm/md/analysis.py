"""The trajectory analyses of the MD protocols, in one namespace.

Each lives in its own module; this one collects the public functions:

- NVE energy conservation (:mod:`.energy`): :func:`energy_drift`, :func:`plot_energy_drift`, :func:`plot_energy_trace`.
- Vibrational spectrum from the VACF (:mod:`.spectrum`): :func:`vibrational_spectrum`,
  :func:`finite_difference_velocities`, :func:`plot_spectrum`, :func:`write_spectrum_csv`.
- Buckyball catcher (:mod:`.catcher`): :func:`identify_ball`, :func:`centroid_distances`, :func:`plot_distance`.
- Ramachandran angles (:mod:`.ramachandran`): :func:`backbone_dihedrals`, :func:`plot_ramachandran`.
- Time-step validation (:mod:`.timestep`): :func:`compare_distributions`, :func:`jensen_shannon_divergence`,
  :func:`ramachandran_histograms`, :func:`timestep_verdict`.
- Trajectories (:mod:`so3krates_openmm.data.trajectory`, :mod:`.reporters`): :func:`read_dcd`,
  :func:`read_velocities`, :func:`read_csv_log`.
"""

from so3krates_openmm.data.trajectory import mdtraj_trajectory, read_dcd
from so3krates_openmm.md.catcher import (
    centroid_distances,
    identify_ball,
    plot_distance,
    write_distance_csv,
)
from so3krates_openmm.md.energy import (
    energy_drift,
    plot_energy_drift,
    plot_energy_trace,
    write_drift,
)
from so3krates_openmm.md.ramachandran import (
    backbone_dihedrals,
    plot_ramachandran,
    write_dihedrals_csv,
)
from so3krates_openmm.md.reporters import read_csv_log, read_velocities
from so3krates_openmm.md.spectrum import (
    finite_difference_velocities,
    plot_spectrum,
    vibrational_spectrum,
    write_spectrum_csv,
    write_vacf_csv,
)
from so3krates_openmm.md.timestep import (
    compare_distributions,
    jensen_shannon_divergence,
    ramachandran_histograms,
    timestep_verdict,
)

__all__ = [
    "backbone_dihedrals",
    "centroid_distances",
    "compare_distributions",
    "energy_drift",
    "finite_difference_velocities",
    "identify_ball",
    "jensen_shannon_divergence",
    "mdtraj_trajectory",
    "plot_distance",
    "plot_energy_drift",
    "plot_energy_trace",
    "plot_ramachandran",
    "plot_spectrum",
    "ramachandran_histograms",
    "read_csv_log",
    "read_dcd",
    "read_velocities",
    "timestep_verdict",
    "vibrational_spectrum",
    "write_dihedrals_csv",
    "write_distance_csv",
    "write_drift",
    "write_spectrum_csv",
    "write_vacf_csv",
]
