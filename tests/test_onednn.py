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
    for meta in (True, False):
        trainer = tiny_trainer(shapes, meta=meta, width=16)
        raw = random_batch(shapes, 3, True, batch=3, length=6, seed=7)
        _, metrics = trainer.train({k: tf.constant(v) for k, v in raw.items()},
                                   trainer.initial_state(3))
        for key, value in metrics.items():
            out[f"{meta}/metric/{key}"] = value.numpy()
        for var in trainer.variables:
            out[f"{meta}/var/{var.name}"] = var.numpy()
    np.savez(sys.argv[1], **out)
    """
)


def one_update(path, onednn: str) -> dict:
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
    with np.load(path) as data:
        return dict(data)


@pytest.fixture(scope="module")
def updates(tmp_path_factory):
    directory = tmp_path_factory.mktemp("onednn")
    return one_update(directory / "eigen.npz", "0"), one_update(directory / "onednn.npz", "1")


@pytest.mark.parametrize("meta", [True, False])
def test_onednn_update_matches_eigen_update(updates, meta):
    eigen, onednn = updates
    keys = [k for k in eigen if k.startswith(f"{meta}/")]
    assert keys and set(keys) == {k for k in onednn if k.startswith(f"{meta}/")}
    for key in keys:
        np.testing.assert_allclose(onednn[key], eigen[key], rtol=1e-3, atol=1e-6, err_msg=key)
    assert any(not np.array_equal(eigen[k], onednn[k]) for k in keys), (
        "identical bits: oneDNN was not switched on in one of the two processes"
    )
