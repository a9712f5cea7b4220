# One command each: `make train` and `make test` set everything up on a fresh
# machine (virtualenv, pip packages, the Debian EGL/Mesa libraries MuJoCo
# renders with) and then run. Override VENV, PYTHON or EXTRAS as needed, e.g.
# `make train EXTRAS=gpu` for CUDA TensorFlow.
VENV ?= .venv
PYTHON ?= python3
EXTRAS ?= cpu
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(EXTRAS)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
LOGDIR ?= logdir/cartpole_swingup_tempo
TRAIN_ARGS ?=

export TF_USE_LEGACY_KERAS := 1
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: setup system-deps train test test-all bench lint clean

setup: system-deps $(STAMP)

system-deps:
	@if ldconfig -p | grep -q 'libEGL_mesa.so.0' && ldconfig -p | grep -q 'libGL.so.1'; then \
	  echo "EGL/Mesa libraries present"; \
	else \
	  $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends libegl1 libegl-mesa0 libgl1; \
	fi

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS),dev]"
	touch $(STAMP)

train: setup
	$(PY) -m launch.train --logdir $(LOGDIR) $(TRAIN_ARGS)

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m ""

bench: setup
	$(PY) -m launch.bench

lint: setup
	$(VENV)/bin/ruff check tempo launch tests
	$(VENV)/bin/ruff format --check tempo launch tests

clean:
	rm -rf $(VENV) build *.egg-info
