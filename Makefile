# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv on first use and installs
# exactly the versions pinned in requirements.lock (with their hashes): no resolver runs at install time.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
# The CPU build of torch lies on CI and development machines' disk; elsewhere it comes from PyTorch's CPU index.
TORCH_WHEELS ?= $(if $(wildcard /opt/wheels/torch-*),/opt/wheels,https://download.pytorch.org/whl/cpu/torch/)
UV_FLAGS := --python $(BIN)/python --find-links $(TORCH_WHEELS)
# What the lock is compiled for: CI's and the demo's machines (Linux x86_64, CPython 3.11).
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-manylinux_2_28

.PHONY: demo test test-fast lint typecheck format lock bench clean

# uv itself, at the version and hash the lock pins (the machine's own pip only installs this one wheel).
$(BIN)/uv: $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	awk '/^uv==/{p=1} p && /^ +#/{exit} p' $(LOCK) > $(VENV)/uv-requirement.txt
	$(BIN)/python -m pip install -qq --disable-pip-version-check --no-deps --require-hashes \
		-r $(VENV)/uv-requirement.txt
	touch $(BIN)/uv

# Bytecode is compiled at install time (pip's default, not uv's): where PYTHONDONTWRITEBYTECODE is set, as on CI
# machines, no .pyc is ever written, and every Ray worker compiled torch, diffusers and transformers from source
# again (an engine actor's imports took 37 s instead of 11 s).
$(STAMP): $(LOCK) pyproject.toml $(BIN)/uv
	$(BIN)/uv pip sync --quiet --compile-bytecode $(UV_FLAGS) $(LOCK)
	$(BIN)/uv pip install --quiet $(UV_FLAGS) --no-deps --no-build-isolation -e .
	$(BIN)/python -m compileall -q -j 0 unidiffuser pipelines jobs shapes
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/unidiffuser-batch demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q -p no:cacheprovider tests/test_lock.py
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q --durations=25 $(PYTEST_ARGS)

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

# Re-pin every package from pyproject.toml's ranges (and constraints.txt); commit the result.
lock: $(BIN)/uv
	$(BIN)/uv pip compile pyproject.toml --extra dev -c constraints.txt $(LOCK_TARGET) --generate-hashes \
		--find-links $(TORCH_WHEELS) --custom-compile-command "make lock" --quiet -o $(LOCK)

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/engine.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache .mypy_cache
