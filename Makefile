# Everything sets itself up: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test unit lint bench bench-startup fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# A real batch against the bundled emulator on loopback, in a SQLite file of its own (./demo.db),
# so that the user's ./dubrunner.db starts empty; then one of local files, uploaded.
demo: $(STAMP)
	@set -e; tmp=$$(mktemp -d); \
	$(BIN)/dubrunner emulator --port 0 --port-file $$tmp/port --token demo-token --latency-ms 20 \
	    2>$$tmp/emulator.log & emu=$$!; \
	trap 'kill $$emu 2>/dev/null; rm -rf $$tmp' EXIT; \
	for i in $$(seq 100); do [ -s $$tmp/port ] && break; sleep 0.1; done; \
	[ -s $$tmp/port ] || { echo "the emulator did not start"; cat $$tmp/emulator.log; exit 1; }; \
	export CHAMELAION_BASE_URL=http://127.0.0.1:$$(cat $$tmp/port)/api/ CHAMELAION_API_KEY=demo-token \
	    DUBRUNNER_DB=./demo.db; \
	echo "emulator on $$CHAMELAION_BASE_URL; database $$DUBRUNNER_DB"; \
	echo '$$ dubrunner submit manifests/example.yaml'; \
	$(BIN)/dubrunner submit manifests/example.yaml; \
	echo '$$ dubrunner status --batch example'; \
	$(BIN)/dubrunner status --batch example; \
	echo '$$ dubrunner submit manifests/local-example.yaml   # local files, uploaded'; \
	$(BIN)/dubrunner submit manifests/local-example.yaml; \
	echo '$$ dubrunner status --batch local-example'; \
	$(BIN)/dubrunner status --batch local-example

lint: $(STAMP)
	$(BIN)/ruff check dubrunner tests migrations
	$(BIN)/ruff format --check dubrunner tests migrations
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

# The fast tier alone (under 20 s): no dubrunner process, no PostgreSQL, no test over ~1 s.
unit: $(STAMP)
	$(BIN)/pytest -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo.db demo.db-wal demo.db-shm

# The manifest fuzzer and the model check of "never twice" at length (make test runs both
# briefly, with a fixed seed).
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz DUBRUNNER_FUZZ_SUBMITS=300 $(BIN)/pytest tests/test_fuzz.py -p no:cacheprovider
	HYPOTHESIS_PROFILE=fuzz DUBRUNNER_MODEL_EXAMPLES=300 DUBRUNNER_MODEL_STEPS=40 \
	    $(BIN)/pytest tests/test_model.py -p no:cacheprovider -p no:logging

# Benchmarks against the emulator on loopback; prints a table and writes BENCHMARKS.md.
# BENCH_ARGS="--only rate": the rate rows alone, printed (BENCHMARKS.md left as it is).
bench: $(STAMP)
	$(BIN)/python -m tests.benchmarks.bench $(BENCH_ARGS)

# The start-up rows alone (python -c pass, --help, a TAB of completion, status), printed only.
bench-startup: $(STAMP)
	$(BIN)/python -m tests.benchmarks.bench --only startup
