# Quick start:  make app   (install, then serve the studio on http://localhost:8501)
#               make test  (install, then run the whole test suite)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: app test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-app: requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .   # the `rhf` command; dependencies are the pinned ones above
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt $(VENV)/.installed-app
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

app: $(VENV)/.installed-app
	$(BIN)/streamlit run app.py

test: $(VENV)/.installed-dev
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n 2 tests

bench: $(VENV)/.installed-app
	$(BIN)/python benchmarks/bench_data.py

clean:
	rm -rf $(VENV) cache/frames
