"""What the TF-2.6-era released code needs to import on today's stack, shared by
the generators and the release's runners in this folder.

`install_gym_stub` (no TensorFlow): numpy's removed aliases (`np.bool`, ...)
and, unless a real gym is installed, a `gym` module with the one class the
release uses, `gym.spaces.Box`. `install_tf_shims` adds what TensorFlow 2.15
lacks: `tensorflow.keras.mixed_precision.experimental` and the Adam of TF 2.6
(`OptimizerV2`); it returns `tf`.
"""

from __future__ import annotations

import sys
import types

import numpy as np


class Box:
    """gym.spaces.Box as far as the release uses it: a shape from the bounds when
    none is given, the bounds broadcast to it and cast to the dtype; `n` for the
    discrete action spaces its agent tells apart by that attribute."""

    def __init__(self, low, high, shape=None, dtype=np.float32, n=None):
        self.dtype = np.dtype(dtype)
        if shape is None:
            shape = np.broadcast(np.asarray(low), np.asarray(high)).shape
        self.shape = tuple(int(x) for x in shape)
        self.low = np.broadcast_to(np.asarray(low), self.shape).astype(self.dtype)
        self.high = np.broadcast_to(np.asarray(high), self.shape).astype(self.dtype)
        if n is not None:
            self.n = n


def install_gym_stub() -> None:
    for name, value in (("bool", bool), ("object", object), ("float", float), ("int", int)):
        if name not in np.__dict__:
            setattr(np, name, value)
    try:
        import gym  # noqa: F401
    except ImportError:
        gym = types.ModuleType("gym")
        gym.spaces = types.ModuleType("gym.spaces")
        gym.spaces.Box = Box
        gym.__path__ = []  # a package, so `import gym.spaces` works
        sys.modules["gym"], sys.modules["gym.spaces"] = gym, gym.spaces


def install_tf_shims():
    install_gym_stub()
    import tensorflow as tf
    import tensorflow.keras.mixed_precision as mp

    if not hasattr(mp, "experimental"):
        exp = types.ModuleType("tensorflow.keras.mixed_precision.experimental")
        exp.__dict__.update({k: getattr(mp, k) for k in dir(mp) if not k.startswith("__")})
        exp.set_policy = mp.set_global_policy
        mp.experimental = exp
        sys.modules["tensorflow.keras.mixed_precision.experimental"] = exp
    tf.optimizers.Adam = tf.keras.optimizers.legacy.Adam
    return tf
