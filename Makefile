# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# torch is pinned to the CPU wheel these machines carry; an unpinned torch pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH := torch==2.13.0

.PHONY: demo test check lint install clean reference

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/llm-backbones demo

# llama.cpp's reference vocabularies and official chat templates, from PyPI (the llama-cpp-python
# sdist): tests/golden/test_family_chat_templates.py renders the official .jinja files against our builders.
REFERENCE := $(VENV)/llama-cpp-models
$(REFERENCE)/templates: $(STAMP)
	$(PY) scripts/fetch_llama_cpp_models.py $(REFERENCE)

reference: $(REFERENCE)/templates

test: $(STAMP) $(REFERENCE)/templates
	LLAMA_CPP_MODELS_DIR=$(REFERENCE) $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

# The fast lane before a commit (under a minute on 2 CPU cores): lint, then the unit tests not marked `slow`,
# hypothesis properties at a quarter of their examples (LLM_BACKBONES_QUICK=1).
# `make test` still runs everything, slow tests included.
check: lint $(REFERENCE)/templates
	LLM_BACKBONES_QUICK=1 LLAMA_CPP_MODELS_DIR=$(REFERENCE) $(PY) -m pytest -q -m "not slow" tests/unit

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
