# Kanari: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/.tools/bin:$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: bootstrap demo test unit lint typecheck crds bench bench-drift clean

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap  ## the main job on embedded defaults
	$(PY) -m devstack $(ARGS)

test: bootstrap  ## the whole suite, as CI runs it
	$(PY) -m ruff check operators kfp_pipelines devstack tests bench argocd scripts
	$(PY) -m mypy
	$(PY) -m pytest -q -p no:cacheprovider $(ARGS)

unit: bootstrap
	$(PY) -m pytest -q -m "not slow" $(ARGS)

lint: bootstrap
	$(PY) -m ruff check operators kfp_pipelines devstack tests bench argocd scripts

typecheck: bootstrap
	$(PY) -m mypy

crds: bootstrap  ## regenerate the CRD YAML from the typed spec
	$(PY) -m kanari.api.crd --write

bench: bootstrap  ## benchmarks (not tests); results land in bench/results/
	$(PY) bench/run.py $(ARGS)

bench-drift: bootstrap
	$(PY) bench/run.py --only drift

clean:
	rm -rf $(VENV) .tools .pytest_cache
