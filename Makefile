# Two commands set everything up: `make test` and `make demo`.
# Each creates .venv on first use from the lock file; later runs only reinstall when
# requirements.lock or pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
LOCK := requirements.lock
# pip itself is pinned too, so that the resolver that reads the lock is the same everywhere.
PIP_VERSION := 26.3
PIP_TOOLS_VERSION := 7.6.2

.PHONY: setup test test-fast test-quick lint demo finetune-tiny lock test-latest clean

setup: $(STAMP)

# Exactly the versions in requirements.lock (torch, torchvision and every transitive
# dependency), then the project itself without touching them.
# DS_BUILD_OPS=0: DeepSpeed installs without compiling its CUDA ops (it JIT-builds what CPU runs need).
$(STAMP): $(LOCK) pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip==$(PIP_VERSION)
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

# Everything except the tests marked slow (multi-process and kill -9 runs, Ray, DeepSpeed, the
# official-parity checks, the browser, anything over ~5 s): under two minutes on a 2-core CPU,
# for the edit-test loop. `make test` still runs all of them.
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# ruff (pinned in the lock; rules in pyproject.toml): pyflakes and import order. CI runs it first.
lint: setup
	$(PY) -m ruff check .

# The smoke tests only (about a minute): imports, `chatrex detect` on an example, one training
# step, the demo's functions.
test-quick: setup
	$(PY) -m pytest -q -m smoke

# The Gradio demo with the bundled chatrex-tiny on http://127.0.0.1:7860 (PORT=... to change).
PORT ?= 7860
# exec: the server replaces the recipe's shell, so no shell is left between make and Python;
# CHATREX_EXIT_WITH_PARENT=1: it also stops when make is killed (demo/lifetime.py).
demo: setup
	CHATREX_EXIT_WITH_PARENT=1 GRADIO_ANALYTICS_ENABLED=False exec $(PY) -m demo --host 127.0.0.1 --port $(PORT)

# Fine-tune the bundled chatrex-tiny on fresh synthetic images, with `chatrex eval` before and
# after side by side: about five minutes on a 2-core CPU (docs/training.md). Outputs go to
# data/finetune-tiny/ and runs/finetune-tiny/ (final/ works with `chatrex detect --model`);
# re-running skips finished steps. FINETUNE_ARGS passes options, e.g. FINETUNE_ARGS="--from train"
# (python -m train.finetune_tiny --help lists them).
finetune-tiny: setup
	$(PY) -m train.finetune_tiny $(FINETUNE_ARGS)

# Regenerate requirements.lock from pyproject.toml (run after changing a dependency, then `make test`).
# Pins that still satisfy pyproject are kept; `make lock UPGRADE=1` moves everything to the newest
# releases pyproject admits. pip-tools runs in its own venv so it never enters the locked one.
lock:
	test -x .venv-tools/bin/pip-compile || ($(PYTHON) -m venv .venv-tools && .venv-tools/bin/pip install --quiet pip==$(PIP_VERSION) pip-tools==$(PIP_TOOLS_VERSION))
	.venv-tools/bin/pip-compile --quiet --extra test --all-build-deps --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
		$(if $(UPGRADE),--upgrade) --output-file $(LOCK) pyproject.toml

# Drift check (not part of CI): the newest releases pyproject admits, without the lock, in a
# separate .venv-latest, then the smoke tests (imports, `chatrex detect`, one training step,
# the demo's functions). A failure here means an upstream release will break fresh installs
# once the lock is regenerated.
test-latest:
	test -x .venv-latest/bin/python || $(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install --quiet --upgrade pip
	DS_BUILD_OPS=0 .venv-latest/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[test]'
	.venv-latest/bin/python -m pip list 2>/dev/null | grep -iE '^(torch|torchvision|transformers|accelerate|gradio|tokenizers) '
	.venv-latest/bin/python -m pytest -q -m smoke -p no:cacheprovider

clean:
	rm -rf $(VENV) .venv-latest .venv-tools .pytest_cache
