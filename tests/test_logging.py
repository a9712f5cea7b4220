"""Metrics sinks: JSONL lines, TensorBoard events, terminal line, helpers."""

import io
import json
import math

import numpy as np
import pytest
import tensorflow as tf

from tempo.logging import (
    FPS,
    JSONLOutput,
    Logger,
    MetricsAccumulator,
    TensorBoardOutput,
    TerminalOutput,
    eta_seconds,
    format_duration,
)


def read_events(logdir):
    values, images = {}, {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)
                if value.metadata.plugin_data.plugin_name == "images":
                    images[(value.tag, event.step)] = tensor
                else:
                    values[(value.tag, event.step)] = float(tensor)
    return values, images


def test_jsonl_lines_append_across_loggers_and_mark_nonfinite(tmp_path):
    logger = Logger(tmp_path, [JSONLOutput(tmp_path)])
    logger.scalars({"loss": np.float32(1.5), "return": tf.constant(3.0)}, prefix="train")
    logger.write(10)
    logger.write(11)  # nothing collected: no line
    logger = Logger(tmp_path, [JSONLOutput(tmp_path)])  # a resumed run
    logger.scalar("fps", float("nan"))
    logger.scalar("ok", 2)
    logger.write(20)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [10, 20]
    assert lines[0]["train/loss"] == 1.5 and lines[0]["train/return"] == 3.0
    assert lines[1]["fps"] is None and lines[1]["nonfinite"] == ["fps"] and lines[1]["ok"] == 2.0


def test_tensorboard_scalars_and_video_strip(tmp_path):
    logger = Logger(tmp_path, [TensorBoardOutput(tmp_path)])
    logger.scalar("train/loss", 0.25)
    video = np.zeros((3, 4, 5, 1), np.uint8)
    video[1] = 200  # the middle frame is bright
    logger.video("openl", video)
    logger.write(7)
    logger.close()
    values, images = read_events(tmp_path)
    assert values[("train/loss", 7)] == pytest.approx(0.25)
    encoded = images[("openl", 7)]
    decoded = tf.io.decode_png(encoded[2]).numpy()  # [width, height, PNG bytes...]
    assert decoded.shape == (4, 15, 1)  # frames side by side
    assert decoded[:, 5:10].min() == 200 and decoded[:, :5].max() == 0


def test_terminal_line_puts_progress_first():
    stream = io.StringIO()
    out = TerminalOutput(stream=stream)
    out.write(
        12000, {"model_loss": 1.23456, "train/return": 123.4, "fps": 850.0, "eta_s": 3723.0}, {}
    )
    line = stream.getvalue()
    assert line.startswith("[step 12,000] return 123.4 | fps 850 | eta 1:02:03 | model_loss 1.235")


def test_helpers_by_hand():
    acc = MetricsAccumulator()
    acc.add({"a": 1.0, "b": 2.0})
    acc.add({"a": 3.0})
    assert acc.result() == {"a": 2.0, "b": 2.0}
    acc.reset()
    assert acc.result() == {}
    assert format_duration(3723.4) == "1:02:03" and format_duration(float("inf")) == "?"
    assert eta_seconds(250, 1000, 50.0) == 15.0 and math.isinf(eta_seconds(0, 10, 0.0))
    fps = FPS()
    fps.update(100)
    assert fps.rate() > 0 and fps.rate() == 0.0
