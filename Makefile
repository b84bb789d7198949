# The two commands of the README:  `make demo`  and  `make test`.
# Both set up a virtual environment first (once; again when pyproject.toml changes).
#
# TORCH is what gets installed as PyTorch before the package. The default is a CPU-only build
# available on the project's CI machines; on a GPU machine install your CUDA build instead:
#   make setup TORCH="torch"        (or any pip requirement, e.g. a wheel path)
#   make setup TORCH=                (skip: keep a torch already in the venv)

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.augment-installed

.PHONY: setup setup-nnunet demo test test-slow test-gpu lint bench clean-demo

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, so the package's torch range is already met and no CUDA build is pulled in
	if [ -n "$(TORCH)" ]; then $(BIN)/python -m pip install --quiet "$(TORCH)"; fi
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

## Run the whole pipeline on the built-in demo data (phantoms -> ... -> reports/).
demo: setup
	PATH="$(abspath $(BIN)):$$PATH" dvc repro
	@echo "Done. Open reports/report.html; the numbers are in reports/metrics.json (dvc metrics show)."

## Run the test suite (fast tests; slow and GPU tests are separate).
test: setup
	$(BIN)/python -m pytest -q

# nnU-Net v2 in an environment of its own, as users keep it: the slow tests run its dataset checks
# on what `augment sample` writes. Its own dependencies pull PyPI's torchvision, which does not
# import beside a CPU build of torch, so it stays out of $(VENV).
NNUNET_VENV ?= .venv-nnunet
NNUNET_STAMP = $(NNUNET_VENV)/.nnunet-installed

setup-nnunet: $(NNUNET_STAMP)

$(NNUNET_STAMP):
	test -x $(NNUNET_VENV)/bin/python || $(PYTHON) -m venv $(NNUNET_VENV)
	$(NNUNET_VENV)/bin/python -m pip install --quiet --upgrade pip
	if [ -n "$(TORCH)" ]; then $(NNUNET_VENV)/bin/python -m pip install --quiet "$(TORCH)"; fi
	$(NNUNET_VENV)/bin/python -m pip install --quiet "nnunetv2>=2.5" $(if $(TORCH),"$(TORCH)",)
	touch $@

test-slow: setup setup-nnunet
	AUGMENT_NNUNET_BIN="$(abspath $(NNUNET_VENV))/bin" $(BIN)/python -m pytest -q -m slow

test-gpu: setup
	$(BIN)/python -m pytest -q -m gpu

lint: setup
	$(BIN)/ruff check augment tests benchmarks
	$(BIN)/ruff format --check augment tests benchmarks
	$(BIN)/mypy

bench: setup
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done
