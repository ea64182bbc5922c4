# Two entry points for a fresh machine: `make demo` and `make test` (see README Quick start).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0

.PHONY: setup demo test clean

setup: $(VENV)/.installed

# An interpreter that already has torch (say a CUDA build) lends it to the venv; otherwise torch
# is pinned before anything else so that no dependency can pull a CUDA stack on a CPU machine.
$(VENV)/.installed: pyproject.toml
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
	  echo "keeping the torch of $(PYTHON)"; $(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
	  $(PYTHON) -m venv $(VENV) && $(BIN)/pip install -q --upgrade pip && $(BIN)/pip install -q "$(TORCH_PIN)"; \
	fi
	$(BIN)/pip install -q -e ".[test,report,ray]"
	@touch $@

demo: setup
	$(BIN)/paravideo generate -c configs/demo.yaml

test: setup
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) outputs .pytest_cache
