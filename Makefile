# `make demo` and `make test` set everything up on a fresh machine: they create or refresh .venv at the repo root.
# torch: a torch already importable in .venv is kept (e.g. a user's CUDA build); otherwise the CPU wheel
# torch==2.13.0 is installed first, so no later requirement can pull the multi-GB CUDA stack.
# `make test` runs the lint, format and type checks (`make lint`), then the whole suite on the newest transformers the pyproject admits (.venv), then the core
# lossless tests on the oldest one (.venv-oldest, transformers==$(OLDEST_TRANSFORMERS)): the admitted range is
# the tested range.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.specvlm-installed
OLDEST_TRANSFORMERS := 5.3.0
OLD := .venv-oldest
OLD_PY := $(OLD)/bin/python
OLD_STAMP := $(OLD)/.specvlm-installed
CORE_TESTS := tests/test_adapters.py tests/test_lossless.py tests/test_fast_engine.py tests/test_generate_compat.py \
	tests/test_vocab_bridge.py tests/test_eagle3.py

.PHONY: setup lint test test-newest test-oldest demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

$(OLD_STAMP): pyproject.toml Makefile
	@test -x $(OLD_PY) || $(PYTHON) -m venv $(OLD)
	@$(OLD_PY) -c "import torch" 2>/dev/null || $(OLD_PY) -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
	$(OLD_PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]" "transformers==$(OLDEST_TRANSFORMERS)"
	@touch $(OLD_STAMP)

test: lint test-newest test-oldest

# lint, format and type checks (configured in pyproject.toml); `ruff format src tests benchmarks` fixes the format
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

test-newest: $(STAMP)
	$(PY) -m pytest

test-oldest: $(OLD_STAMP)
	$(OLD_PY) -m pytest -m "not slow" $(CORE_TESTS)

demo: $(STAMP)
	$(PY) -m specvlm demo

clean:
	rm -rf $(VENV) $(OLD) build *.egg-info src/*.egg-info .pytest_cache
