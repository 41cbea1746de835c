# `make demo` and `make test` set everything up on a fresh machine: they create or refresh .venv at the repo root.
# torch: a torch already importable in .venv is kept (e.g. a user's CUDA build); otherwise the CPU wheel
# torch==2.13.0 is installed first, so no later requirement can pull the multi-GB CUDA stack.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.specvlm-installed

.PHONY: setup test demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) -m specvlm demo

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
