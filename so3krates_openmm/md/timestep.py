"""Is a longer time step safe? Sampled distributions against a reference run, and the verdict.

A run with a longer time step (usually with repartitioned hydrogen masses,
``--hydrogen-mass``) is compared with a reference run at a short time step on
three counts (issue "Fast step", item 4):

- it stays stable (stable fraction 1 under the stability monitor);
- its NVE energy drift per atom per ns (:func:`~so3krates_openmm.md.energy.energy_drift`)
  is within ``max_drift_ratio`` (2x) of the reference run's;
- it samples the same configurations: the Jensen-Shannon divergence between
  histograms of an observable (the peptide's phi/psi, the catcher's C60 distance)
  of the two runs is no larger than the *noise floor*, the divergence between the
  two halves of the reference run. Each half has half the samples, so for two
  samples of one distribution the expected divergence of the halves is about
  twice that of two full runs: the floor allows for the sampling noise of the
  comparison itself, no more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.spatial.distance import jensenshannon

#: Largest |NVE drift| of a run relative to the reference run's for the time step to count as safe.
MAX_DRIFT_RATIO = 2.0

Histogram = Callable[[np.ndarray], np.ndarray]


def jensen_shannon_divergence(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """Jensen-Shannon divergence (bits, 0 for equal distributions, 1 for disjoint ones) of two histograms.

    The counts (any shape, the same for both) are normalised to probabilities first.
    """
    p = np.asarray(p_counts, dtype=np.float64).ravel()
    q = np.asarray(q_counts, dtype=np.float64).ravel()
    if p.shape != q.shape:
        raise ValueError(f"the histograms have different bins: {np.shape(p_counts)} vs {np.shape(q_counts)}")
    if p.sum() <= 0 or q.sum() <= 0 or np.any(p < 0) or np.any(q < 0):
        raise ValueError("histograms need non-negative counts and at least one sample each")
    return float(jensenshannon(p, q, base=2.0) ** 2)


def mean_divergence(p_histograms: np.ndarray, q_histograms: np.ndarray) -> float:
    """Mean Jensen-Shannon divergence (bits) over the leading axis: one histogram per residue, say."""
    if len(p_histograms) != len(q_histograms) or len(p_histograms) == 0:
        raise ValueError(f"need the same non-zero number of histograms, got {len(p_histograms)} and "
                         f"{len(q_histograms)}")
    return float(np.mean([jensen_shannon_divergence(p, q) for p, q in zip(p_histograms, q_histograms, strict=True)]))


def ramachandran_histograms(phi_deg: np.ndarray, psi_deg: np.ndarray, bin_deg: float = 20.0) -> np.ndarray:
    """(phi, psi) counts per residue on a periodic grid of ``bin_deg`` degree bins from -180 to 180.

    ``phi_deg`` and ``psi_deg`` are (frames, residues), as in
    :class:`~so3krates_openmm.md.ramachandran.Dihedrals`; returns (residues, bins, bins).
    """
    phi = np.asarray(phi_deg, dtype=np.float64)
    psi = np.asarray(psi_deg, dtype=np.float64)
    if phi.shape != psi.shape or phi.ndim != 2:
        raise ValueError(f"phi and psi must be (frames, residues) arrays of one shape, got {phi.shape}, {psi.shape}")
    n_bins = round(360.0 / bin_deg)
    if n_bins < 1 or abs(n_bins * bin_deg - 360.0) > 1e-9:
        raise ValueError(f"bin_deg must divide 360 degrees, got {bin_deg}")
    edges = np.linspace(-180.0, 180.0, n_bins + 1)
    wrap = lambda angle: (angle + 180.0) % 360.0 - 180.0  # noqa: E731  (180 deg is -180 deg)
    return np.stack([np.histogram2d(wrap(phi[:, k]), wrap(psi[:, k]), bins=(edges, edges))[0]
                     for k in range(phi.shape[1])])


def distance_edges(samples: list[np.ndarray], bin_width: float) -> np.ndarray:
    """Common histogram edges of width ``bin_width`` covering every sample of every run."""
    values = np.concatenate([np.ravel(s) for s in samples])
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError("need finite samples to place histogram bins")
    low = np.floor(values.min() / bin_width) * bin_width
    high = max(np.ceil(values.max() / bin_width) * bin_width, low + bin_width)
    return np.arange(low, high + 0.5 * bin_width, bin_width)


@dataclass
class DistributionDifference:
    """Jensen-Shannon divergence (bits) of a run's histograms from the reference run's, and the noise floor
    (the divergence between the two halves of the reference run)."""

    divergence_bits: float
    noise_floor_bits: float
    frames: int
    reference_frames: int

    @property
    def within_noise(self) -> bool:
        return self.divergence_bits <= self.noise_floor_bits

    def to_dict(self) -> dict:
        return {**asdict(self), "within_noise": self.within_noise}


def halves_divergence(samples: np.ndarray, histogram: Histogram) -> float:
    """Mean divergence (bits) between the histograms of the first and the second half of ``samples`` (frames first)."""
    half = len(samples) // 2
    if half < 1:
        raise ValueError(f"need at least two frames to split into halves, got {len(samples)}")
    return mean_divergence(histogram(samples[:half]), histogram(samples[half:2 * half]))


def compare_distributions(reference: np.ndarray, samples: np.ndarray, histogram: Histogram) -> DistributionDifference:
    """How far the distribution of ``samples`` is from that of ``reference`` (both frames first).

    ``histogram`` maps samples to counts with a leading axis (e.g. one histogram per
    residue: :func:`ramachandran_histograms`), the same bins for every call.
    """
    if len(samples) == 0:
        raise ValueError("the run has no frames to compare")
    return DistributionDifference(
        divergence_bits=mean_divergence(histogram(reference), histogram(samples)),
        noise_floor_bits=halves_divergence(reference, histogram),
        frames=len(samples),
        reference_frames=len(reference),
    )


@dataclass
class TimestepVerdict:
    """Whether a time step is safe, and each reason it is not."""

    safe: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return "safe" if self.safe else "unsafe"


def timestep_verdict(
    *,
    stable_fraction: float,
    drift_ratio: float | None,
    distributions: DistributionDifference | None,
    max_drift_ratio: float = MAX_DRIFT_RATIO,
) -> TimestepVerdict:
    """The issue's rule: stable, |NVE drift| within ``max_drift_ratio`` of the reference run's, and sampled
    distributions no further from the reference than its own halves are from each other.

    ``drift_ratio`` or ``distributions`` ``None`` (not measured, e.g. the run broke before its NVE part) is unsafe.
    """
    reasons = []
    if stable_fraction < 1.0:
        reasons.append(f"unstable (stable fraction {stable_fraction:.3f})")
    if drift_ratio is None:
        reasons.append("no NVE drift measured")
    elif not drift_ratio <= max_drift_ratio:
        reasons.append(f"NVE drift {drift_ratio:.2f}x the reference run's (limit {max_drift_ratio:g}x)")
    if distributions is None:
        reasons.append("no sampled distribution")
    elif not distributions.within_noise:
        reasons.append(f"distribution differs by {distributions.divergence_bits:.4f} bits (noise floor "
                       f"{distributions.noise_floor_bits:.4f})")
    return TimestepVerdict(not reasons, reasons)


def drift_standard_error(time_ps: np.ndarray, total_energy_kj_mol: np.ndarray, n_atoms: int,
                         blocks: int = 4) -> float:
    """Standard error (kJ/mol per ns per atom) of the NVE drift of :func:`~so3krates_openmm.md.energy.energy_drift`.

    The slope is fitted on ``blocks`` consecutive blocks; for noise correlated over times
    shorter than a block, a slope's standard error scales as (duration)^-3/2, so that of
    the whole run is the spread of the block slopes divided by ``blocks`` ** 1.5. A drift
    is only resolved when it is several times this.
    """
    from so3krates_openmm.md.energy import energy_drift

    time_ps = np.asarray(time_ps, dtype=np.float64)
    energy = np.asarray(total_energy_kj_mol, dtype=np.float64)
    size = len(time_ps) // blocks
    if blocks < 2 or size < 2:
        raise ValueError(f"need at least 2 blocks of 2 samples, got {len(time_ps)} samples in {blocks} blocks")
    slopes = [energy_drift(time_ps[k * size:(k + 1) * size], energy[k * size:(k + 1) * size],
                           n_atoms).drift_kj_mol_per_ns_per_atom for k in range(blocks)]
    return float(np.std(slopes, ddof=1) / blocks ** 1.5)


def drift_ratio(drift: float, reference_drift: float) -> float:
    """|drift| / |reference drift| (inf when the reference drift is exactly zero and the other is not)."""
    if reference_drift == 0.0:
        return 0.0 if drift == 0.0 else float("inf")
    return abs(drift) / abs(reference_drift)
