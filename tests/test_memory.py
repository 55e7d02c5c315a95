"""reuse_freed_memory: freed blocks stay in the heap (no page faults per step), and it stays out of the way
where the user chose otherwise. Each case is a fresh process: mallopt cannot be undone."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)

CHILD = """
import json, resource
import numpy as np
from so3krates_openmm.memory import reuse_freed_memory
applied = reuse_freed_memory()
def step():  # like one model evaluation: pair-sized arrays held together, written, then all freed
    blocks = [np.ones((5000, 132 * (1 + k % 3)), dtype=np.float32) for k in range(6)]
    del blocks
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults_per_step": faults / 50}))
"""


def run_child(**environment: str) -> dict:
    env = {
        key: value for key, value in os.environ.items() if not key.startswith("MALLOC_") and key != "SO3KRATES_MALLOPT"
    }
    env.update(environment)
    output = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


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
