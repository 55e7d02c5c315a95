"""Analyses and building blocks: spectrum, energy drift, DCD reading and truncation, catcher, platforms."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import openmm as mm
import pytest
from conftest import shared_file
from openmm import app, unit

from so3krates_openmm.data.structures import Structure, read_structure
from so3krates_openmm.data.trajectory import read_dcd
from so3krates_openmm.md.catcher import centroid_distances, identify_ball, pulled_out
from so3krates_openmm.md.energy import energy_drift
from so3krates_openmm.md.platforms import get_platform
from so3krates_openmm.md.reporters import (
    DCDReporter,
    VelocityReporter,
    read_velocities,
    truncate_dcd,
)
from so3krates_openmm.md.simulation import make_integrator, resolve_seed
from so3krates_openmm.md.spectrum import (
    SPEED_OF_LIGHT_CM_PER_PS,
    finite_difference_velocities,
    group_spectra,
    harmonic_group_spectra,
    match_peaks,
    spectral_peaks,
    vibrational_spectrum,
)

MASS_C, MASS_O = 12.0, 16.0
K_KJ_MOL_NM2 = 1.8e6  # C=O-like stretch


def diatomic_simulation(tmp_path: Path, steps: int, velocity_interval: int, dcd_interval: int):
    """NVE of a harmonic C-O pair, writing velocities and a DCD."""
    system = mm.System()
    system.addParticle(MASS_C)
    system.addParticle(MASS_O)
    bond = mm.HarmonicBondForce()
    bond.addBond(0, 1, 0.12, K_KJ_MOL_NM2)
    system.addForce(bond)
    topology = Structure([6, 8], [[0, 0, 0], [1.2, 0, 0]]).openmm_topology()
    simulation = app.Simulation(
        topology, system, make_integrator("nve", timestep_fs=0.25), mm.Platform.getPlatformByName("Reference")
    )
    simulation.context.setPositions([[0, 0, 0], [0.125, 0.01, 0]] * unit.nanometer)
    simulation.reporters.append(VelocityReporter(tmp_path / "v.vel", velocity_interval, 2, 0.25))
    simulation.reporters.append(DCDReporter(tmp_path / "x.dcd", dcd_interval, topology, 0.25))
    simulation.step(steps)
    for reporter in simulation.reporters:
        reporter.close()


def test_spectrum_peak_at_the_harmonic_frequency(tmp_path):
    diatomic_simulation(tmp_path, steps=8000, velocity_interval=2, dcd_interval=2)
    reduced = MASS_C * MASS_O / (MASS_C + MASS_O)
    expected_cm = math.sqrt(K_KJ_MOL_NM2 / reduced) / (2 * math.pi) / SPEED_OF_LIGHT_CM_PER_PS  # 1/ps -> cm^-1
    velocities, interval_ps = read_velocities(tmp_path / "v.vel")
    assert velocities.shape == (4000, 2, 3) and interval_ps == pytest.approx(0.0005)
    resolution_cm = 1 / (2 * 0.5) / SPEED_OF_LIGHT_CM_PER_PS
    spectrum = vibrational_spectrum(velocities, interval_ps, masses=np.array([MASS_C, MASS_O]), max_lag_ps=0.5)
    assert spectrum.peak_wavenumbers(1)[0] == pytest.approx(expected_cm, abs=resolution_cm)
    # Finite differences of positions find the same mode.
    trajectory = read_dcd(tmp_path / "x.dcd")
    from_positions = vibrational_spectrum(
        finite_difference_velocities(trajectory.positions_angstrom, trajectory.frame_interval_ps),
        trajectory.frame_interval_ps,
        max_lag_ps=0.5,
        source="positions",
    )
    assert from_positions.peak_wavenumbers(1)[0] == pytest.approx(expected_cm, abs=resolution_cm)


def test_group_spectra_add_up_and_match_the_harmonic_spectrum(tmp_path):
    """C-O: each atom's share of the stretch's kinetic energy is the other's mass fraction, in MD and harmonic."""
    diatomic_simulation(tmp_path, steps=8000, velocity_interval=2, dcd_interval=8000)
    velocities, interval_ps = read_velocities(tmp_path / "v.vel")
    masses = np.array([MASS_C, MASS_O])
    wavenumber, groups = group_spectra(velocities, interval_ps, masses, {"C": np.array([0]), "O": np.array([1])}, 0.5)
    total = vibrational_spectrum(velocities, interval_ps, masses=masses, max_lag_ps=0.5)
    np.testing.assert_allclose(groups["C"] + groups["O"], total.intensity, atol=1e-3)
    peak = int(np.argmax(total.intensity))
    assert groups["C"][peak] / total.intensity[peak] == pytest.approx(MASS_O / (MASS_C + MASS_O), abs=0.01)

    reduced = MASS_C * MASS_O / (MASS_C + MASS_O)
    expected_cm = math.sqrt(K_KJ_MOL_NM2 / reduced) / (2 * math.pi) / SPEED_OF_LIGHT_CM_PER_PS
    shares = {"C": np.array([MASS_O / (MASS_C + MASS_O)]), "O": np.array([MASS_C / (MASS_C + MASS_O)])}
    harmonic_wavenumber, harmonic = harmonic_group_spectra(np.array([expected_cm]), shares, interval_ps, 0.5)
    np.testing.assert_allclose(harmonic_wavenumber, wavenumber)
    harmonic_total = harmonic["C"] + harmonic["O"]
    assert harmonic_total.max() == pytest.approx(1.0)
    # same resolution and line shape: the harmonic and MD curves nearly coincide, one peak each, matched
    assert float(harmonic_total @ total.intensity) / float(np.linalg.norm(harmonic_total)
                                                           * np.linalg.norm(total.intensity)) > 0.98
    (md_cm,), (harmonic_cm,) = spectral_peaks(wavenumber, total.intensity), spectral_peaks(wavenumber, harmonic_total)
    assert match_peaks([harmonic_cm], [md_cm], window_cm=20.0) == [(harmonic_cm, md_cm)]
    assert abs(md_cm - expected_cm) < 20.0


def test_match_peaks_pairs_closest_first_and_uses_each_peak_once():
    assert match_peaks([100.0, 110.0, 500.0], [104.0, 300.0], window_cm=20.0) == [(100.0, 104.0), (110.0, None),
                                                                                   (500.0, None)]
    assert match_peaks([100.0], [], window_cm=20.0) == [(100.0, None)]
    # a rule on the pair (e.g. the same atoms carry both bands) can refuse the nearest peak
    assert match_peaks([100.0], [104.0, 115.0], 20.0, compatible=lambda ours, theirs: theirs > 110) == [(100.0, 115.0)]


def test_energy_drift_recovers_a_known_slope():
    time_ps = np.linspace(0.0, 20.0, 2001)
    rng = np.random.default_rng(0)
    energy = -500.0 + 0.004 * time_ps + rng.normal(0.0, 0.01, time_ps.size)  # 4 kJ/mol/ns
    drift = energy_drift(time_ps, energy, n_atoms=40)
    assert drift.drift_kj_mol_per_ns == pytest.approx(4.0, rel=0.05)
    assert drift.drift_kj_mol_per_ns_per_atom == pytest.approx(0.1, rel=0.05)
    assert drift.drift_mev_per_ps_per_atom == pytest.approx(0.004 / 0.0964853321 / 40, rel=0.05)
    assert drift.residual_std_kj_mol == pytest.approx(0.01, rel=0.1)
    with pytest.raises(ValueError, match="NaN"):
        energy_drift(time_ps, np.where(time_ps > 10, np.nan, energy), n_atoms=40)


def test_dcd_reader_matches_mdtraj_and_truncation_fixes_the_header(tmp_path, peptide_pdb):
    import mdtraj

    diatomic_simulation(tmp_path, steps=100, velocity_interval=50, dcd_interval=10)
    path = tmp_path / "x.dcd"
    trajectory = read_dcd(path)
    assert trajectory.n_frames == 10 and trajectory.first_step == 10 and trajectory.steps_between_frames == 10
    np.testing.assert_allclose(trajectory.times_ps, np.arange(1, 11) * 0.0025, rtol=1e-6)
    reference = mdtraj.load_dcd(
        str(path), top=mdtraj.Topology.from_openmm(Structure([6, 8], [[0, 0, 0], [1, 0, 0]]).openmm_topology())
    )
    np.testing.assert_allclose(trajectory.positions_angstrom, reference.xyz * 10, atol=1e-5)
    frame_bytes = 3 * (8 + 4 * 2)
    size = path.stat().st_size
    truncate_dcd(path, size - 4 * frame_bytes, 6, 10)
    cut = read_dcd(path)
    assert cut.n_frames == 6
    np.testing.assert_array_equal(cut.positions_angstrom, trajectory.positions_angstrom[:6])
    assert mdtraj.load_dcd(str(path), top=reference.topology).n_frames == 6
    with pytest.raises(ValueError, match="cannot be resumed"):
        truncate_dcd(path, size, 10, 10)

    thinned = trajectory.every(30)
    assert thinned.n_frames == 4 and thinned.steps_between_frames == 30 and thinned.first_step == 10
    np.testing.assert_array_equal(thinned.positions_angstrom, trajectory.positions_angstrom[::3])
    np.testing.assert_allclose(thinned.times_ps, trajectory.times_ps[::3])
    with pytest.raises(ValueError, match="give a multiple of 10"):
        trajectory.every(25)


def test_ball_found_by_residue_name_and_by_bond_graph(tmp_path, catcher_xyz):
    structure = read_structure(catcher_xyz)
    by_graph = identify_ball(structure)
    assert len(by_graph.ball) == 60 and np.all(structure.atomic_numbers[by_graph.ball] == 6)
    topology = app.Topology()
    chain = topology.addChain()
    residues = {"HST": topology.addResidue("HST", chain), "C60": topology.addResidue("C60", chain)}
    for index, z in enumerate(structure.atomic_numbers):
        name = "C60" if index in set(by_graph.ball.tolist()) else "HST"
        topology.addAtom(f"A{index}", app.Element.getByAtomicNumber(int(z)), residues[name])
    named = Structure(structure.atomic_numbers, structure.positions_angstrom, topology=topology, source="named")
    by_name = identify_ball(named, "C60")
    np.testing.assert_array_equal(by_name.ball, by_graph.ball)
    assert centroid_distances(structure.positions_angstrom[None], by_name)[0] == pytest.approx(6.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"no residue named 'BALL'; residues are \['C60', 'HST'\]"):
        identify_ball(named, "BALL")
    with pytest.raises(ValueError, match="no connected component of 60 carbon atoms"):
        identify_ball(Structure(structure.atomic_numbers[:30], structure.positions_angstrom[:30]))
    # Pulled out rigidly: the centroid distance grows by each shift, the host and the ball's shape stay.
    frames = pulled_out(structure.positions_angstrom, by_graph, np.array([-0.5, 0.0, 2.0]))
    np.testing.assert_allclose(centroid_distances(frames, by_graph), [5.5, 6.0, 8.0], atol=1e-9)
    np.testing.assert_array_equal(frames[:, by_graph.host], np.repeat(structure.positions_angstrom[None, by_graph.host],
                                                                      3, axis=0))
    shift = frames[2, by_graph.ball] - frames[0, by_graph.ball]  # one vector for every ball atom: rigid
    np.testing.assert_allclose(shift, np.broadcast_to(shift[0], shift.shape), atol=1e-12)
    assert np.linalg.norm(shift[0]) == pytest.approx(2.5)


def test_platform_choice_and_clear_errors():
    platform, properties = get_platform("cpu", threads=1)
    assert platform.getName() == "CPU" and properties == {"Threads": "1"}
    import torch

    try:
        platform, properties = get_platform("Reference", threads=2)
        assert platform.getName() == "Reference" and properties == {}
        assert torch.get_num_threads() == 2  # PyTorch's threads follow the requested count
    finally:
        torch.set_num_threads(1)  # the suite's setting (tests/conftest.py)
    available = [mm.Platform.getPlatform(i).getName() for i in range(mm.Platform.getNumPlatforms())]
    if "CUDA" not in available:
        with pytest.raises(
            ValueError, match=r"'CUDA' is not available on this machine; available platforms: Reference, CPU"
        ):
            get_platform("CUDA")
    with pytest.raises(ValueError, match="unknown OpenMM platform 'Metal'"):
        get_platform("Metal")
    with pytest.raises(ValueError, match="threads must be at least 1"):
        get_platform("CPU", threads=0)


def test_seeds_and_integrators():
    assert resolve_seed(17) == 17
    assert 1 <= resolve_seed(None) < 2**31
    with pytest.raises(ValueError, match="seed must be between 1"):
        resolve_seed(0)
    langevin = make_integrator("nvt", temperature_K=310, friction_per_ps=2.0, timestep_fs=1.0, seed=5)
    assert isinstance(langevin, mm.LangevinMiddleIntegrator) and langevin.getRandomNumberSeed() == 5
    assert langevin.getFriction().value_in_unit(unit.picosecond**-1) == pytest.approx(2.0)
    assert langevin.getStepSize().value_in_unit(unit.femtosecond) == pytest.approx(1.0)
    assert isinstance(make_integrator("NVE", timestep_fs=0.5), mm.VerletIntegrator)
    with pytest.raises(ValueError, match="unknown ensemble 'npt'"):
        make_integrator("npt")


def test_minima_deduplication_superposes_and_rejects_broken_molecules(peptide_pdb):
    from so3krates_openmm.md.minima import MinimizedSnapshot, deduplicate

    structure = read_structure(peptide_pdb)
    x = structure.positions_angstrom
    angle = 0.7
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    moved = x @ rotation.T + np.array([3.0, -1.0, 2.0])  # same minimum, rotated and translated
    terminal = [a.index for a in structure.topology.atoms() if a.residue.name == "NME"]
    other = x.copy()
    other[terminal] += np.array([0.0, 0.0, 0.6])  # the NME cap moved: another geometry, its C-N bond below 1.5x
    broken = x.copy()
    broken[0] += np.array([5.0, 0.0, 0.0])  # an ACE hydrogen torn off
    snapshots = [
        MinimizedSnapshot(0, 100, -10.0, moved),
        MinimizedSnapshot(1, 200, -12.0, x),
        MinimizedSnapshot(2, 300, -5.0, other),
        MinimizedSnapshot(3, 400, -20.0, broken),
        MinimizedSnapshot(4, 500, float("nan"), x),
    ]
    minima, rejected = deduplicate(snapshots, structure, rmsd_threshold_angstrom=0.1)
    assert [m.energy_kj_mol for m in minima] == [-12.0, -5.0]
    assert minima[0].snapshots == [1, 0] and minima[0].steps == [200, 100]
    assert minima[1].snapshots == [2]
    assert sorted(s.index for s in rejected) == [3, 4]
    assert any("stretched" in s.problem for s in rejected) and any("nan" in s.problem for s in rejected)


def test_minima_with_a_new_bond_are_rejected():
    """Two waters whose oxygens sit 1.25 Å apart, every O-H bond intact: not a conformer (the peptide model's
    torsion search found such O-O minima the reference puts 200 kcal/mol higher)."""
    from so3krates_openmm.data.builders import build_water
    from so3krates_openmm.md.minima import MinimizedSnapshot, deduplicate

    structure = build_water(2)
    x = structure.positions_angstrom.copy()
    oxygens = np.flatnonzero(structure.atomic_numbers == 8)
    first, second = x[:3], x[3:]
    far = second - second.mean(0) + first.mean(0) + np.array([0.0, 0.0, 8.0])
    assert oxygens.tolist() == [0, 3]
    near = second - second[0] + first[0] + np.array([0.0, 0.0, 1.25])
    # 1.59 Å, 1.20x the covalent radii: what the peptide model's round-4 search kept as two minima
    slipped = second - second[0] + first[0] + np.array([0.0, 0.0, 1.59])
    snapshots = [MinimizedSnapshot(0, 0, -1.0, np.concatenate([first, far])),
                 MinimizedSnapshot(1, 1, -2.0, np.concatenate([first, near])),
                 MinimizedSnapshot(2, 2, -3.0, np.concatenate([first, slipped]))]
    minima, rejected = deduplicate(snapshots, structure)
    assert len(minima) == 1 and minima[0].snapshots == [0]
    assert sorted(s.index for s in rejected) == [1, 2]
    assert all("new bond" in s.problem and "within covalent-bond distance" in s.problem for s in rejected)


def test_rejected_structures_are_written_for_labelling(tmp_path):
    """``write_minima`` puts the rejected structures with finite coordinates into ``rejected.pdb`` (what active
    learning labels), and removes an earlier one when nothing is rejected."""
    from so3krates_openmm.data.builders import build_water
    from so3krates_openmm.data.labelling import read_frames
    from so3krates_openmm.md.minima import MinimizedSnapshot, Minimum, write_minima

    structure = build_water(2)
    x = structure.positions_angstrom
    moved = x + np.array([0.0, 0.0, 0.3])
    rejected = [MinimizedSnapshot(1, 1, -2.0, moved, problem="new bond O1-O4"),
                MinimizedSnapshot(2, 2, float("nan"), np.full_like(x, np.nan), problem="non-finite")]
    minima = [Minimum(-1.0, x, [0], [0])]
    paths = write_minima(tmp_path, minima, rejected, structure, {"snapshots": 3})
    frames = read_frames(paths["rejected.pdb"])
    assert frames.positions.shape == (1, 6, 3)
    np.testing.assert_allclose(frames.positions[0], moved, rtol=0, atol=6e-4)  # PDB: 3 decimals
    summary = json.loads(paths["minima.json"].read_text())
    assert summary["rejected_snapshots"] == 2 and summary["rejected_structures_written"] == 1
    assert "rejected.pdb" not in write_minima(tmp_path, minima, [], structure, {"snapshots": 1})
    assert not (tmp_path / "rejected.pdb").exists()


def test_ball_found_in_the_published_buckyball_catcher():
    structure = read_structure(shared_file("data/buckycatcher_reference.xyz"))
    atoms = identify_ball(structure)
    assert len(atoms.ball) == 60 and len(atoms.host) == 88
    assert np.all(structure.atomic_numbers[atoms.host][structure.atomic_numbers[atoms.host] != 6] == 1)
    distance = centroid_distances(structure.positions_angstrom[None], atoms)[0]
    radius = np.linalg.norm(
        structure.positions_angstrom[atoms.ball] - structure.positions_angstrom[atoms.ball].mean(0), axis=1
    ).mean()
    assert 3.5 < radius < 3.6  # C60
    # The ball sits in the cleft (4.9 Å from the catcher's centroid in this geometry); a ball
    # resting outside would be at least its radius plus a carbon contact (~7 Å) away.
    assert 4.0 < distance < 6.0
