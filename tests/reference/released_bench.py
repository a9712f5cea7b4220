#!/usr/bin/env python
"""Seconds per update of the RELEASED TEMPO code, with launch.bench's protocol.

Run under the release's environment (tests/reference/README.md):

    TEMPO_REF_SRC=$REF/src $REF/venv/bin/python tests/reference/released_bench.py \\
        --config dmc_vision --mode tempo --iters 5

or through `python -m launch.bench --released_python $REF/venv/bin/python
--released_src $REF/src`, which puts both programs in one table.

It builds the released `agent.Agent` from its configs.yaml (defaults plus the
suite block) at the reference sizes, with the observation and action spaces
of launch.bench's configs, feeds the same synthetic batch as launch.bench, and
times `Agent.train` (TEMPO) or `Agent.train_without_meta` (the release's
DreamerV2) in graph mode, the recurrent state carried from one update to the
next as its train.py does. The first call traces and the second retraces (the
carried state changes the inputs' structure); both are warm-ups. Prints one
line `RELEASED_JSON {...}`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import pathlib
import resource
import statistics
import sys
import time
import warnings

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# launch.bench's configs: observation shapes, action size, discrete actions.
CONFIGS = {
    "dmc_proprio": ({"orientations": (14,), "height": (1,), "velocity": (9,)}, 6, False),
    "dmc_vision": ({"image": (64, 64, 3)}, 6, False),
    "atari": ({"image": (64, 64, 1)}, 6, True),
}


def synthetic_batch(obs: dict, actions: int, discrete: bool, batch: int, length: int) -> dict:
    """launch.bench's batch: tempo/synthetic.py's random_batch, loaded from its file
    (importing the tempo package would set TF_USE_LEGACY_KERAS, which asks for
    tf_keras, a package the release's environment does not have)."""
    path = HERE.parents[1] / "tempo" / "synthetic.py"
    spec = importlib.util.spec_from_file_location("tempo_synthetic", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.random_batch(obs, actions, discrete, batch, length)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, choices=sorted(CONFIGS))
    parser.add_argument("--mode", default="tempo", choices=["tempo", "dreamerv2"])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument(
        "--profile", default="", help="Also trace 2 more updates with TensorFlow's profiler here."
    )
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    logging.getLogger().setLevel("ERROR")  # TFP warns per trace otherwise, as train.py knows
    warnings.filterwarnings("ignore")
    from make_golden import SRC, install_shims, make_config, spaces

    tf = install_shims()
    sys.path.insert(0, str(SRC))
    import agent as agent_module
    import common

    config = make_config(common, args.config, None).update(
        {"dataset.batch": args.batch, "dataset.length": args.length}
    )
    obs, actions, discrete = CONFIGS[args.config]
    obs_space, act_space = spaces(obs, actions, discrete)
    tf.keras.utils.set_random_seed(0)
    agent = agent_module.Agent(config, obs_space, act_space, common.Counter(0))
    train = agent.train if args.mode == "tempo" else agent.train_without_meta
    data = synthetic_batch(obs, actions, discrete, args.batch, args.length)
    data = {k: tf.constant(v) for k, v in data.items()}
    state = None

    def update() -> float:
        nonlocal state
        start = time.perf_counter()
        state, metrics = train(data, state)
        float(metrics["model_loss"])  # waits for the update to finish
        return time.perf_counter() - start

    first = update()
    second = update()
    times = [update() for _ in range(args.iters)]
    if args.profile:
        tf.profiler.experimental.start(args.profile)
        update(), update()
        tf.profiler.experimental.stop()
    row = {
        "config": args.config,
        "mode": args.mode,
        "program": "released",
        "tf": tf.__version__,
        "batch": args.batch,
        "length": args.length,
        "compile_s": round(first, 2),
        "second_call_s": round(second, 3),
        "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4),
        "max_s": round(max(times), 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print("RELEASED_JSON " + json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
