"""Where an update's time goes: kernel self-times read from a TensorFlow
profiler trace (an `.xplane.pb` written by `tf.profiler.experimental`).

The trace of a graph function holds one event per kernel on the inter-op
threads, named `<name scope>/<op name>:<op type>`; function-call kernels
(`PartitionedCall`, `While`, ...) contain the kernels they run, so each event's
own time is its duration less that of the events nested in it on its thread.
Traces of TensorFlow 2.15 and 2.21 share this format, so the released code's
profile reads the same way as ours.
"""

from __future__ import annotations

import collections
import pathlib
from dataclasses import dataclass, field


@dataclass
class OpTimes:
    """Milliseconds per traced update: by op type and by (direction, scope)."""

    by_type: dict[str, float] = field(default_factory=dict)
    by_scope: dict[str, float] = field(default_factory=dict)
    calls: dict[str, float] = field(default_factory=dict)

    @property
    def total_ms(self) -> float:
        return sum(self.by_type.values())


def self_times(spans: list[tuple[int, int]]) -> list[int]:
    """Each span's duration less the spans nested in it (spans of one thread,
    properly nested or disjoint, as a thread's trace events are)."""
    order = sorted(range(len(spans)), key=lambda i: (spans[i][0], -spans[i][1]))
    own = [end - start for start, end in spans]
    stack: list[int] = []
    for i in order:
        start, end = spans[i]
        while stack and spans[stack[-1]][1] <= start:
            stack.pop()
        if stack:
            own[stack[-1]] -= end - start
        stack.append(i)
    return own


def scope_of(name: str) -> str:
    """'fwd decoder' for 'decoder/conv/Conv2D', 'bwd decoder' for a gradient
    kernel of that layer ('gradient_tape/decoder/...', 'gradients/...')."""
    parts = [p for p in name.split("/") if p]
    backward = bool(parts) and parts[0].startswith(("gradient_tape", "gradients"))
    rest = parts[1:] if backward else parts
    return ("bwd " if backward else "fwd ") + (rest[0] if len(rest) > 1 else "(top)")


def read_trace(path: str | pathlib.Path, updates: int) -> OpTimes:
    """Kernel self-times of the host's inter-op threads in one `.xplane.pb`,
    divided by the number of updates the trace holds."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    space.ParseFromString(pathlib.Path(path).read_bytes())
    by_type: collections.Counter = collections.Counter()
    by_scope: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            kernels = []
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" in name:  # '<scope>/<op>:<type>'; the rest is executor bookkeeping
                    kernels.append((name, event.offset_ps, event.offset_ps + event.duration_ps))
            own = self_times([(start, end) for _, start, end in kernels])
            for (name, _, _), ps in zip(kernels, own):
                op_name, op_type = name.rsplit(":", 1)
                by_type[op_type] += ps
                by_scope[scope_of(op_name)] += ps
                calls[op_type] += 1
    scale = 1e-9 / updates  # picoseconds to milliseconds per update
    return OpTimes(
        {k: v * scale for k, v in by_type.items()},
        {k: v * scale for k, v in by_scope.items()},
        {k: v / updates for k, v in calls.items()},
    )


def find_trace(directory: str | pathlib.Path) -> pathlib.Path:
    """The newest `.xplane.pb` under a profiler log directory."""
    traces = sorted(pathlib.Path(directory).rglob("*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    if not traces:
        raise FileNotFoundError(f"No *.xplane.pb under {directory}: was the profiler run there?")
    return traces[-1]


def upstream_ops(roots) -> list:
    """The graph ops `roots` (ops) wait for, themselves included, through data and
    control inputs: what TensorFlow runs to produce them."""
    stack, seen, found = list(roots), set(), []
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        found.append(op)
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return found


def live_flops(graph) -> int:
    """Floating-point operations of the ops of a `tf.function` graph that run.

    A traced function graph keeps every op its Python code created, also those
    whose results nothing uses, such as the kernel gradients a `GradientTape`
    builds for layers it differentiates only for their inputs; TensorFlow prunes
    them before running. Counted here: the ops that the graph's outputs and its
    stateful ops (variable updates) depend on, through data and control inputs,
    each by its registered FLOP statistic (ops without one count zero).
    """
    from tensorflow.python.framework import ops

    total = 0
    for op in upstream_ops([t.op for t in graph.outputs] + list(graph.control_outputs)):
        try:
            total += ops.get_stats_for_node_def(graph, op.node_def, "flops").value or 0
        except ValueError:  # no statistic registered, or shapes not static
            pass
    return total
