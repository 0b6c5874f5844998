# Every target a newcomer needs; the README names each one.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help venv run test test-fast lint typecheck check migrate bench soak faults clean

help:
	@echo "make run        embedded PostgreSQL + Kafka-protocol broker + sample catalogue + worker"
	@echo "make test       lint, type-check and the whole test suite (needs nothing running)"
	@echo "make test-fast  unit tests only (no database, no broker)"
	@echo "make lint       ruff"
	@echo "make typecheck  mypy --strict on service/ and schemas/"
	@echo "make migrate    alembic upgrade head against STOCK_DATABASE_URL"
	@echo "make bench      benchmarks: writes docs/benchmarks.md, docs/benchmarks.png, docs/latency-curve.png (BENCH_ARGS=--quick)"
	@echo "make soak       30 min at half the max rate (SOAK_MINUTES=N): docs/soak.md and docs/soak.png"
	@echo "make faults     fault suite (kill, pause, DB crash, broker cut, rewind, poison): docs/reliability.md"
	@echo "make clean      remove the virtualenv and the embedded stack's data"

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/stock dev

# Three pytest-xdist processes (most tests wait on subprocesses and group joins, not the
# CPU); groups in tests/conftest.py. TEST_WORKERS=0 runs them all in this process.
TEST_WORKERS ?= 3
test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit

lint: $(STAMP)
	$(BIN)/ruff check service schemas tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck

migrate: $(STAMP)
	$(BIN)/stock migrate

# Not part of `make test`: minutes long, and its figures are reports, not assertions.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

# Not part of `make test`: half an hour (SOAK_MINUTES); tests/e2e runs a 20-second one.
SOAK_MINUTES ?= 30
soak: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

# Not part of `make test` either (about 13 minutes a seed); `make test` runs its short version.
faults: $(STAMP)
	$(BIN)/python -m tests.faults --out docs/reliability.md $(FAULTS_ARGS)

clean:
	rm -rf $(VENV) .stock-dev .pytest_cache .mypy_cache .ruff_cache
