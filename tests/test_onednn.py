"""The oneDNN kernels that importing tempo turns on (see tempo/__init__.py) give
the same update as TensorFlow's default Eigen kernels: one compiled update on a
fixed batch and seed, in two fresh processes. TEMPO's update runs every op
DreamerV2's does (and the meta-weighter's); DreamerV2's own check is in
`make test-all`."""

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
    trainer = tiny_trainer(shapes, meta=sys.argv[2] == "tempo", width=16)
    raw = random_batch(shapes, 3, True, batch=3, length=6, seed=7)
    _, metrics = trainer.train({k: tf.constant(v) for k, v in raw.items()},
                               trainer.initial_state(3))
    out = {f"metric/{key}": value.numpy() for key, value in metrics.items()}
    out.update({f"var/{var.name}": var.numpy() for var in trainer.variables})
    np.savez(sys.argv[1], **out)
    import os
    os._exit(0)  # skips TensorFlow's teardown of the traced functions (seconds)
    """
)


def one_update(path, onednn: str, mode: str) -> None:
    """The mode's metrics and variables after one update, from a fresh process."""
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


@pytest.mark.parametrize("mode", ["tempo", pytest.param("dreamerv2", marks=pytest.mark.slow)])
def test_onednn_update_matches_eigen_update(tmp_path, mode):
    one_update(tmp_path / "eigen.npz", "0", mode)
    one_update(tmp_path / "onednn.npz", "1", mode)
    with np.load(tmp_path / "eigen.npz") as eigen, np.load(tmp_path / "onednn.npz") as onednn:
        eigen, onednn = dict(eigen), dict(onednn)
    assert any(k.startswith("metric/") for k in eigen) and set(eigen) == set(onednn)
    for key in eigen:
        np.testing.assert_allclose(onednn[key], eigen[key], rtol=1e-3, atol=1e-6, err_msg=key)
    assert any(not np.array_equal(eigen[k], onednn[k]) for k in eigen), (
        "identical bits: oneDNN was not switched on in one of the two processes"
    )
