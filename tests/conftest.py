"""Shared pytest set-up: Keras 2, quiet TensorFlow, software rendering for MuJoCo."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import pytest  # noqa: E402

import tempo  # noqa: E402, F401  (before TensorFlow: see tempo/_mesa.py)


@pytest.fixture
def float64():
    """Builds Keras layers in float64 for the duration of a test."""
    import tensorflow as tf

    previous = tf.keras.backend.floatx()
    tf.keras.backend.set_floatx("float64")
    yield
    tf.keras.backend.set_floatx(previous)
