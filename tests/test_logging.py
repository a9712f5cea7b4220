"""Metrics sinks: JSONL lines, TensorBoard events, the terminal line, helpers."""

import json
import math
import time

import numpy as np
import pytest
import tensorflow as tf

from tempo import logging as tlog
from tempo.logging import (
    FPS,
    JSONLOutput,
    Logger,
    MetricsAccumulator,
    TensorBoardOutput,
    TerminalOutput,
    eta_seconds,
    format_duration,
    format_value,
    read_records,
)


def read_jsonl(path):
    def reject(constant):  # NaN / Infinity are not JSON: the file must stay strict
        raise AssertionError(f"non-standard JSON constant {constant}")

    return [json.loads(line, parse_constant=reject) for line in path.read_text().splitlines()]


def read_events(logdir):
    """{(tag, step): float} for scalars and {(tag, step): decoded HxWxC} for images."""
    scalars, images = {}, {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)
                if value.metadata.plugin_data.plugin_name == "images":
                    # [width, height, encoded PNG...]
                    images[(value.tag, event.step)] = tf.io.decode_png(tensor[2]).numpy()
                else:
                    scalars[(value.tag, event.step)] = float(tensor)
    return scalars, images


def test_jsonl_holds_values_at_their_steps(tmp_path):
    logger = Logger(tmp_path, [JSONLOutput(tmp_path)])
    logger.scalars({"loss": np.float32(1.5), "return": tf.constant(3.0)}, prefix="train")
    logger.scalar("updates", 4)
    logger.write(10)
    logger.write(11)  # nothing collected since: no line, and nothing repeated
    logger.scalar("train/loss", np.array([0.5]))  # size-1 arrays count as scalars
    logger.write(12)
    lines = read_jsonl(tmp_path / "metrics.jsonl")
    assert [line["step"] for line in lines] == [10, 12]
    assert lines[0]["train/loss"] == 1.5 and lines[0]["train/return"] == 3.0
    assert lines[0]["updates"] == 4.0 and isinstance(lines[0]["updates"], float)
    assert set(lines[1]) == {"step", "time", "train/loss"} and lines[1]["train/loss"] == 0.5
    assert abs(lines[0]["time"] - time.time()) < 60
    assert "nonfinite" not in lines[0]


def test_jsonl_appends_across_loggers_like_a_resumed_run(tmp_path):
    first = Logger(tmp_path, [JSONLOutput(tmp_path)])
    first.scalar("a", 1.0)
    first.write(1)
    first.close()
    resumed = Logger(tmp_path, [JSONLOutput(tmp_path)])
    resumed.scalar("a", 2.0)
    resumed.write(2)
    resumed.close()
    assert [(line["step"], line["a"]) for line in read_jsonl(tmp_path / "metrics.jsonl")] == [
        (1, 1.0),
        (2, 2.0),
    ]


def test_read_records_skips_a_torn_last_line_and_a_missing_file(tmp_path):
    logger = Logger(tmp_path, [JSONLOutput(tmp_path)])
    for step in (10, 20):
        logger.scalar("a", float(step))
        logger.write(step)
    path = tmp_path / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"step": 30, "a": 3')  # a write killed halfway
    assert [(r["step"], r["a"]) for r in read_records(path)] == [(10, 10.0), (20, 20.0)]
    assert read_records(tmp_path / "absent.jsonl") == []


def test_nonfinite_values_become_null_and_are_listed_without_crashing(tmp_path, capsys):
    logger = Logger(tmp_path)  # the default outputs: terminal, JSONL and TensorBoard
    logger.scalar("fps", float("nan"))
    logger.scalar("ok", 2)
    logger.scalar("loss", np.float32("inf"))
    logger.scalar("eta_s", tf.constant(-math.inf))
    logger.image("img", np.full((2, 2, 3), np.nan))  # float image with NaNs
    logger.write(20)
    logger.close()
    (line,) = read_jsonl(tmp_path / "metrics.jsonl")
    assert line["fps"] is None and line["loss"] is None and line["eta_s"] is None
    assert line["ok"] == 2.0
    assert line["nonfinite"] == ["fps", "loss", "eta_s"]
    out = capsys.readouterr().out
    assert out.startswith("[step 20] fps nan | eta ? | loss inf | ok 2\n")
    scalars, images = read_events(tmp_path)
    assert math.isnan(scalars[("fps", 20)]) and scalars[("loss", 20)] == math.inf
    assert images[("img", 20)].max() == 0


def test_tensorboard_scalars_images_and_video_strip(tmp_path):
    out = TensorBoardOutput(tmp_path)
    logger = Logger(tmp_path, [out])
    assert not list(tmp_path.glob("events.out.tfevents.*"))  # writer created lazily
    logger.scalar("train/loss", 0.25)
    video = np.zeros((3, 4, 5, 1), np.uint8)
    video[1] = 200  # the middle frame is bright
    logger.video("openl", video)
    logger.write(7)
    logger.scalar("train/loss", tf.constant(0.5))
    logger.image("gray", np.linspace(0.0, 1.0, 6).reshape(2, 3))  # HxW float in [0, 1]
    logger.write(8)
    logger.close()
    scalars, images = read_events(tmp_path)
    assert scalars[("train/loss", 7)] == pytest.approx(0.25)
    assert scalars[("train/loss", 8)] == pytest.approx(0.5)
    strip = images[("openl", 7)]
    assert strip.shape == (4, 15, 1)  # 3 frames of 4x5, side by side
    assert strip[:, :5].max() == 0 and strip[:, 5:10].min() == 200 and strip[:, 10:].max() == 0
    gray = images[("gray", 8)]
    assert gray.shape == (2, 3, 1) and gray[0, 0, 0] == 0 and gray[1, 2, 0] == 255
    assert ("openl", 8) not in images  # cleared after the write at step 7


def test_video_strip_keeps_frame_order_and_colour(tmp_path):
    logger = Logger(tmp_path, [TensorBoardOutput(tmp_path)])
    video = np.zeros((2, 1, 2, 3), np.uint8)
    video[0, ..., 0] = 10  # frame 0 red
    video[1, ..., 2] = 20  # frame 1 blue
    logger.video("v", video)
    logger.write(0)
    logger.close()
    strip = read_events(tmp_path)[1][("v", 0)]
    assert strip.shape == (1, 4, 3)
    np.testing.assert_array_equal(strip[0], [[10, 0, 0], [10, 0, 0], [0, 0, 20], [0, 0, 20]])


def test_bad_inputs_are_named_in_the_error(tmp_path):
    logger = Logger(tmp_path, [])
    with pytest.raises(ValueError, match="'train/loss'.*shape"):
        logger.scalar("train/loss", np.ones(3))
    with pytest.raises(ValueError, match="'name'"):
        logger.scalar("name", "abc")
    with pytest.raises(ValueError, match="'img'"):
        logger.image("img", np.zeros((2, 2, 5)))
    with pytest.raises(ValueError, match="'vid'"):
        logger.video("vid", np.zeros((2, 2)))


def test_terminal_line_puts_progress_first(capsys):
    out = TerminalOutput()
    scalars = {
        "train/model_loss": 1.23456,
        "train/return": 123.4,
        "eval/return": 99.0,
        "fps": 850.2,
        "eta_s": 2533.0,
        "replay_steps": 12000.0,
        "eval/kl": 1.0,
        "train/kl": 2.0,
    }
    out.write(12000, scalars, {})
    line = capsys.readouterr().out
    assert line == (
        "[step 12,000] train/return 123.4 | eval/return 99 | fps 850.2 | eta 0:42:13 | "
        "eval/kl 1 | replay_steps 12,000 | train/kl 2 | model_loss 1.235\n"
    )
    out.write(5, {}, {})  # nothing to say: no line
    assert capsys.readouterr().out == ""


def test_terminal_keys_as_whitelist(capsys):
    TerminalOutput(keys=["b", "a"], show_rest=False).write(3, {"a": 1.0, "b": 2.0, "c": 3.0}, {})
    assert capsys.readouterr().out == "[step 3] b 2 | a 1\n"


def test_metrics_accumulator_means_by_hand():
    acc = MetricsAccumulator()
    acc.add({"a": 1.0, "b": np.float32(2.0)})
    acc.add({"a": tf.constant(3.0)})
    acc.add({"a": 8})
    assert acc.result() == {"a": 4.0, "b": 2.0}
    acc.add({"c": float("nan")})
    assert math.isnan(acc.result()["c"])  # a NaN shows up, not averaged away
    acc.reset()
    assert acc.result() == {}
    acc.add({"a": 5.0})
    assert acc.result() == {"a": 5.0}


def test_duration_eta_and_value_formatting_by_hand():
    assert format_duration(0) == "0:00:00"
    assert format_duration(59.6) == "0:01:00"
    assert format_duration(3723.4) == "1:02:03"
    assert format_duration(90000) == "25:00:00"
    assert format_duration(float("inf")) == "?" and format_duration(float("nan")) == "?"
    assert format_duration(-1) == "?" and format_duration(None) == "?"
    assert eta_seconds(250, 1000, 50.0) == 15.0
    assert eta_seconds(1000, 1000, 0.0) == 0.0 and eta_seconds(1200, 1000, 5.0) == 0.0
    assert math.isinf(eta_seconds(0, 10, 0.0)) and math.isinf(eta_seconds(0, 10, float("nan")))
    assert format_value(1.23456) == "1.235" and format_value(850.0) == "850"
    assert format_value(1234567.0) == "1,234,567" and format_value(-2e-5) == "-2e-05"


def test_fps_counts_steps_since_the_last_rate(monkeypatch):
    clock = iter([100.0, 102.0, 102.5, 103.0])
    monkeypatch.setattr(tlog.time, "monotonic", lambda: next(clock))
    fps = FPS()  # t = 100
    fps.update(100)
    fps.update(60)
    assert fps.rate() == 80.0  # 160 steps in 2 s
    fps.update(10)
    assert fps.rate() == 20.0  # 10 steps in 0.5 s since the previous rate
    assert fps.rate() == 0.0


def test_fps_pending_counts_until_rate():
    fps = FPS()
    assert fps.pending == 0
    fps.update(5)
    fps.update(2)
    assert fps.pending == 7
    fps.rate()
    assert fps.pending == 0
