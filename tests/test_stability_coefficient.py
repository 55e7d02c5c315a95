"""The stability coefficient of Fu et al. on crafted trajectories."""

from __future__ import annotations

import numpy as np
import pytest

from so3krates_openmm.md.stability import stability_coefficient

#: A chain of three atoms with two 1.5 Å bonds.
CHAIN = np.array([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0], [3.0, 0.0, 0.0]])
BONDS = np.array([[0, 1], [1, 2]])
EQUILIBRIUM = np.array([1.5, 1.5])


def trajectory(n_frames: int, stretch_frame: int | None, stretch: float) -> tuple[np.ndarray, np.ndarray]:
    """``n_frames`` frames 0.1 ps apart (first at 0.1 ps); from ``stretch_frame`` on, bond 1-2 is longer."""
    frames = np.repeat(CHAIN[None], n_frames, axis=0)
    if stretch_frame is not None:
        frames[stretch_frame:, 2, 0] += stretch
    return frames, 0.1 * np.arange(1, n_frames + 1)


def test_a_bond_stretched_by_0_6_angstrom_at_a_known_frame() -> None:
    frames, times = trajectory(100, 40, 0.6)  # frame 40 is at 4.1 ps; the last good frame at 4.0 ps
    assert stability_coefficient(frames, times, 10.0, BONDS, EQUILIBRIUM) == pytest.approx(0.4)


def test_a_stretch_below_the_tolerance_and_compression_count_alike() -> None:
    frames, times = trajectory(100, 40, 0.4)
    assert stability_coefficient(frames, times, 10.0, BONDS, EQUILIBRIUM) == 1.0
    frames, times = trajectory(100, 25, -0.7)  # a bond shortened by 0.7 Å fails too
    assert stability_coefficient(frames, times, 10.0, BONDS, EQUILIBRIUM) == pytest.approx(0.25)


def test_failure_at_the_first_frame_and_a_run_that_ended_early() -> None:
    frames, times = trajectory(100, 0, 0.6)
    assert stability_coefficient(frames, times, 10.0, BONDS, EQUILIBRIUM) == 0.0
    frames, times = trajectory(50, None, 0.0)  # 5 ps of a requested 10 ps, no failure
    assert stability_coefficient(frames, times, 10.0, BONDS, EQUILIBRIUM) == pytest.approx(0.5)


def test_periodic_bond_across_the_box_is_intact() -> None:
    box = np.diag([10.0, 10.0, 10.0])
    frames, times = trajectory(10, None, 0.0)
    frames[:, 2, 0] -= 10.0  # atom 2 shown in the neighbouring image: the bond is still 1.5 Å
    assert stability_coefficient(frames, times, 1.0, BONDS, EQUILIBRIUM, box_angstrom=box) == 1.0
    assert stability_coefficient(frames, times, 1.0, BONDS, EQUILIBRIUM) == 0.0


def test_bad_input_is_named() -> None:
    frames, times = trajectory(10, None, 0.0)
    with pytest.raises(ValueError, match="equilibrium lengths"):
        stability_coefficient(frames, times, 1.0, BONDS, EQUILIBRIUM[:1])
    with pytest.raises(ValueError, match="increase"):
        stability_coefficient(frames, times[::-1], 1.0, BONDS, EQUILIBRIUM)
