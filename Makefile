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
# The learning-curve protocol (README, "Learning curves"): every task x method x
# seed for CURVE_FRAMES env frames (CURVE_CONFIG's gin files: proprio cpu.gin by
# default), one run after another; re-running
# resumes unfinished runs from their checkpoints (a finished one only re-exports).
# tempo-placebo: TEMPO whose meta-weighter never moves from its initialization.
CURVE_TASKS ?= dmc_cartpole_swingup dmc_finger_spin
CURVE_METHODS ?= dreamerv2 tempo-released tempo-lookahead
CURVE_SEEDS ?= 0
CURVE_FRAMES ?= 100000
CURVE_DIR ?= logdir/curves
# The gin files (gin_configs/<name>.gin, in order) of every curve run: from pixels
# with `make curves CURVE_CONFIG="dmc_vision cpu_vision" CURVE_DIR=logdir/curves_pixels`.
CURVE_CONFIG ?= dmc_proprio cpu

export TF_USE_LEGACY_KERAS := 1
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: setup system-deps train test test-all bench curves lint clean

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

# Two pytest workers: much of the suite is single-threaded tracing and subprocess
# start-up; on a 2-core CPU two workers took the suite from 17 to 11 minutes.
# Results several tests share are made once per session whichever worker asks
# first (tests/support.py, once_per_session).
test: setup
	$(PY) -m pytest -q -n 2 --durations=10

test-all: setup
	$(PY) -m pytest -q -m ""

bench: setup
	$(PY) -m launch.bench

curves: setup
	@for task in $(CURVE_TASKS); do for method in $(CURVE_METHODS); do for seed in $(CURVE_SEEDS); do \
	  case $$method in \
	    dreamerv2) meta=false; sign=released; eta=;; \
	    tempo-released) meta=true; sign=released; eta=;; \
	    tempo-lookahead) meta=true; sign=lookahead; eta='BilevelTrainer.lookahead_lr = 1.0';; \
	    tempo-placebo) meta=true; sign=released; eta='meta/Optimizer.lr = 1e-9';; \
	    *) echo "unknown method $$method"; exit 1;; \
	  esac; \
	  $(PY) -m launch.train --logdir $(CURVE_DIR)/$$task/$$method/seed$$seed \
	    $(foreach name,$(CURVE_CONFIG),--gin_file gin_configs/$(name).gin) \
	    --task $$task --seed $$seed --steps $(CURVE_FRAMES) --meta=$$meta \
	    --gin_param "BilevelTrainer.hypergrad_sign = '$$sign'" \
	    $${eta:+--gin_param "$$eta"} \
	    --gin_param 'train.eval_episodes = 5' || exit 1; \
	done; done; done
	$(PY) -m launch.plot --logdirs '$(CURVE_DIR)/*/*/*' --out $(CURVE_DIR)/curves

lint: setup
	$(VENV)/bin/ruff check tempo launch tests
	$(VENV)/bin/ruff format --check tempo launch tests

clean:
	rm -rf $(VENV) build *.egg-info
