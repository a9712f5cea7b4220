"""Shared pytest set-up: Keras 2, quiet TensorFlow, software rendering for MuJoCo,
and graphs traced here run without Grappler (`without_graph_rewrites`)."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import pytest  # noqa: E402

import tempo  # noqa: E402, F401  (before TensorFlow: see tempo/_mesa.py)


@pytest.fixture(scope="session", autouse=True)
def without_graph_rewrites():
    """Grappler (TensorFlow's rewriting of a graph before a function first runs)
    is off for the graphs traced in the test processes.

    It took half the first call of a tiny TEMPO update (4.1 of 8.8 CPU-seconds on
    a Sapphire Rapids Xeon) and a third of the mirrored-update check. The tests
    here check what our graphs compute, which the rewrites must not change; what
    runs as a user runs it keeps them: every `launch.*` subprocess (end-to-end,
    resume, signal, multi-worker and progress tests) and the oneDNN check, whose
    fused kernels come from a rewrite. (The tests against the released code's
    numbers run eagerly, where Grappler never ran.)"""
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    yield


@pytest.fixture
def float64():
    """Builds Keras layers in float64 for the duration of a test."""
    import tensorflow as tf

    previous = tf.keras.backend.floatx()
    tf.keras.backend.set_floatx("float64")
    yield
    tf.keras.backend.set_floatx(previous)


@pytest.fixture
def eagerly():
    """Runs tf.functions eagerly for the duration of a test
    (`support.functions_run_eagerly`)."""
    from support import functions_run_eagerly

    with functions_run_eagerly():
        yield
