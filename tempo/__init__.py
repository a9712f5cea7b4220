"""tempo: TEMPO and DreamerV2 agents in TensorFlow 2 / Keras.

TensorFlow Probability and our networks use Keras 2 (`tf_keras`); the variables
below must be set before TensorFlow is first imported, so importing `tempo`
first is enough. Each is only a default: a value already in the environment wins.

TensorFlow turns its oneDNN CPU kernels on by default only on CPUs with AVX512
neural-network extensions; elsewhere (e.g. AVX2-only AMD EPYC) it falls back to
Eigen, which measured 2.4x slower on a DreamerV2 pixel update and 1.3x slower on
the CPU-sized proprio model. `TF_ENABLE_ONEDNN_OPTS=0` restores TensorFlow's choice.

TensorFlow's C++ log: warnings and info are hidden (`TF_CPP_MIN_LOG_LEVEL=2`);
errors too on a machine without an NVIDIA driver (level 3), where the ones it
prints at start-up ("failed call to cuInit", oneDNN's "supports DT_INT64 only on
platforms with AVX-512") report a GPU that is not there and a fallback, nothing
to act on. Errors stay visible wherever a GPU driver is, and in a multi-worker
run (`TF_CONFIG` set). `TF_CPP_MIN_LOG_LEVEL=0` shows everything.
"""

import os


def _nvidia_driver_present() -> bool:
    """Whether this machine has an NVIDIA kernel driver (a GPU TensorFlow could use)."""
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


def _errors_matter() -> bool:
    """A GPU, or a multi-worker cluster (whose connection errors TensorFlow logs)."""
    return _nvidia_driver_present() or "TF_CONFIG" in os.environ


os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if _errors_matter() else "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from tempo import _mesa  # noqa: E402

_mesa.preload()

__version__ = "0.1.0"
