# Bootstraps .venv from python3 alone, then runs the demo or the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
INTEGRATIONS := $(wildcard integrations/*/pyproject.toml)
EDITABLES := -e '.[test,notebook]' $(foreach p,$(INTEGRATIONS),-e '$(dir $(p))[test]')

.PHONY: demo test lint typecheck bench clean

$(STAMP): pyproject.toml $(INTEGRATIONS) scripts/bootstrap.sh
	PYTHON=$(PYTHON) sh scripts/bootstrap.sh $(EDITABLES)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tracevault demo

test: $(STAMP)
	sh scripts/ensure-services.sh
	$(PY) -m pytest -q
	$(VENV)/bin/ruff check src integrations tests benchmarks
	$(VENV)/bin/mypy

lint: $(STAMP)
	$(VENV)/bin/ruff check src integrations tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) tracevault.db tracevault.db-wal tracevault.db-shm
