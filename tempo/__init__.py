"""tempo: TEMPO and DreamerV2 agents in TensorFlow 2 / Keras.

TensorFlow Probability and our networks use Keras 2 (`tf_keras`); the variable
below must be set before TensorFlow is first imported, so importing `tempo`
first is enough.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tempo import _mesa  # noqa: E402

_mesa.preload()

__version__ = "0.1.0"
