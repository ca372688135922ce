# Two commands that work on a fresh machine (Python 3.10+ and pip):
#   make demo   install the runtime, index examples/photos, search a spliced example
#   make test   install runtime + test extras, run ruff and the test suite
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
# the demo index lives inside the checkout: another checkout's demo never mixes in
DEMO_INDEX ?= .oesir-demo

.PHONY: demo test install install-test lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'

demo: install
	$(BIN)/oesir index examples/photos --index $(DEMO_INDEX)
	$(BIN)/oesir search examples/spliced.jpg --index $(DEMO_INDEX) --top 5

lint: install-test
	$(BIN)/ruff check oesir_cli tests bench tools
	$(BIN)/ruff format --check oesir_cli tests bench tools

test: install-test lint
	$(BIN)/python -m pytest
