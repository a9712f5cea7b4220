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


def test_live_flops_count_only_what_runs_by_hand():
    """A gradient taken for the input only: the kernel's gradient product is in
    the traced graph but not run, and an unused product is not counted either."""
    import tensorflow as tf

    from tempo.profiling import live_flops

    kernel, other = tf.Variable(tf.ones([5, 3])), tf.Variable(tf.ones([5, 7]))

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.matmul(x, kernel)  # [4, 5] x [5, 3]: 2 * 4 * 5 * 3 = 120
            loss = tf.reduce_sum(y)  # no FLOP statistic in TensorFlow
        tf.matmul(x, other)  # unused: pruned
        dx = tape.gradient(loss, x)  # [4, 3] x [3, 5]: 120; dW (also 120) not needed
        kernel.assign_add(tf.ones([5, 3]))  # stateful: runs, no FLOPs
        return y, dx

    graph = step.get_concrete_function(tf.TensorSpec([4, 5])).graph
    matmuls = [op for op in graph.get_operations() if op.type == "MatMul"]
    assert len(matmuls) == 4  # forward, unused, and both gradient products
    # Live: the forward product (an output) and the input gradient's, 120 each.
    assert live_flops(graph) == 240
