# Two commands: `make demo` (the main job, end to end) and `make test`.
# Both create .venv and install pinned versions (constraints.txt) on first use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)

.PHONY: setup test demo pipeline lint clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[train,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check edgecxr tests benchmarks

demo: setup
	$(BIN)/python scripts/demo.py

pipeline: setup
	$(BIN)/python scripts/pipeline.py $(ARGS)

clean:
	rm -rf dist runs .pytest_cache
