"""reuse_freed_memory: freed blocks stay in the heap (no page faults per step), and it stays out of the way
where the user chose otherwise. Each case is a fresh process: mallopt cannot be undone."""

from __future__ import annotations

import platform

import pytest
from conftest import page_faults_in_child

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)


def run_child(**environment: str) -> dict:
    return page_faults_in_child(
        "from so3krates_openmm.memory import reuse_freed_memory\napplied = reuse_freed_memory()", **environment
    )


def test_freed_pair_sized_blocks_are_reused_without_page_faults():
    default = run_child(SO3KRATES_MALLOPT="0")
    reused = run_child()
    assert not default["applied"] and reused["applied"]
    # 6 blocks of 2.6-7.9 MB per step: glibc's default returns the freed heap top to the kernel
    # and the next step faults it in again (about 3100 pages here).
    assert default["faults_per_step"] > 500
    assert reused["faults_per_step"] < 10


def test_user_allocator_settings_are_left_alone():
    assert not run_child(MALLOC_MMAP_THRESHOLD_="65536")["applied"]
    assert not run_child(MALLOC_TRIM_THRESHOLD_="0")["applied"]


def test_processes_started_afterwards_inherit_the_setting():
    """The thresholds go into the environment, where glibc finds them when a worker process starts."""
    from so3krates_openmm.memory import MALLOC_ENVIRONMENT

    parent = run_child()
    assert parent["applied"] and parent["environment"] == MALLOC_ENVIRONMENT
    child = run_child(**MALLOC_ENVIRONMENT)  # a worker started with the parent's environment
    assert child["applied"] and child["faults_per_step"] < 10
