# The two commands of the README: `make serve` (the main job) and `make test` (the checks).
# Both create .venv on first use and reinstall only when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --quiet --disable-pip-version-check

.PHONY: serve demo test lint typecheck unit bench bench-models bench-serving bench-heavy bench-sessions bench-overload bench-vs-wrk bench-adaptive clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The main job serves the bundled TensorFlow demo model, so it needs the tensorflow extra.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[tensorflow,onnx,grpc]'
	@touch $@

# Ray (the ray extra) goes in after the rest, keeping the protobuf they chose: resolved in one
# step with TensorFlow and tritonclient, pip backtracks for longer than CI allows.
KEEP_PROTOBUF = "protobuf==$$($(BIN)/python -c 'import google.protobuf as p; print(p.__version__)')"

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[dev]'
	$(PIP) install --no-deps 'tensorflow-serving-api==2.21.0'  # requires tensorflow, not -cpu
	$(PIP) install -e '.[ray]' $(KEEP_PROTOBUF)
	@touch $@

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[dev,bench]'
	$(PIP) install --no-deps 'tensorflow-serving-api==2.21.0'  # requires tensorflow, not -cpu
	$(PIP) install -e '.[ray]' $(KEEP_PROTOBUF)
	@touch $@

serve: $(VENV)/.installed-run
	$(BIN)/coserve serve

demo: $(VENV)/.installed-run
	$(BIN)/python examples/batching_demo.py

test: lint typecheck unit

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

unit: $(VENV)/.installed-dev
	$(BIN)/pytest

bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/batcher_overhead.py

bench-models: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/model_throughput.py

bench-serving: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/serving.py

bench-heavy: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/heavy_models.py

bench-overload: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/overload.py

bench-vs-wrk: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/bench_vs_wrk.py

bench-adaptive: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/adaptive.py

bench-sessions: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/sessions.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
