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

# make bench: the engine's speed, then the quality of its resolution (precision and recall
# of the Segment preset, the default and a naive union-find, side by side).
# make bench BENCH=engine|quality|http|postgres|growth|repair|rebuild [ARGS="--events 100000"]: one
# of them.
# make bench BASELINE=REV [ROUNDS=3] ...: the same benchmark beside an earlier release, one
# round of it at a time, alternating (the driver takes the medians).
BENCH ?= engine quality
ROUNDS ?= 3
bench: $(STAMP)
ifdef BASELINE
	for b in $(BENCH); do \
		case $$b in engine|http) one="--runs 1";; postgres|quality) one="--rounds 1";; *) one="";; esac; \
		$(BIN)/python -m benchmarks baseline $(BASELINE) --rounds $(ROUNDS) $$b $$one $(ARGS) || exit 1; \
	done
else
	for b in $(BENCH); do $(BIN)/python -m benchmarks $$b $(ARGS) || exit 1; done
endif

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
