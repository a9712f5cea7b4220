"""Loads Mesa's software OpenGL driver before TensorFlow, so both can share a process.

TensorFlow exports the LLVM symbols it is built with into the process's global
symbol scope. Mesa's llvmpipe driver (what MuJoCo renders DeepMind Control
pixels with on a CPU) calls its own LLVM, and if it is loaded after TensorFlow
its calls bind to TensorFlow's copy and crash (segfault in mjr_makeContext).
Opening the driver first with RTLD_NOW binds every one of its symbols to the
right library up front. Nothing happens when the driver is not installed or
TensorFlow is already loaded.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys

PRELOADED = False
_DRIVER_DIRS = (
    "/usr/lib/x86_64-linux-gnu/dri",
    "/usr/lib/aarch64-linux-gnu/dri",
    "/usr/lib64/dri",
    "/usr/lib/dri",
)


def preload() -> bool:
    global PRELOADED
    if PRELOADED or "tensorflow" in sys.modules or not sys.platform.startswith("linux"):
        return PRELOADED
    if os.environ.get("MUJOCO_GL", "egl") not in ("egl", "osmesa"):
        return False
    dirs = [d for d in os.environ.get("LIBGL_DRIVERS_PATH", "").split(":") if d] + list(
        _DRIVER_DIRS
    )
    for directory in dirs:
        for name in ("swrast_dri.so", "kms_swrast_dri.so"):
            for path in glob.glob(os.path.join(directory, name)):
                try:
                    ctypes.CDLL(path, mode=os.RTLD_NOW)
                except OSError:
                    continue
                PRELOADED = True
                return True
    return False
