# Skiplock — every command a newcomer needs. `make help` lists them.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: help install test test-fast fuzz run api worker migrate psql status bench bench-peers chaos soak lint clean stop-db example-analysis

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Skiplock needs Python >= 3.11; found " + sys.version.split()[0])'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(PY) -m pip install -q -e ".[test,dev]" 2>&1 | grep -v "is ignored" || true
	@$(PY) -c 'import skiplock, app, pytest_postgresql' && touch $(STAMP)

install: $(STAMP) ## create .venv and install the project

test: $(STAMP) ## the whole suite (starts its own PostgreSQL)
	$(PY) -m pytest

test-fast: $(STAMP) ## the suite without the slow acceptance tests
	$(PY) -m pytest -m "not slow"

fuzz: $(STAMP) ## long schemathesis run against /openapi.json of a real server (FUZZ_EXAMPLES per operation, random seed)
	SKIPLOCK_FUZZ_EXAMPLES=$(or $(FUZZ_EXAMPLES),500) SKIPLOCK_FUZZ_SEED= $(PY) -m pytest -p no:cacheprovider \
		tests/integration/test_http_schemathesis.py -v

run: $(STAMP) ## database (embedded unless DATABASE_URL) + migrations + API on :8000 + one worker
	$(PY) -m app run

api: $(STAMP) ## the HTTP API only
	$(PY) -m app api

worker: $(STAMP) ## one worker (SKIPLOCK_CONCURRENCY, SKIPLOCK_QUEUES, ...)
	$(PY) -m app worker

migrate: $(STAMP) ## bring the schema to the latest migration
	$(PY) -m app migrate

status: $(STAMP) ## queues and counts by state
	$(PY) -m app status

psql: $(STAMP) ## psql on the database in use (also reads SQL from stdin)
	@psql "$$($(PY) -m app url)"

stop-db: $(STAMP) ## stop the embedded PostgreSQL
	$(PY) -m app stop-db

.PHONY: example-uploads
example-uploads: $(STAMP) ## examples/upload_results/: uploads, jobs and results, end to end
	$(PY) -m examples.upload_results

bench: $(STAMP) ## throughput and latency beside the raw-SQL floor (writes bench/results.json)
	$(PY) -m bench

bench-peers: $(STAMP) ## the same workloads with PgQueuer and Procrastinate
	$(PY) -m bench --peers

chaos: $(STAMP) ## crash, outage and race scenarios with real processes (long forms; `make test` runs short ones)
	SKIPLOCK_CHAOS=long $(PY) -m pytest tests/acceptance/chaos -v

example-analysis: $(STAMP) ## the document analysis example (examples/analysis_pipeline; TASKS=300)
	$(PY) -m examples.analysis_pipeline --tasks $(or $(TASKS),300) --auto-review $(or $(REVIEW_AFTER),3)

soak: $(STAMP) ## steady load for SOAK_MINUTES (10): throughput, pickup latency, dead tuples, table size
	$(PY) -m bench.soak

lint: $(STAMP) ## ruff and mypy (strict)
	$(VENV)/bin/ruff check skiplock app tests bench migrations examples
	$(VENV)/bin/mypy

clean: ## remove the venv and the embedded cluster's files
	-$(PY) -m app stop-db 2>/dev/null
	rm -rf $(VENV) .skiplock
