"""Vibrational power spectrum from the velocity autocorrelation function (VACF).

The spectrum is the Fourier transform of the mass-weighted VACF

    C(t) = < sum_i m_i v_i(0) . v_i(t) > / < sum_i m_i v_i(0) . v_i(0) >,

averaged over all time origins (computed with FFTs, zero-padded, unbiased
normalisation), windowed with a Hann window over the lags used and
transformed as an even function. Frequencies are reported as wavenumbers in
cm^-1 (1 ps^-1 = 33.3564 cm^-1).

Velocities come either from a :class:`~so3krates_openmm.md.reporters.VelocityReporter`
file (the integrator's velocities) or from central finite differences of
positions (a DCD), which damps high frequencies by sinc(pi nu dt) -- the
velocity file is preferred; the CSV records which source was used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from so3krates_openmm.md.plotting import pyplot, save_figure

#: Speed of light in cm/ps: wavenumber (cm^-1) = frequency (1/ps) / this.
SPEED_OF_LIGHT_CM_PER_PS = 2.99792458e-2


@dataclass
class Spectrum:
    """A power spectrum: wavenumbers in cm^-1, intensity normalised to a maximum of 1."""

    wavenumber_cm: np.ndarray
    intensity: np.ndarray
    vacf: np.ndarray
    lag_ps: np.ndarray
    source: str

    def peak_wavenumbers(self, count: int = 5, minimum_cm: float = 50.0) -> np.ndarray:
        """The ``count`` highest local maxima above ``minimum_cm``, in cm^-1 (strongest first)."""
        y = self.intensity
        interior = (y[1:-1] > y[:-2]) & (y[1:-1] >= y[2:]) & (self.wavenumber_cm[1:-1] >= minimum_cm)
        indices = np.flatnonzero(interior) + 1
        indices = indices[np.argsort(y[indices])[::-1][:count]]
        return self.wavenumber_cm[indices]


def finite_difference_velocities(positions: np.ndarray, frame_interval_ps: float) -> np.ndarray:
    """Central differences (x[t+1] - x[t-1]) / (2 dt): velocities of frames 1..F-2, in position unit per ps."""
    positions = np.asarray(positions, dtype=np.float64)
    if positions.shape[0] < 3:
        raise ValueError("finite-difference velocities need at least 3 frames")
    return (positions[2:] - positions[:-2]) / (2.0 * frame_interval_ps)


def velocity_autocorrelation(
    velocities: np.ndarray, masses: np.ndarray | None = None, max_lag: int | None = None
) -> np.ndarray:
    """Normalised, mass-weighted VACF over lags 0..max_lag (frames), averaged over time origins.

    Args:
        velocities: (frames, atoms, 3), any unit.
        masses: (atoms,) weights; ``None`` weighs all atoms equally.
        max_lag: largest lag in frames (default: half the number of frames).
    """
    velocities = np.asarray(velocities, dtype=np.float64)
    n_frames = velocities.shape[0]
    if n_frames < 4:
        raise ValueError(f"a VACF needs at least 4 frames, got {n_frames}")
    max_lag = n_frames // 2 if max_lag is None else min(int(max_lag), n_frames - 1)
    weights = np.ones(velocities.shape[1]) if masses is None else np.asarray(masses, dtype=np.float64)
    size = 2 ** int(np.ceil(np.log2(2 * n_frames)))
    transformed = np.fft.rfft(velocities, n=size, axis=0)
    power = (transformed * transformed.conj()).real
    correlation = np.fft.irfft(np.einsum("fnk,n->f", power, weights), n=size)[: max_lag + 1]
    correlation /= n_frames - np.arange(max_lag + 1)
    if correlation[0] <= 0:
        raise ValueError("all velocities are zero: no VACF")
    return correlation / correlation[0]


def _cosine_transform(vacf: np.ndarray, frame_interval_ps: float, window: bool) -> tuple[np.ndarray, np.ndarray]:
    """Wavenumbers (cm^-1) and the unnormalised, unclipped cosine transform of a VACF (lags 0..L)."""
    vacf = np.asarray(vacf, dtype=np.float64)
    taper = np.hanning(2 * len(vacf) - 1)[len(vacf) - 1 :] if window else np.ones_like(vacf)
    tapered = vacf * taper
    # Transform of the even function c(|t|): c_0 + 2 sum_k c_k cos(2 pi nu k dt); zero padding
    # to 8 L gives a smoother curve at the same resolution.
    size = 8 * len(tapered)
    intensity = 2.0 * np.fft.rfft(tapered, n=size).real - tapered[0]
    return np.fft.rfftfreq(size, d=frame_interval_ps) / SPEED_OF_LIGHT_CM_PER_PS, intensity


def power_spectrum(vacf: np.ndarray, frame_interval_ps: float, *, window: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Cosine transform of a VACF (lags 0..L): wavenumbers (cm^-1) and intensity (max 1)."""
    wavenumber, intensity = _cosine_transform(vacf, frame_interval_ps, window)
    intensity = np.clip(intensity, 0.0, None)
    peak = intensity.max()
    return wavenumber, intensity / peak if peak > 0 else intensity


def group_spectra(
    velocities: np.ndarray,
    frame_interval_ps: float,
    masses: np.ndarray,
    groups: dict[str, np.ndarray],
    max_lag_ps: float | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The mass-weighted power spectrum split into the contributions of groups of atoms.

    Each group's VACF (its atoms' mass-weighted velocity correlation) is transformed as in
    :func:`vibrational_spectrum`; the contributions add up to the spectrum of all atoms in ``groups``
    (scaled to a maximum of 1), so the share of a group at a wavenumber says which atoms move in a band.
    Returns the wavenumbers (cm^-1) and the contribution of each group.
    """
    velocities = np.asarray(velocities, dtype=np.float64)
    masses = np.asarray(masses, dtype=np.float64)
    max_lag = None if max_lag_ps is None else round(max_lag_ps / frame_interval_ps)
    kinetic = {name: float(np.einsum("fnk,n->", velocities[:, atoms] ** 2, masses[atoms]))
               for name, atoms in groups.items()}
    total_kinetic = sum(kinetic.values())
    contributions = {}
    for name, atoms in groups.items():
        vacf = velocity_autocorrelation(velocities[:, atoms], masses[atoms], max_lag)
        wavenumber, contributions[name] = _cosine_transform(vacf * kinetic[name] / total_kinetic, frame_interval_ps,
                                                            window=True)
    peak = max(float(np.clip(sum(contributions.values()), 0.0, None).max()), np.finfo(float).tiny)
    return wavenumber, {name: np.clip(value, 0.0, None) / peak for name, value in contributions.items()}


def harmonic_vacf(frequencies_cm: np.ndarray, lag_ps: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Normalised VACF of independent harmonic modes with equal kinetic energy (equipartition), times ``weights``.

    The mass-weighted VACF of a harmonic system is ``sum_k w_k cos(2 pi c nu_k t)``; put through
    :func:`power_spectrum` with the lags of an MD spectrum, it gives the harmonic spectrum at the MD
    spectrum's resolution and line shape. Imaginary (negative) frequencies are left out.
    """
    frequencies_cm = np.asarray(frequencies_cm, dtype=np.float64)
    weights = np.ones_like(frequencies_cm) if weights is None else np.asarray(weights, dtype=np.float64)
    real = frequencies_cm > 0
    angular_per_ps = 2.0 * np.pi * SPEED_OF_LIGHT_CM_PER_PS * frequencies_cm[real]
    vacf = np.cos(np.outer(np.asarray(lag_ps, dtype=np.float64), angular_per_ps)) @ weights[real]
    return vacf / vacf[0] if vacf[0] > 0 else vacf


def harmonic_group_spectra(
    frequencies_cm: np.ndarray,
    group_weights: dict[str, np.ndarray],
    frame_interval_ps: float,
    max_lag_ps: float,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The harmonic counterpart of :func:`group_spectra` at an MD spectrum's resolution and line shape.

    ``group_weights[name][k]`` is the group's share of mode ``k``'s kinetic energy (the shares of all groups add
    up to 1 per mode); each group's contribution is the VACF of :func:`harmonic_vacf` with those weights through
    the same transform, window and lags as the MD spectrum, and the contributions add up to a maximum of 1.
    """
    lag_ps = np.arange(round(max_lag_ps / frame_interval_ps) + 1) * frame_interval_ps
    contributions = {}
    for name, weights in group_weights.items():
        weights = np.asarray(weights, dtype=np.float64)
        vacf = harmonic_vacf(frequencies_cm, lag_ps, weights) * weights[np.asarray(frequencies_cm) > 0].sum()
        wavenumber, contributions[name] = _cosine_transform(vacf, frame_interval_ps, window=True)
    peak = max(float(np.clip(sum(contributions.values()), 0.0, None).max()), np.finfo(float).tiny)
    return wavenumber, {name: np.clip(value, 0.0, None) / peak for name, value in contributions.items()}


def spectral_peaks(wavenumber_cm: np.ndarray, intensity: np.ndarray, prominence: float = 0.03,
                   minimum_cm: float = 50.0) -> np.ndarray:
    """Wavenumbers (cm^-1, increasing) of the peaks of a spectrum (max 1) with at least this prominence."""
    from scipy.signal import find_peaks

    indices, _ = find_peaks(np.asarray(intensity, dtype=np.float64), prominence=prominence)
    peaks = np.asarray(wavenumber_cm, dtype=np.float64)[indices]
    return peaks[peaks >= minimum_cm]


def match_peaks(
    reference_cm: np.ndarray,
    other_cm: np.ndarray,
    window_cm: float,
    compatible: Callable[[float, float], bool] | None = None,
) -> list[tuple[float, float | None]]:
    """Each reference peak with the nearest peak of ``other_cm`` within ``window_cm`` (else ``None``); every peak
    of ``other_cm`` is used at most once (closest pairs first), and only if ``compatible(reference, other)``
    (for example: the same atoms carry both bands) when given."""
    reference_cm, other_cm = np.asarray(reference_cm, dtype=np.float64), np.asarray(other_cm, dtype=np.float64)
    pairs = sorted((abs(r - o), i, j) for i, r in enumerate(reference_cm) for j, o in enumerate(other_cm)
                   if abs(r - o) <= window_cm and (compatible is None or compatible(float(r), float(o))))
    matched: dict[int, int] = {}
    used: set[int] = set()
    for _, i, j in pairs:
        if i not in matched and j not in used:
            matched[i] = j
            used.add(j)
    return [(float(r), float(other_cm[matched[i]]) if i in matched else None) for i, r in enumerate(reference_cm)]


def vibrational_spectrum(
    velocities: np.ndarray,
    frame_interval_ps: float,
    *,
    masses: np.ndarray | None = None,
    max_lag_ps: float | None = None,
    source: str = "velocities",
) -> Spectrum:
    """VACF and power spectrum of velocities (frames, atoms, 3) sampled every ``frame_interval_ps``."""
    max_lag = None if max_lag_ps is None else round(max_lag_ps / frame_interval_ps)
    vacf = velocity_autocorrelation(velocities, masses, max_lag)
    wavenumber, intensity = power_spectrum(vacf, frame_interval_ps)
    return Spectrum(wavenumber, intensity, vacf, np.arange(len(vacf)) * frame_interval_ps, source)


def write_spectrum_csv(path: str | Path, spectrum: Spectrum, max_wavenumber_cm: float = 4000.0) -> Path:
    """CSV with columns ``wavenumber_cm-1,intensity`` up to ``max_wavenumber_cm``; a comment line names the source."""
    path = Path(path)
    keep = spectrum.wavenumber_cm <= max_wavenumber_cm
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"# velocity source: {spectrum.source}\n")
        handle.write("wavenumber_cm-1,intensity\n")
        for x, y in zip(spectrum.wavenumber_cm[keep], spectrum.intensity[keep], strict=True):
            handle.write(f"{x:.3f},{y:.6e}\n")
    return path


def write_vacf_csv(path: str | Path, spectrum: Spectrum) -> Path:
    """CSV with columns ``lag_ps,vacf``."""
    path = Path(path)
    np.savetxt(path, np.stack([spectrum.lag_ps, spectrum.vacf], axis=1), delimiter=",", header="lag_ps,vacf",
               comments="", fmt="%.6g")
    return path


def plot_spectrum(spectrum: Spectrum, path: str | Path, max_wavenumber_cm: float = 4000.0, title: str = "") -> Path:
    """Power spectrum (top) and VACF (bottom)."""
    plt = pyplot()
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 5.6))
    keep = spectrum.wavenumber_cm <= max_wavenumber_cm
    top.plot(spectrum.wavenumber_cm[keep], spectrum.intensity[keep], lw=0.9)
    top.set_xlabel("wavenumber (cm$^{-1}$)")
    top.set_ylabel("intensity (normalised)")
    top.set_xlim(0, max_wavenumber_cm)
    top.set_title(title or f"Power spectrum from the VACF ({spectrum.source})")
    bottom.plot(spectrum.lag_ps, spectrum.vacf, lw=0.8)
    bottom.set_xlabel("lag (ps)")
    bottom.set_ylabel("VACF (normalised)")
    return save_figure(figure, path)
