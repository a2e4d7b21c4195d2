# Two commands set everything up: `make test` (and, once the demo exists, `make demo`).
# Each creates .venv on first use; later runs only reinstall when pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup test demo clean

setup: $(STAMP)

# torch/torchvision are pinned as a pair here: other versions pull multi-GB
# downloads or a torchvision that does not import (see README).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	# DS_BUILD_OPS=0: DeepSpeed installs without compiling its CUDA ops (it JIT-builds what CPU runs need).
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

# The Gradio demo with the bundled chatrex-tiny on http://127.0.0.1:7860 (PORT=... to change).
PORT ?= 7860
demo: setup
	GRADIO_ANALYTICS_ENABLED=False $(PY) -m demo --host 127.0.0.1 --port $(PORT)

clean:
	rm -rf $(VENV) .pytest_cache
