# One command each: `make test` (what CI runs) and `make demo`. Both create the venv when missing.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.flowtts-installed

.PHONY: test demo bench lint cluster-demo cluster-up

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, so nothing else picks the torch build; the lock keeps every other version fixed.
	$(PY) -m pip install -q -c requirements.lock torch==2.11.0 torchaudio==2.11.0
	$(PY) -m pip install -q -c requirements.lock -e ".[dev,eval-models]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) scripts/demo.py

# A local autoscaling Ray cluster (Ray's fake multi-node provider): watch cpu_worker nodes join and leave.
cluster-demo: $(STAMP)
	$(PY) scripts/cluster_demo.py

# The same cluster, kept up for your own jobs until Ctrl-C (it prints the addresses).
cluster-up: $(STAMP)
	$(PY) scripts/cluster_demo.py --tasks 0 --keep

LINT_DIRS := platform data_pipelines jobs serve trainer tests bench scripts

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_DIRS)
	$(VENV)/bin/ruff format --check $(LINT_DIRS)
	$(VENV)/bin/hadolint Dockerfile
