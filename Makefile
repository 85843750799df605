# `make demo` and `make test` are all a newcomer needs; both run `make setup` first.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint clean

setup:
	@bash scripts/setup.sh

demo: setup
	@# exit 3: the run finished but a goal was missed; the results (and the goal) are still shown
	@$(BIN)/slimtune run --config examples/emotion/config.yaml --output-dir runs/demo; rc=$$?; \
	if [ $$rc -ne 0 ] && [ $$rc -ne 3 ]; then exit $$rc; fi; \
	$(BIN)/python examples/emotion/show_results.py runs/demo

test:
	@bash scripts/setup.sh --test
	$(BIN)/python -m pytest -q -ra tests

lint: setup
	$(BIN)/ruff check slimtune tests benchmarks && $(BIN)/ruff format --check slimtune tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
