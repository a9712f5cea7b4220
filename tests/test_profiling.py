"""tempo.profiling: kernel self-times from a profiler trace."""

import pytest

import tempo  # noqa: F401
from tempo.profiling import find_trace, read_trace, scope_of, self_times


def test_self_times_subtract_nested_kernels_by_hand():
    # A call [0, 100) holding [10, 30) and [40, 90), which holds [50, 60); then [100, 120).
    spans = [(40, 90), (0, 100), (50, 60), (10, 30), (100, 120)]
    assert self_times(spans) == [40, 30, 10, 20, 20]


def test_scopes_split_forward_and_gradient_kernels():
    assert scope_of("decoder/conv0/conv2d_transpose") == "fwd decoder"
    assert scope_of("gradient_tape/decoder/conv0/Conv2D") == "bwd decoder"
    assert scope_of("MatMul") == "fwd (top)"


def test_a_trace_of_a_graph_function_reads_back_its_kernels(tmp_path):
    import tensorflow as tf

    a = tf.random.normal([256, 256])

    @tf.function
    def work(x):
        for _ in range(3):
            x = tf.matmul(x, a)
        return tf.reduce_sum(x)

    work(a)
    tf.profiler.experimental.start(str(tmp_path))
    work(a), work(a)
    tf.profiler.experimental.stop()
    times = read_trace(find_trace(tmp_path), updates=2)
    matmuls = [k for k in times.by_type if "MatMul" in k]
    assert matmuls, times.by_type
    assert sum(times.calls[k] for k in matmuls) == pytest.approx(3)  # per traced call
    assert times.total_ms >= sum(times.by_type[k] for k in matmuls) > 0


def test_a_directory_without_a_trace_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="No \\*.xplane.pb"):
        find_trace(tmp_path)
