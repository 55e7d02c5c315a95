"""Committee uncertainty inside a running OpenMM simulation.

:class:`CommitteeReporter` evaluates a :class:`~so3krates_openmm.model.committee.Committee`
on the simulation's positions every ``interval`` steps (the MD itself runs
whatever force the System has: one member, the committee mean, anything),
writes the disagreement to a CSV file, keeps frames whose force disagreement
passes ``save_threshold`` in an extended-XYZ file (for labelling), and stops
the run by raising :class:`UncertaintyLimitExceeded` when it passes
``stop_threshold`` (for example before the model drives the molecule apart).
At :meth:`~CommitteeReporter.close` it draws the disagreement over time as a PNG.

In your own OpenMM script::

    from so3krates_openmm.model.committee import Committee
    from so3krates_openmm.md.uncertainty import CommitteeReporter, UncertaintyLimitExceeded
    committee = Committee.from_checkpoints(["member0.pt", "member1.pt", "member2.pt", "member3.pt"])
    reporter = CommitteeReporter(committee, atomic_numbers, "uncertainty.csv", 100,
                                 save_threshold=1.0, stop_threshold=5.0)
    simulation.reporters.append(reporter)
    try:
        simulation.step(100_000)
    except UncertaintyLimitExceeded as stop:
        print(stop)
    reporter.close()

Both output files grow by whole records only, each tagged with its MD step: a
run resumed from a checkpoint at step S passes ``resume_step=S``, and the
records written after S (before the kill) are cut, so nothing is lost or
duplicated.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import openmm as mm
from openmm import app, unit

from so3krates_openmm.elements import symbol
from so3krates_openmm.md.plotting import pyplot, save_figure
from so3krates_openmm.md.reporters import truncate_output
from so3krates_openmm.model.committee import Committee, Disagreement
from so3krates_openmm.units import ANGSTROM_PER_NM


class UncertaintyLimitExceeded(RuntimeError):
    """The committee's force disagreement passed the reporter's stop threshold."""

    def __init__(self, step: int, force_std_max: float, limit: float, force_unit: str) -> None:
        super().__init__(
            f"committee force disagreement {force_std_max:.3g} {force_unit} at step {step} passed the stop "
            f"threshold {limit:.3g} {force_unit}: the model is outside its data here; label the saved frames "
            "and fine-tune before running further"
        )
        self.step = step
        self.force_std_max = force_std_max
        self.limit = limit


def csv_columns(energy_unit: str) -> tuple[str, ...]:
    """Column names of the reporter's CSV file, units included."""
    force_unit = f"{energy_unit}/Angstrom"
    return (
        "step",
        "time_ps",
        f"energy_std_{energy_unit}",
        f"force_std_max_{force_unit}",
        f"force_std_mean_{force_unit}",
        "saved",
    )


class CommitteeReporter:
    """OpenMM reporter of the committee disagreement along a simulation.

    Args:
        committee: the models whose disagreement is measured.
        atomic_numbers: atomic numbers of the committee's atoms (N,).
        path: CSV file (step, time in ps, energy std, max and mean force std, saved flag).
        interval: report every this many steps (multiples of it, as OpenMM's reporters).
        frames_path: extended-XYZ file for frames above ``save_threshold``; default: ``path``
            with the suffix ``.xyz``.
        save_threshold: keep frames whose maximum force disagreement is at least this
            (energy unit per Å); ``None`` keeps none.
        stop_threshold: raise :class:`UncertaintyLimitExceeded` when the maximum force
            disagreement passes this; ``None`` never stops.
        atoms: indices of the committee's atoms among the System's particles (ML/MM);
            default: all particles.
        resume_step: continue existing files of a run resumed at this step, cutting the
            records of later steps; ``None`` starts new files.
    """

    def __init__(
        self,
        committee: Committee,
        atomic_numbers: Sequence[int] | np.ndarray,
        path: str | Path,
        interval: int,
        *,
        frames_path: str | Path | None = None,
        save_threshold: float | None = None,
        stop_threshold: float | None = None,
        atoms: Sequence[int] | None = None,
        resume_step: int | None = None,
    ) -> None:
        if interval < 1:
            raise ValueError(f"report interval must be at least 1 step, got {interval}")
        if save_threshold is not None and stop_threshold is not None and stop_threshold < save_threshold:
            raise ValueError(
                f"stop_threshold ({stop_threshold}) is below save_threshold ({save_threshold}): "
                "the run would stop before it saves the frames that caused the stop"
            )
        self.committee = committee
        self.atomic_numbers = np.asarray(atomic_numbers, dtype=np.int64)
        self.atoms = None if atoms is None else np.asarray(atoms, dtype=np.int64)
        n_atoms = len(self.atomic_numbers)
        if self.atoms is not None and len(self.atoms) != n_atoms:
            raise ValueError(f"{len(self.atoms)} atom indices for {n_atoms} atomic numbers")
        self.path = Path(path)
        self.frames_path = Path(frames_path) if frames_path is not None else self.path.with_suffix(".xyz")
        self.interval = int(interval)
        self.save_threshold = save_threshold
        self.stop_threshold = stop_threshold
        self.columns = csv_columns(committee.energy_unit)
        existing = resume_step is not None and self.path.exists() and self.path.stat().st_size > 0
        self._rows = self._frames = 0
        if existing:
            self._rows = _cut_csv_after(self.path, resume_step)
            self._frames = _cut_xyz_after(self.frames_path, resume_step) if self.frames_path.exists() else 0
        self._handle = open(self.path, "a" if existing else "w", encoding="utf-8")
        if not existing:
            self._handle.write(",".join(self.columns) + "\n")
            self._handle.flush()
        self._frames_handle = open(self.frames_path, "a" if existing else "w", encoding="utf-8")

    @property
    def frames_saved(self) -> int:
        return self._frames

    def describeNextReport(self, simulation: app.Simulation) -> dict:
        steps = self.interval - simulation.currentStep % self.interval
        return {"steps": steps, "periodic": None, "include": ["positions"]}

    def report(self, simulation: app.Simulation, state: mm.State) -> None:
        positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer) * ANGSTROM_PER_NM
        if self.atoms is not None:
            positions = positions[self.atoms]
        box = None
        if simulation.system.usesPeriodicBoundaryConditions():
            box = np.asarray(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)) * ANGSTROM_PER_NM
        disagreement = self.committee.disagreement(self.atomic_numbers, positions, box)
        step = simulation.currentStep
        time_ps = state.getTime().value_in_unit(unit.picosecond)
        force_max = float(disagreement.force_std_max[0])
        saved = self.save_threshold is not None and force_max >= self.save_threshold
        if saved:
            self._write_frame(positions, box, step, time_ps, disagreement)
        row = [str(step), f"{time_ps:.6f}", repr(float(disagreement.energy_std[0])), repr(force_max),
               repr(float(disagreement.force_std_mean[0])), str(int(saved))]
        self._handle.write(",".join(row) + "\n")
        self._handle.flush()
        self._rows += 1
        if self.stop_threshold is not None and force_max > self.stop_threshold:
            raise UncertaintyLimitExceeded(step, force_max, self.stop_threshold, disagreement.force_unit)

    def _write_frame(
        self, positions: np.ndarray, box: np.ndarray | None, step: int, time_ps: float, disagreement: Disagreement
    ) -> None:
        lattice = "" if box is None else 'Lattice="' + " ".join(f"{v:.8f}" for v in box.reshape(-1)) + '" pbc="T T T" '
        comment = (
            f'{lattice}Properties=species:S:1:pos:R:3 step={step} time_ps={time_ps:.6f} '
            f"force_std_max={float(disagreement.force_std_max[0])!r} "
            f"energy_std={float(disagreement.energy_std[0])!r} energy_unit={disagreement.energy_unit}"
        )
        lines = [str(len(positions)), comment]
        lines += [
            f"{symbol(int(z)):2s} {x:.8f} {y:.8f} {zz:.8f}"
            for z, (x, y, zz) in zip(self.atomic_numbers, positions, strict=True)
        ]
        self._frames_handle.write("\n".join(lines) + "\n")
        self._frames_handle.flush()
        self._frames += 1

    def checkpoint_record(self) -> dict:
        """Flush both files and return their sizes and record counts for a checkpoint."""
        for handle in (self._handle, self._frames_handle):
            handle.flush()
        return {
            "bytes": self.path.stat().st_size,
            "rows": self._rows,
            "frames_bytes": self.frames_path.stat().st_size,
            "frames": self._frames,
        }

    def close(self, figure_path: str | Path | None = None) -> Path | None:
        """Close the files and draw the disagreement over time (default: ``path`` with ``.png``)."""
        self._handle.close()
        self._frames_handle.close()
        if self._rows == 0:
            return None
        return plot_disagreement(self.path, figure_path or self.path.with_suffix(".png"),
                                 save_threshold=self.save_threshold, stop_threshold=self.stop_threshold)


def _cut_csv_after(path: Path, step: int) -> int:
    """Cut the rows of steps after ``step`` from a reporter's CSV file; returns the rows kept."""
    offset, rows = 0, 0
    with open(path, "rb") as handle:
        offset = len(handle.readline())
        for line in handle:
            if line.strip() and int(line.split(b",", 1)[0]) > step:
                break
            offset += len(line)
            rows += bool(line.strip())
    truncate_output(path, offset)
    return rows


def _cut_xyz_after(path: Path, step: int) -> int:
    """Cut the frames of steps after ``step`` from a reporter's XYZ file; returns the frames kept."""
    offset, frames = 0, 0
    with open(path, "rb") as handle:
        while True:
            count = handle.readline()
            if not count.strip():
                break
            comment = handle.readline()
            body = b"".join(handle.readline() for _ in range(int(count)))
            frame_step = int(comment.split(b" step=", 1)[1].split(b" ", 1)[0])
            if frame_step > step:
                break
            offset += len(count) + len(comment) + len(body)
            frames += 1
    truncate_output(path, offset)
    return frames


def read_disagreement_csv(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a :class:`CommitteeReporter` CSV file as arrays (``step`` and ``saved`` as integers)."""
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or rows[0][:2] != ["step", "time_ps"] or not any(c.startswith("force_std_max_") for c in rows[0]):
        raise ValueError(f"{path} is not a committee disagreement file (written by CommitteeReporter)")
    header, body = rows[0], [row for row in rows[1:] if row]
    return {
        name: np.asarray([row[k] for row in body], dtype=np.int64 if name in ("step", "saved") else np.float64)
        for k, name in enumerate(header)
    }


def plot_disagreement(
    csv_path: str | Path,
    figure_path: str | Path,
    *,
    save_threshold: float | None = None,
    stop_threshold: float | None = None,
) -> Path:
    """PNG of the maximum and mean force disagreement over time from a reporter's CSV file."""
    columns = read_disagreement_csv(csv_path)
    force_max = next(name for name in columns if name.startswith("force_std_max_"))
    force_mean = next(name for name in columns if name.startswith("force_std_mean_"))
    force_unit = force_max.removeprefix("force_std_max_").replace("Angstrom", "Å")
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 3.5))
    axis.plot(columns["time_ps"], columns[force_max], lw=1, label="max over atoms")
    axis.plot(columns["time_ps"], columns[force_mean], lw=1, label="mean over atoms")
    for value, name, style in ((save_threshold, "save", "--"), (stop_threshold, "stop", ":")):
        if value is not None:
            axis.axhline(value, color="k", ls=style, lw=0.8, label=f"{name} threshold")
    axis.set_xlabel("time (ps)")
    axis.set_ylabel(f"committee force std ({force_unit})")
    axis.legend(fontsize=8)
    return save_figure(figure, figure_path)
