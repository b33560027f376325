# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the suite waits on real servers and clocks more than it computes: three processes share two cores
PYTEST_ARGS ?= -n 3 --dist loadfile

.PHONY: demo test chaos lint typecheck system-deps clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

system-deps:
	bash scripts/install-system-deps.sh

demo: $(STAMP)
	$(BIN)/python -m worker.demo

test: $(STAMP) system-deps
	$(BIN)/ruff check .
	$(BIN)/mypy rollout workflows activities worker cli
	$(BIN)/lint-imports
	$(BIN)/pytest -q $(PYTEST_ARGS) -m "not chaos"
	$(BIN)/pytest -q -m chaos tests/test_chaos.py

# many rollouts, workers SIGKILLed again and again (2-4 minutes; docs/workflow.md, "Surviving
# worker deaths"); `make test` runs it alone after the rest, so its load does not starve the others
chaos: $(STAMP)
	$(BIN)/pytest -q -s -m chaos tests/test_chaos.py

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy rollout workflows activities worker cli

clean:
	rm -rf $(VENV) build *.egg-info
