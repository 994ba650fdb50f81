# The two commands of the README. Both bootstrap what they need: a virtualenv with the package and its
# dependencies, and (for the fleet) Kubernetes binaries built from Go modules into ~/.cache/llm-operator.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: run test unit lint bench fleet-build clean help
.DEFAULT_GOAL := help

help:
	@echo "make run    - start the local fleet (3 kwok clusters) and the operator in the foreground"
	@echo "make test   - run the whole test suite on real Postgres, NATS and the kwok fleet"
	@echo "make unit   - only the fast unit tests (no services)"
	@echo "make lint   - ruff, mypy --strict, import-linter, CRD drift check"
	@echo "make bench  - run every benchmark (bench/, ~25 min; BENCHES=\"latency failover\" for some)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[embedded,dev]"
	@touch $@

fleet-build: $(STAMP)
	$(BIN)/llm-operator fleet build

run: $(STAMP)
	$(BIN)/llm-operator up

test: $(STAMP) fleet-build
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/llm-operator crds --check

# One after the other: each uses the whole machine. docs/benchmarks.md says what each measures.
BENCHES ?= placement replay ingest latency failover throughput scale
bench: $(STAMP) fleet-build
	@# Every benchmark runs even when an earlier one misses a target; the status says whether all were met.
	@status=0; for b in $(BENCHES); do echo "== bench.$$b"; $(BIN)/python -m bench.$$b || status=1; done; exit $$status

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
