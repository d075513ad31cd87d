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

# make bench BASELINE=v0.1.0 [BENCH=http]: the same benchmark beside an earlier release.
BENCH ?= engine
bench: $(STAMP)
ifdef BASELINE
	$(BIN)/python -m benchmarks baseline $(BASELINE) --rounds 3 $(BENCH) --runs 1
else
	$(BIN)/python -m benchmarks $(BENCH)
endif

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
