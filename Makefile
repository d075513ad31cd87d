PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/idstitch serve

lint: $(STAMP)
	$(BIN)/ruff check idstitch tests benchmarks
	$(BIN)/ruff format --check idstitch tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest -n 2 --dist worksteal

# make bench [BENCH=engine|http|postgres|growth] [ARGS="--events 100000"]
# make bench BASELINE=REV [ROUNDS=3] ...: the same benchmark beside an earlier release, one
# round of it at a time, alternating (the driver takes the medians).
BENCH ?= engine
ROUNDS ?= 3
ONE_ROUND_engine := --runs 1
ONE_ROUND_http := --runs 1
ONE_ROUND_postgres := --rounds 1
ONE_ROUND_growth :=
bench: $(STAMP)
ifdef BASELINE
	$(BIN)/python -m benchmarks baseline $(BASELINE) --rounds $(ROUNDS) $(BENCH) $(ONE_ROUND_$(BENCH)) $(ARGS)
else
	$(BIN)/python -m benchmarks $(BENCH) $(ARGS)
endif

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
