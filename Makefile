# xai_bench: every target creates or reuses the local virtual environment itself.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.xai_bench-installed
PYTEST_ARGS ?=
# test workers (pytest-xdist): one per core; a file's tests stay on one worker, so module-scoped
# fixtures (a trained run) are built once. WORKERS=0 runs in one process.
WORKERS ?= auto
XDIST := $(if $(filter 0,$(WORKERS)),,-n $(WORKERS) --dist loadfile)
# this machine's pip config lists local index folders that may not exist: drop that noise
PIP_NOISE := is ignored: it is neither
export PIP_ROOT_USER_ACTION := ignore
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test test-fast lint format bench docs docs-serve clean clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing torch + torchvision (the registry's default pair) and xai_bench[dev] into $(VENV)"
	set -o pipefail; $(PY) -m pip install -q torch torchvision 2>&1 | { grep -v "$(PIP_NOISE)" || true; }
	set -o pipefail; $(PY) -m pip install -q -e '.[dev]' 2>&1 | { grep -v "$(PIP_NOISE)" || true; }
	@# lxt (the AttnLRP oracle in tests/test_explain_attnlrp.py) without its declared deps
	@# (transformers, bitsandbytes, open_clip): the modules the test loads need only torch
	set -o pipefail; $(PY) -m pip install -q --no-deps lxt==2.1 2>&1 | { grep -v "$(PIP_NOISE)" || true; }
	@$(PY) -c "import torch, torchvision, timm, pytorch_lightning, hydra, wandb, albumentations" \
		|| { echo "error: the environment in $(VENV) is broken (see above); run 'make clean-venv install'"; exit 1; }
	@touch $(STAMP)

install: $(STAMP)

# The main job, end to end on the built-in synthetic dataset (a tiny ViT, W&B offline, a few
# minutes on a CPU): train, evaluate the methods, write the report (scripts/demo.sh).
demo: install
	PY=$(PY) bash scripts/demo.sh

# The whole test suite (slow tests included: real training runs, DDP, sweeps).
test: install
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check xai_bench tests scripts

format: install
	$(PY) -m ruff check --fix xai_bench tests scripts

# Speed against bare PyTorch and the peer libraries (minutes on a CPU; see docs/benchmarks.md).
bench: install
	$(PY) scripts/bench_train.py
	$(PY) scripts/bench_explain.py
	$(PY) scripts/bench_metrics.py
	$(PY) scripts/bench_atcon.py

# The documentation site (docs/ + mkdocs.yml) into site/; --strict: a broken link fails the build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -d site

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

clean:
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache wandb multirun
	find . -name __pycache__ -not -path "./$(VENV)/*" -exec rm -rf {} +

clean-venv:
	rm -rf $(VENV)
