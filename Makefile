# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both build the virtual environment .venv first when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= runs/demo
# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning threads
# make PyTorch many times slower (bench/RESULTS.md).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: venv demo lint test test-all bench clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	# the fused C++ kernels of the fast path, compiled once into ~/.cache (needs g++; optional)
	$(PY) -c "from so3krates_openmm.model import kernels; kernels.load()" || echo "fused kernels not built: --kernels fused unavailable"
	touch $(STAMP)

venv: $(STAMP)

# A short Langevin MD (1 ps at 300 K, 0.5 fs steps) of Ac-Ala3-NHMe with the shipped model on the CPU platform.
demo: $(STAMP)
	$(PY) md_protocols/langevin_nvt.py --system ac_ala3_nhme --steps 2000 --platform CPU --threads 1 --seed 1 --output $(DEMO_DIR) --overwrite

# Ruff (ruff.toml): pyflakes, pycodestyle, import order, bugbear, pyupgrade.
lint: $(STAMP)
	$(PY) -m ruff check .

# The linter, then the test suite (fast, CPU only); benchmarks live in bench/.
# Tests that pin the shipped data and models are marked `artifacts` (`-m artifacts` selects them).
test: lint
	$(PY) -m pytest -q tests

# Also the tests marked slow.
test-all: lint
	$(PY) -m pytest -q -m "" tests

bench: $(STAMP)
	$(PY) bench/step_time.py

clean:
	rm -rf $(VENV) runs .pytest_cache
