#!/usr/bin/env python
"""Which time step is safe for a showcase system? Longer time steps with repartitioned hydrogens against 0.5 fs.

    python bench/timestep/validate.py --system ac_ala3_nhme --threads 1
    python bench/timestep/validate.py --system buckyball_catcher --threads 2

For each time step (default 0.5 fs with the real masses, then 1.0, 1.5 and
2.0 fs with hydrogens of ``--hydrogen-mass`` amu, OpenMM's hydrogen mass
repartitioning as ``ForceField.createSystem(hydrogenMass=...)``):

1. Langevin NVT at ``--temperature`` (500 K) for ``--ps`` (50 ps) with the stability
   monitor (the ``langevin_nvt`` protocol, ``runs/timestep/<system>/nvt_<dt>fs``);
2. NVE from the last state of that run for ``--nve-ps`` (the ``nve`` protocol with
   ``--initial-state``, ``.../nve_<dt>fs``): the drift of the total energy per atom
   per ns (linear fit), its standard error (from the spread of the slopes of four
   blocks) and the fluctuation about the fit;
3. the sampled distribution of the system's observable against the reference
   (first) time step: the peptide's (phi, psi) per alanine, the catcher's
   C60-catcher centroid distance, as a Jensen-Shannon divergence of histograms,
   with the divergence between the two halves of the reference run as the noise floor
   (:mod:`so3krates_openmm.md.timestep`); alongside, the same comparison of the
   potential energy of the Langevin frames (bins of a quarter of the reference run's
   standard deviation) and the shift of its mean: masses do not change the configurational
   distribution, and the potential energy mixes in picoseconds where the catcher's ball
   moves over tens (reported, not part of the rule).

A time step is safe when its run stayed stable, its |NVE drift| is within
``--max-drift-ratio`` (2x) of the reference's and its divergence is within the
noise floor. ``bench/timestep/<system>/summary.json`` and ``timestep.png``
(distributions overlaid, NVE energy, divergences) are rewritten after every
time step. The model is the shipped checkpoint exported with ``--kernels fused``
(``<output>/model_fused.pt``) unless ``--model`` is given. Everything resumes:
run the same command again after a kill and each run continues from its last
checkpoint (finished runs are not repeated); ``--analyse-only`` writes the summary
of the runs so far without running anything.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform as host_platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from so3krates_openmm.cli.common import NO_PROCESS_TUNING, NO_PROCESS_TUNING_HELP, tune_process

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parents[1]
SYSTEMS = ("ac_ala3_nhme", "buckyball_catcher")
#: Potential-energy histogram bins per standard deviation of the reference run's potential energy.
ENERGY_BINS_PER_STD = 4.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--system", choices=SYSTEMS, required=True, help="showcase system")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each run")
    parser.add_argument("--platform", default="CPU", help="OpenMM platform")
    parser.add_argument("--timesteps-fs", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0],
                        help="time steps, fs; the first is the reference and runs with the real masses")
    parser.add_argument("--hydrogen-mass", type=float, default=3.0,
                        help="hydrogen mass (amu) of every time step but the reference")
    parser.add_argument("--ps", type=float, default=50.0, help="Langevin NVT length per time step, ps")
    parser.add_argument("--nve-ps", type=float, default=20.0, help="NVE length per time step, ps")
    parser.add_argument("--temperature", type=float, default=500.0, help="Langevin temperature, K")
    parser.add_argument("--friction", type=float, default=1.0, help="Langevin friction, 1/ps")
    parser.add_argument("--skip-ps", type=float, default=5.0,
                        help="start of each NVT run left out of the distributions (equilibration), ps")
    parser.add_argument("--frame-interval-fs", type=float, default=30.0,
                        help="NVT frame interval, fs (a multiple of every time step)")
    parser.add_argument("--nve-log-interval-fs", type=float, default=6.0,
                        help="NVE energy log interval, fs (a multiple of every time step)")
    parser.add_argument("--checkpoint-interval-ps", type=float, default=2.5, help="run checkpoint interval, ps")
    parser.add_argument("--bin-deg", type=float, default=20.0, help="(phi, psi) histogram bin, degrees")
    parser.add_argument("--distance-bin-angstrom", type=float, default=0.05,
                        help="C60-catcher distance histogram bin, Å")
    parser.add_argument("--max-drift-ratio", type=float, default=2.0,
                        help="largest |NVE drift| relative to the reference time step's for a safe time step")
    parser.add_argument("--seed", type=int, default=1, help="seed of every Langevin run")
    parser.add_argument("--structure", type=Path, default=None,
                        help="starting structure (default: the shipped structure.pdb of --system)")
    parser.add_argument("--model", type=Path, default=None,
                        help="model (.pt, checkpoint or System .xml; default: the shipped checkpoint exported with "
                             "--kernels fused into OUTPUT/model_fused.pt)")
    parser.add_argument("--output", type=Path, default=None, help="run directory (default: runs/timestep/SYSTEM)")
    parser.add_argument("--summary-dir", type=Path, default=None,
                        help="where summary.json and timestep.png go (default: bench/timestep/SYSTEM)")
    parser.add_argument("--analyse-only", action="store_true",
                        help="only write the summary and figure from the runs so far (safe while the runs go on)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(NO_PROCESS_TUNING, action="store_true", help=NO_PROCESS_TUNING_HELP)
    args = parser.parse_args(argv)
    args.output = args.output or Path("runs/timestep") / args.system
    args.summary_dir = args.summary_dir or HERE / args.system
    if args.timesteps_fs[0] in args.timesteps_fs[1:]:
        parser.error("the reference time step (the first) appears twice")
    for name in ("frame_interval_fs", "nve_log_interval_fs"):
        for dt in args.timesteps_fs:
            steps_between(getattr(args, name), dt, name, parser.error)
    return args


def steps_between(interval_fs: float, timestep_fs: float, name: str = "interval",
                  fail: Callable[[str], None] | None = None) -> int:
    """Whole steps of ``timestep_fs`` in ``interval_fs``; otherwise ``fail(message)`` (default: ``ValueError``)."""
    steps = round(interval_fs / timestep_fs)
    if steps < 1 or abs(steps * timestep_fs - interval_fs) > 1e-6 * interval_fs:
        message = f"--{name.replace('_', '-')} {interval_fs:g} is not a multiple of the time step {timestep_fs:g} fs"
        if fail is None:
            raise ValueError(message)
        fail(message)
    return steps


def run_name(kind: str, timestep_fs: float) -> str:
    return f"{kind}_{timestep_fs:g}fs"


def fused_model(args: argparse.Namespace, structure_path: Path) -> Path:
    """The shipped checkpoint exported with the fused kernels (once; the export is atomic)."""
    from so3krates_openmm.data.structures import read_structure
    from so3krates_openmm.export import export_checkpoint
    from so3krates_openmm.md.protocols import PRETRAINED_DIR

    path = args.output / "model_fused.pt"
    if not path.is_file():
        print(f"exporting the shipped {args.system} checkpoint with --kernels fused to {path}", flush=True)
        export_checkpoint(PRETRAINED_DIR / args.system / "best_checkpoint.pt", path,
                          structure=read_structure(structure_path), dtype="float32", kernels="fused")
    return path


def finished(directory: Path, steps: int) -> bool:
    """Whether the run in ``directory`` reached ``steps`` or was stopped by the stability monitor."""
    info = read_json(directory / "run.json")
    if info is None or info.get("steps_requested") != steps:
        return False
    stability = info.get("stability") or {}
    return bool(info.get("completed")) or stability.get("stable") is False


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def common_options(args: argparse.Namespace, timestep_fs: float, structure: Path, model: Path) -> dict[str, Any]:
    reference = timestep_fs == args.timesteps_fs[0]
    return dict(
        system=args.system, structure=structure, model=model, platform=args.platform, threads=args.threads,
        seed=args.seed, temperature=args.temperature, timestep_fs=timestep_fs,
        hydrogen_mass=None if reference else args.hydrogen_mass, resume=True, progress=not args.no_progress,
        checkpoint_interval=max(1, round(args.checkpoint_interval_ps * 1000.0 / timestep_fs)),
    )


def run_timestep(args: argparse.Namespace, timestep_fs: float, structure: Path, model: Path) -> None:
    """The NVT run, then the NVE run from its last state, each resumed or skipped when done (the NVE run starts
    again when its NVT run went on, e.g. after a longer ``--ps``)."""
    from so3krates_openmm.md.protocols import LangevinNVTOptions, NVEOptions, write_resolved_protocol
    from so3krates_openmm.md.recipes import run_langevin_nvt, run_nve

    common = common_options(args, timestep_fs, structure, model)
    frame = steps_between(args.frame_interval_fs, timestep_fs)
    nvt = LangevinNVTOptions(**common, friction=args.friction, steps=round(args.ps * 1000.0 / timestep_fs),
                             output=args.output / run_name("nvt", timestep_fs), log_interval=frame,
                             trajectory_interval=frame)
    nvt_ran = not finished(nvt.output, nvt.n_steps)
    if nvt_ran:
        print(f"--- {timestep_fs:g} fs: Langevin NVT, {args.ps:g} ps = {nvt.n_steps} steps -> {nvt.output}", flush=True)
        result = run_langevin_nvt(nvt)
        write_resolved_protocol(nvt, nvt.output / "protocol_resolved.yaml", seed=result.seed, source="validate.py")
    final_state = nvt.output / "final_state.xml"
    if not final_state.is_file():
        print(f"--- {timestep_fs:g} fs: the NVT run was unstable; no NVE run", flush=True)
        return
    log_steps = steps_between(args.nve_log_interval_fs, timestep_fs)
    nve = NVEOptions(**common, steps=round(args.nve_ps * 1000.0 / timestep_fs), equilibration_steps=0,
                     initial_state=final_state, output=args.output / run_name("nve", timestep_fs),
                     log_interval=log_steps, trajectory_interval=frame * 10)
    nve.resume, nve.overwrite = not nvt_ran, nvt_ran
    if nvt_ran or not finished(nve.output, nve.n_steps):
        print(f"--- {timestep_fs:g} fs: NVE from the NVT run's last state, {args.nve_ps:g} ps = {nve.n_steps} steps "
              f"-> {nve.output}", flush=True)
        result = run_nve(nve)
        write_resolved_protocol(nve, nve.output / "protocol_resolved.yaml", seed=result.seed, source="validate.py")


# --------------------------------------------------------------------------- analysis


class Observable:
    """The system's sampled observable: per-frame samples of a trajectory, their histograms and 1-D marginals."""

    def __init__(self, args: argparse.Namespace, structure_path: Path) -> None:
        from so3krates_openmm.data.structures import read_structure

        self.system = args.system
        self.structure = read_structure(structure_path)
        self.bin_deg = args.bin_deg
        self.distance_bin = args.distance_bin_angstrom
        self.edges = None
        if self.system == "buckyball_catcher":
            from so3krates_openmm.md.catcher import identify_ball

            self.atoms = identify_ball(self.structure)
            self.name = "C60-catcher distance"
            self.description = (f"C60-catcher centroid distance, {self.distance_bin:g} Å bins "
                                f"(ball: {self.atoms.method})")
        else:
            self.name = "phi/psi"
            self.description = f"(phi, psi) of each ALA, {self.bin_deg:g} degree bins on the torus"

    def samples(self, positions_angstrom, times_ps):
        if self.system == "buckyball_catcher":
            from so3krates_openmm.md.catcher import centroid_distances

            return centroid_distances(positions_angstrom, self.atoms)
        import numpy as np

        from so3krates_openmm.data.trajectory import mdtraj_trajectory
        from so3krates_openmm.md.ramachandran import backbone_dihedrals

        frames = mdtraj_trajectory(self.structure.openmm_topology(), positions_angstrom, times_ps)
        dihedrals = backbone_dihedrals(frames, "ALA")
        self.residues = dihedrals.residues
        return np.stack([dihedrals.phi_deg, dihedrals.psi_deg], axis=-1)

    def fit_bins(self, all_samples) -> None:
        """Common distance bins over every run (the catcher); the dihedral grid is fixed."""
        if self.system == "buckyball_catcher":
            from so3krates_openmm.md.timestep import distance_edges

            self.edges = distance_edges(all_samples, self.distance_bin)

    def histogram(self, samples):
        import numpy as np

        from so3krates_openmm.md.timestep import ramachandran_histograms

        if self.system == "buckyball_catcher":
            return np.histogram(samples, bins=self.edges)[0][None]
        return ramachandran_histograms(samples[..., 0], samples[..., 1], self.bin_deg)

    def marginals(self, samples) -> dict[str, Any]:
        """1-D samples to overlay in the figure, by axis label."""
        if self.system == "buckyball_catcher":
            return {"C$_{60}$-catcher centroid distance (Å)": samples}
        return {r"$\phi$ of the alanines (deg)": samples[..., 0].ravel(),
                r"$\psi$ of the alanines (deg)": samples[..., 1].ravel()}


def ns_per_day(log: dict) -> float | None:
    """Median of the log's ns/day column (the speed of the run, resumed segments included)."""
    import numpy as np

    values = log.get("ns_per_day")
    values = values[np.isfinite(values)] if values is not None else []
    return float(np.median(values)) if len(values) else None


def shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (summary.json is committed), else as given."""
    try:
        return str(Path(path).resolve().relative_to(REPOSITORY))
    except ValueError:
        return str(path)


def processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return host_platform.processor() or "unknown"


def analyse(args: argparse.Namespace, structure_path: Path, model: Path) -> tuple[dict, dict, dict, dict, Observable]:
    """summary.json's content from whatever runs exist so far, with the samples, NVE traces and Langevin potential
    energies (kJ/mol) per time step and the observable (for the figure)."""
    import numpy as np

    from so3krates_openmm.data.trajectory import read_dcd
    from so3krates_openmm.md.energy import energy_drift
    from so3krates_openmm.md.reporters import read_csv_log
    from so3krates_openmm.md.timestep import (
        DistributionDifference,
        TimestepVerdict,
        compare_distributions,
        distance_edges,
        drift_ratio,
        drift_standard_error,
        timestep_verdict,
    )

    observable = Observable(args, structure_path)
    rows, samples, traces, energies = [], {}, {}, {}
    for dt in args.timesteps_fs:
        nvt_dir, nve_dir = args.output / run_name("nvt", dt), args.output / run_name("nve", dt)
        info = read_json(nvt_dir / "run.json")
        if info is None:
            continue  # not run (or not through its first segment) yet
        log = read_csv_log(nvt_dir / "log.csv")
        row: dict[str, Any] = {
            "timestep_fs": dt, "hydrogen_mass_amu": None if dt == args.timesteps_fs[0] else args.hydrogen_mass,
            "reference": dt == args.timesteps_fs[0], "threads": args.threads,
            "steps": info["final_step"], "steps_requested": info["steps_requested"],
            "simulated_ps": info["final_step"] * dt / 1000.0, "complete": bool(info["completed"]),
            "stable_fraction": (info.get("stability") or {}).get("stable_fraction", 1.0),
            "ns_per_day": ns_per_day(log),
        }
        trajectory = read_dcd(nvt_dir / "trajectory.dcd").after(args.skip_ps)
        if trajectory.n_frames >= 2:
            samples[dt] = observable.samples(trajectory.positions_angstrom, trajectory.times_ps)
        kept = log["time_ps"] >= args.skip_ps
        if kept.sum() >= 2:
            energies[dt] = log["potential_energy_kJ/mol"][kept]
        nve_info = read_json(nve_dir / "run.json")
        if nve_info is not None:
            trace = read_csv_log(nve_dir / "log.csv")
            drift = energy_drift(trace["time_ps"], trace["total_energy_kJ/mol"], observable.structure.n_atoms) \
                if len(trace["time_ps"]) >= 2 and (nve_info.get("stability") or {}).get("stable", True) else None
            traces[dt] = (trace, drift)
            row.update(nve_ps=nve_info["final_step"] * dt / 1000.0, nve_complete=bool(nve_info["completed"]),
                       nve_stable=(nve_info.get("stability") or {}).get("stable", True),
                       nve_drift_kJ_mol_per_atom_per_ns=None if drift is None else drift.drift_kj_mol_per_ns_per_atom,
                       nve_drift_standard_error_kJ_mol_per_atom_per_ns=None if drift is None or drift.n_points < 8
                       else drift_standard_error(trace["time_ps"], trace["total_energy_kJ/mol"], drift.n_atoms),
                       nve_fluctuation_kJ_mol=None if drift is None else drift.residual_std_kj_mol,
                       nve_fluctuation_kJ_mol_per_atom=None if drift is None
                       else drift.residual_std_kj_mol / drift.n_atoms)
        rows.append(row)
    reference = args.timesteps_fs[0]
    if samples:
        observable.fit_bins(list(samples.values()))
    energy_edges = None
    if reference in energies:  # common bins of a quarter of the reference run's standard deviation
        width = float(np.std(energies[reference])) / ENERGY_BINS_PER_STD or 1.0
        energy_edges = distance_edges(list(energies.values()), width)
    reference_drift = next((r.get("nve_drift_kJ_mol_per_atom_per_ns") for r in rows if r["reference"]), None)
    for row in rows:
        dt = row["timestep_fs"]
        drift = row.get("nve_drift_kJ_mol_per_atom_per_ns")
        ratio = None if drift is None or reference_drift is None else drift_ratio(drift, reference_drift)
        difference = None
        if reference in samples and dt in samples:
            difference = compare_distributions(samples[reference], samples[dt], observable.histogram)
            if row["reference"]:  # the reference against itself: no difference, only its noise floor
                difference = DistributionDifference(0.0, difference.noise_floor_bits, difference.frames,
                                                    difference.reference_frames)
        energy = None
        if energy_edges is not None and dt in energies:
            energy = compare_distributions(energies[reference], energies[dt],
                                           lambda values: np.histogram(values, bins=energy_edges)[0][None])
            row.update(potential_energy_divergence_bits=0.0 if row["reference"] else energy.divergence_bits,
                       potential_energy_noise_floor_bits=energy.noise_floor_bits,
                       potential_energy_mean_shift_kJ_mol=float(np.mean(energies[dt]) - np.mean(energies[reference])),
                       potential_energy_std_kJ_mol=float(np.std(energies[dt])))
        verdict = timestep_verdict(stable_fraction=row["stable_fraction"], drift_ratio=ratio,
                                   distributions=difference, max_drift_ratio=args.max_drift_ratio)
        nvt_running = not row["complete"] and row["stable_fraction"] >= 1.0
        nve_running = row["complete"] and row["stable_fraction"] >= 1.0 and row.get("nve_stable", True) \
            and not row.get("nve_complete", False)
        if nvt_running or nve_running:
            verdict = TimestepVerdict(False, [*verdict.reasons, "runs not finished"])
        row.update(drift_ratio_to_reference=ratio,
                   distribution_divergence_bits=None if difference is None else difference.divergence_bits,
                   noise_floor_bits=None if difference is None else difference.noise_floor_bits,
                   frames_compared=None if difference is None else difference.frames,
                   verdict=verdict.label, reasons=verdict.reasons)
    return {
        "system": args.system,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "processor": processor(), "host": host_platform.node(), "platform": args.platform, "threads": args.threads,
        "model": shown(model), "structure": shown(structure_path),
        "temperature_K": args.temperature, "friction_per_ps": args.friction, "nvt_ps": args.ps, "nve_ps": args.nve_ps,
        "skip_ps": args.skip_ps, "frame_interval_fs": args.frame_interval_fs,
        "nve_log_interval_fs": args.nve_log_interval_fs, "seed": args.seed,
        "reference_timestep_fs": reference, "hydrogen_mass_amu": args.hydrogen_mass,
        "observable": observable.description,
        "divergence": "Jensen-Shannon divergence of the histograms in bits (mean over residues), against the "
                      "reference time step's run; noise floor: the same between the two halves of the reference run",
        "potential_energy": "the same divergence and noise floor for the potential energy of the Langevin frames "
                            f"(bins of 1/{ENERGY_BINS_PER_STD:g} of the reference run's standard deviation), and the "
                            "shift of its mean from the reference run's; reported, not part of the rule",
        "rule": f"safe: stable fraction 1, |NVE drift| <= {args.max_drift_ratio:g}x the reference time step's, "
                "divergence <= noise floor",
        "timesteps": rows,
    }, samples, traces, energies, observable


def plot(summary: dict, samples: dict, traces: dict, energies: dict, observable: Observable, path: Path) -> Path:
    """Distributions of the observable and of the potential energy overlaid per time step, NVE total energy per
    atom against time, divergences."""
    import numpy as np

    from so3krates_openmm.md.plotting import pyplot, save_figure

    plt = pyplot()
    labels = {row["timestep_fs"]: f"{row['timestep_fs']:g} fs" + ("" if row["reference"] else
                                                                   f", H {row['hydrogen_mass_amu']:g} amu")
              for row in summary["timesteps"]}
    marginal_names = list(observable.marginals(next(iter(samples.values()))).keys()) if samples else []
    columns = len(marginal_names) + 1
    figure, grid = plt.subplots(2, max(columns, 2), figsize=(5.2 * max(columns, 2), 7.6), squeeze=False)
    for axis in grid[1, 2:]:
        axis.axis("off")
    reference_energy = energies.get(summary["reference_timestep_fs"])
    histograms = {**{name: {dt: observable.marginals(values)[name] for dt, values in samples.items()}
                     for name in marginal_names},
                  "potential energy - reference run's mean (kJ/mol)":
                      {} if reference_energy is None else {dt: values - np.mean(reference_energy)
                                                            for dt, values in energies.items()}}
    for axis, (name, by_timestep) in zip(grid[0], histograms.items(), strict=False):
        if not by_timestep:
            axis.axis("off")
            continue
        pooled = np.concatenate(list(by_timestep.values()))
        bins = np.linspace(-180, 180, 37) if "deg" in name else np.histogram_bin_edges(pooled, bins=50)
        for dt, values in by_timestep.items():
            axis.hist(values, bins=bins, density=True, histtype="step", lw=1.2, label=labels[dt])
        axis.set_xlabel(name)
        axis.set_ylabel("probability density")
        axis.legend(fontsize=7)
    axis = grid[1, 0]
    for k, (dt, (trace, drift)) in enumerate(traces.items()):
        n_atoms = observable.structure.n_atoms
        time_ps = trace["time_ps"] - trace["time_ps"][0]
        energy = (trace["total_energy_kJ/mol"] - trace["total_energy_kJ/mol"][0]) / n_atoms
        axis.plot(time_ps, energy, lw=0.4, alpha=0.35, color=f"C{k}")
        if drift is not None:  # the fitted line, per atom and relative to the same first value
            fit = (drift.drift_kj_mol_per_ns / 1000.0 * trace["time_ps"] + drift.intercept_kj_mol
                   - trace["total_energy_kJ/mol"][0]) / n_atoms
            axis.plot(time_ps, fit, lw=1.8, color=f"C{k}",
                      label=f"{labels[dt]}: {drift.drift_kj_mol_per_ns_per_atom:.3g} kJ/mol/ns/atom, "
                            f"σ {drift.residual_std_kj_mol / n_atoms:.2g}")
    axis.set_xlabel("NVE time (ps)")
    axis.set_ylabel("E$_{tot}$ - E$_{tot}$(0) per atom (kJ/mol)")
    axis.legend(fontsize=7)
    axis = grid[1, 1]
    width = 0.38
    comparisons = [("distribution_divergence_bits", "noise_floor_bits", observable.name, "tab:blue"),
                   ("potential_energy_divergence_bits", "potential_energy_noise_floor_bits", "potential energy",
                    "tab:orange")]
    for offset, (divergence, floor, name, colour) in enumerate(comparisons):
        compared = [(k, row) for k, row in enumerate(summary["timesteps"]) if row.get(divergence) is not None]
        if not compared:
            continue
        axis.bar([k + (offset - 0.5) * width for k, _ in compared], [row[divergence] for _, row in compared],
                 width=width, color=colour, label=f"{name} vs reference run")
        axis.axhline(compared[0][1][floor], color=colour, ls="--", lw=1,
                     label=f"{name}: noise floor (reference halves)")
    axis.set_xticks(np.arange(len(summary["timesteps"])),
                    [f"{row['timestep_fs']:g} fs\n{row['verdict']}" for row in summary["timesteps"]])
    axis.set_ylabel("Jensen-Shannon divergence (bits)")
    axis.legend(fontsize=7)
    figure.suptitle(f"{summary['system']}: time steps at {summary['temperature_K']:g} K ({observable.name}; "
                    f"NVE from the end of each Langevin run)", fontsize=10)
    return save_figure(figure, path)


def write_summary(args: argparse.Namespace, structure_path: Path, model: Path) -> dict:
    from so3krates_openmm.files import write_atomically

    summary, samples, traces, energies, observable = analyse(args, structure_path, model)
    args.summary_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(summary, indent=2) + "\n"
    write_atomically(args.summary_dir / "summary.json", lambda temporary: temporary.write_text(text))
    if summary["timesteps"]:
        plot(summary, samples, traces, energies, observable, args.summary_dir / "timestep.png")
    for row in summary["timesteps"]:
        drift = row.get("nve_drift_kJ_mol_per_atom_per_ns")
        error = row.get("nve_drift_standard_error_kJ_mol_per_atom_per_ns") or float("nan")
        print(f"{row['timestep_fs']:>4g} fs  {row['simulated_ps']:6.1f} ps  stable {row['stable_fraction']:.3f}  "
              f"NVE drift {'-' if drift is None else f'{drift:.4g} +- {error:.2g}'} kJ/mol/atom/ns  "
              f"ratio {row['drift_ratio_to_reference'] or float('nan'):.2f}  "
              f"JSD {row['distribution_divergence_bits'] if row['distribution_divergence_bits'] is not None else '-'}"
              f" (floor {row['noise_floor_bits']})  potential energy JSD "
              f"{row.get('potential_energy_divergence_bits', float('nan')):.3g} (floor "
              f"{row.get('potential_energy_noise_floor_bits', float('nan')):.3g}), mean "
              f"{row.get('potential_energy_mean_shift_kJ_mol', float('nan')):+.3g} kJ/mol  "
              f"{row['ns_per_day'] or float('nan'):.3g} ns/day  "
              f"{row['verdict']} {'; '.join(row['reasons'])}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tune_process(argv)
    from so3krates_openmm.md.protocols import pretrained_files

    structure = args.structure or pretrained_files(args.system)["structure"]
    args.output.mkdir(parents=True, exist_ok=True)
    model = args.model or (args.output / "model_fused.pt" if args.analyse_only else fused_model(args, structure))
    for dt in [] if args.analyse_only else args.timesteps_fs:
        run_timestep(args, dt, structure, model)
        write_summary(args, structure, model)
    if args.analyse_only:
        write_summary(args, structure, model)
    print(f"summary: {args.summary_dir / 'summary.json'}, figure: {args.summary_dir / 'timestep.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
