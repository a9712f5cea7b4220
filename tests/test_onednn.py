"""The oneDNN kernels that importing tempo turns on (see tempo/__init__.py) give
the same update as TensorFlow's default Eigen kernels: one compiled update on a
fixed batch and seed, for TEMPO and for DreamerV2, in two fresh processes."""

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, "tests")
    import numpy as np
    import tensorflow as tf
    from support import random_batch, tiny_trainer

    shapes = {"image": (64, 64, 3), "vector": (3,)}
    out = {}
    for mode in ("tempo", "dreamerv2"):
        trainer = tiny_trainer(shapes, meta=mode == "tempo", width=16)
        raw = random_batch(shapes, 3, True, batch=3, length=6, seed=7)
        _, metrics = trainer.train({k: tf.constant(v) for k, v in raw.items()},
                                   trainer.initial_state(3))
        for key, value in metrics.items():
            out[f"{mode}/metric/{key}"] = value.numpy()
        for var in trainer.variables:
            out[f"{mode}/var/{var.name}"] = var.numpy()
    np.savez(sys.argv[1], **out)
    import os
    os._exit(0)  # skips TensorFlow's teardown of the traced functions (seconds)
    """
)


def one_update(path, onednn: str) -> None:
    """Both modes' metrics and variables after one update, from a fresh process."""
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=onednn)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]


def test_onednn_update_matches_eigen_update(tmp_path):
    # One test for both modes: each process traces both (a start-up saved).
    one_update(tmp_path / "eigen.npz", "0")
    one_update(tmp_path / "onednn.npz", "1")
    with np.load(tmp_path / "eigen.npz") as eigen, np.load(tmp_path / "onednn.npz") as onednn:
        eigen, onednn = dict(eigen), dict(onednn)
    for mode in ("tempo", "dreamerv2"):
        keys = [k for k in eigen if k.startswith(f"{mode}/")]
        assert keys and set(keys) == {k for k in onednn if k.startswith(f"{mode}/")}
        for key in keys:
            np.testing.assert_allclose(onednn[key], eigen[key], rtol=1e-3, atol=1e-6, err_msg=key)
        assert any(not np.array_equal(eigen[k], onednn[k]) for k in keys), (
            f"{mode}: identical bits: oneDNN was not switched on in one of the two processes"
        )
