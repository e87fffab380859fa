# Set-up and the two everyday commands. Both are idempotent: a second run reuses what exists.
#
#   make run     set up, then run the workflow on the embedded default (config.yaml)
#   make test    set up, then run the test suite (what CI runs)

PYTHON ?= python3
VENV   ?= .venv
CORES  ?= 2
STAMP  := $(VENV)/.dfnas-installed
BIN    := $(VENV)/bin

.PHONY: setup data slurm run test clean

setup: $(STAMP)

# The virtualenv, dfnas (editable) and every dependency of pyproject.toml, tests and the SLURM
# executor plugin included.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,slurm]'
	touch $@

# Fashion-MNIST for the embedded default: Debian packages it; without root or apt, the data stage
# downloads it into resources/data instead.
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) || \
	     echo "note: apt-get could not install dataset-fashion-mnist; dfnas will try to download it"; \
	  else echo "note: Fashion-MNIST is not installed system-wide; dfnas will download it into resources/data"; fi; \
	fi

# SLURM and munge for tests/test_slurm.py, which starts a single-node cluster with
# scripts/slurm-cluster: Debian packages them; without root or apt-get that test skips.
slurm:
	@if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 || \
	    ! command -v munged >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1 || \
	     (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null)) || \
	     echo "note: apt-get could not install slurm-wlm and munge; tests/test_slurm.py will skip"; \
	  else echo "note: SLURM is not installed and this is not root with apt-get; tests/test_slurm.py will skip"; fi; \
	fi

# The local profile reruns the jobs an interrupted run left incomplete (README: "When a run is
# interrupted"), so a second `make run` after Ctrl-C goes on where the first stopped.
run: setup data
	$(BIN)/snakemake --profile workflow/profiles/local --cores $(CORES)

# One test process per core; worksteal keeps the long whole-workflow tests from ending up queued
# behind each other on one process.
test: setup data slurm
	$(BIN)/python -m pytest -n auto --dist worksteal

clean:
	rm -rf results .snakemake
