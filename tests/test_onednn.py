"""The oneDNN kernels that importing tempo turns on (see tempo/__init__.py) give
the same update as TensorFlow's default Eigen kernels: one compiled update on a
fixed batch and seed, in two fresh processes, for TEMPO and DreamerV2."""

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

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
    meta = sys.argv[2] == "tempo"
    trainer = tiny_trainer(shapes, meta=meta, width=16)
    raw = random_batch(shapes, 3, True, batch=3, length=6, seed=7)
    _, metrics = trainer.train({k: tf.constant(v) for k, v in raw.items()},
                               trainer.initial_state(3))
    for key, value in metrics.items():
        out[f"metric/{key}"] = value.numpy()
    for var in trainer.variables:
        out[f"var/{var.name}"] = var.numpy()
    np.savez(sys.argv[1], **out)
    import os
    os._exit(0)  # skips TensorFlow's teardown of the traced functions (seconds)
    """
)


def one_update(path, mode: str, onednn: str) -> dict:
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=onednn)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path), mode],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    with np.load(path) as data:
        return dict(data)


@pytest.mark.parametrize("mode", ["tempo", "dreamerv2"])
def test_onednn_update_matches_eigen_update(tmp_path, mode):
    # One mode per test, so pytest-xdist workers split the four processes.
    eigen = one_update(tmp_path / "eigen.npz", mode, "0")
    onednn = one_update(tmp_path / "onednn.npz", mode, "1")
    keys = list(eigen)
    assert keys and set(keys) == set(onednn)
    for key in keys:
        np.testing.assert_allclose(onednn[key], eigen[key], rtol=1e-3, atol=1e-6, err_msg=key)
    assert any(not np.array_equal(eigen[k], onednn[k]) for k in keys), (
        "identical bits: oneDNN was not switched on in one of the two processes"
    )
