"""The terminal a person watches: the compact progress line, its redraw on a
terminal, the verbose switch, and the end line of a run."""

import io
import os

from tempo.progress import ProgressOutput, format_progress

WIDTH = 120  # the terminal the line must fit


def test_the_line_holds_progress_returns_and_health_by_hand():
    latest = {
        "fps": 85.34,
        "eta_s": 3723.0,
        "train/return": 873.25,
        "eval/return": 1234.5,
        "train/model_loss": 6.2581,
        "train/meta_weight_std": 0.10661,
        "train/actor_loss": 0.5,  # one of the many kept out of the line
    }
    assert format_progress(12_000, 100_000, latest) == (
        "frame 12,000/100,000  85.34 fps  eta 1:02:03  return 873.2  eval 1,234  "
        "model_loss 6.258  meta_std 0.1066"
    )
    # Before the first episode, evaluation and rate; DreamerV2 has no meta_std.
    assert format_progress(0, 100_000, {"train/model_loss": 1.0}) == (
        "frame 0/100,000  - fps  eta ?  return -  eval -  model_loss 1"
    )


def test_the_line_fits_120_columns_with_five_digit_returns_and_a_seven_digit_budget():
    latest = {
        "fps": 12_345.0,
        "eta_s": 999 * 3600 + 3599.0,  # 999:59:59
        "train/return": -12_345.6,
        "eval/return": -23_456.7,
        "train/model_loss": -12_345.6,
        "train/meta_weight_std": 0.123456,
    }
    line = format_progress(8_765_432, 9_999_999, latest)
    assert line.startswith("frame 8,765,432/9,999,999  12,345 fps  eta 999:59:59  ")
    assert "return -12,346  eval -23,457" in line and line.endswith("meta_std 0.1235")
    assert len(line) <= WIDTH, (len(line), line)


def test_abnormal_figures_show_only_when_not_zero():
    quiet = {
        "train/update_skipped": 0.0,
        "train/behavior_skipped": 0.0,
        "train/nonfinite_streak": 0.0,
        "env_restarts": 0.0,
    }
    normal = format_progress(100, 1000, quiet)
    for name in ("skipped", "nonfinite", "restarts"):
        assert name not in normal
    line = format_progress(
        100,
        1000,
        {**quiet, "train/update_skipped": 0.25, "train/nonfinite_streak": 3.0, "env_restarts": 2},
    )
    assert "update_skipped 25%  nonfinite_streak 3  env_restarts 2" in line
    assert "behavior_skipped" not in line
    nan = {"train/behavior_skipped": float("nan")}  # not normal either
    assert "behavior_skipped nan%" in format_progress(1, 9, nan)


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_redraws_one_row_and_keeps_each_evaluation(monkeypatch):
    monkeypatch.setattr("shutil.get_terminal_size", lambda fallback: os.terminal_size((60, 20)))
    screen = Terminal()
    output = ProgressOutput(1000, stream=screen)
    output.write(10, {"fps": 0.01, "eta_s": 1e5}, {})  # the first step's rate: left out
    output.write(100, {"fps": 50.0, "eta_s": 18.0, "train/return": 9.0, "replay_steps": 3.0}, {})
    output.write(200, {"fps": 40.0, "eta_s": 20.0}, {})
    output.write(200, {"eval/return": 15.0, "eval/length": 15.0}, {})
    output.write(300, {"fps": 45.0, "eta_s": 15.6}, {})
    output.close()
    rows = screen.getvalue().split("\n")
    assert rows[-1] == ""  # close ended the live row
    # Each row redraws in place ('\r', erase to the end), cut to the width less one.
    first = rows[0].split("\r")[1:]
    assert [r.endswith("\x1b[K") for r in first] == [True] * 4
    assert first[0][:-3] == "frame 10/1,000  - fps  eta ?  return -  eval -"
    assert first[1][:-3] == "frame 100/1,000  50 fps  eta 0:00:18  return 9  eval -"
    assert first[3][:-3] == "frame 200/1,000  40 fps  eta 0:00:20  return 9  eval 15"
    assert rows[1] == "\rframe 300/1,000  45 fps  eta 0:00:16  return 9  eval 15\x1b[K"
    output.write(400, {"train/model_loss": 1.5, "train/meta_weight_std": 0.1, "fps": 1.0}, {})
    assert len(screen.getvalue().rsplit("\r", 1)[1]) - len("\x1b[K") == 59


def test_elsewhere_every_log_is_a_plain_line():
    log = io.StringIO()
    output = ProgressOutput(1000, stream=log)
    output.write(10, {"fps": 0.01, "eta_s": 1e5}, {})
    output.write(100, {"fps": 50.0, "eta_s": 18.0}, {})
    output.write(100, {"eval/return": 3.0}, {})
    output.write(150, {}, {})  # nothing to report: nothing printed
    output.write(100, {"replay_steps": 9.0}, {})  # the same line again: not repeated
    output.close()
    assert log.getvalue() == (
        "frame 10/1,000  - fps  eta ?  return -  eval -\n"
        "frame 100/1,000  50 fps  eta 0:00:18  return -  eval -\n"
        "frame 100/1,000  50 fps  eta 0:00:18  return -  eval 3\n"
    )


def test_a_resumed_run_shows_its_earlier_returns_until_it_has_its_own():
    earlier = [
        {"step": 10, "train/return": 5.0, "fps": 9.0, "train/update_skipped": 1.0},
        {"step": 20, "eval/return": 7.0, "train/return": None},  # null: non-finite
    ]
    log = io.StringIO()
    output = ProgressOutput(100, stream=log, earlier=earlier)
    output.write(40, {"train/model_loss": 1.0}, {})
    output.write(50, {"train/return": 6.0}, {})
    assert log.getvalue() == (
        "frame 40/100  - fps  eta ?  return 5  eval 7  model_loss 1\n"
        "frame 50/100  - fps  eta ?  return 6  eval 7  model_loss 1\n"
    )


def test_end_lines_by_hand():
    from launch.ending import end_line

    stopped = {
        "ended": "stopped",
        "step": 12_340,
        "logdir": "runs/a",
        "checkpoint": "runs/a/checkpoints/ckpt-6170",
        "eval_return": 75.0,
    }
    assert end_line(stopped, "python -m launch.train --logdir=runs/a") == (
        "Stopped by signal at env frame 12,340; checkpoint saved (ckpt-6170). "
        "Resume with the same command: python -m launch.train --logdir=runs/a"
    )
    finished = {**stopped, "ended": "finished", "step": 100_000, "eval_return": 238.41}
    line = end_line({**finished, "saved_model": "runs/a/saved_model"}, "unused")
    assert line.startswith(
        "Finished 100,000 env frames; final eval return 238.4; outputs in runs/a "
        "(policy in saved_model/). Evaluate: "
    )
    assert line.endswith(" -m launch.evaluate --logdir=runs/a") and "unused" not in line
    line = end_line({**finished, "eval_return": None, "saved_model": None}, "unused")
    assert line.startswith("Finished 100,000 env frames; outputs in runs/a. Evaluate: ")


def test_a_run_shows_its_records_as_compact_lines_and_ends_with_where_its_outputs_are(
    tmp_path, capsys
):
    from test_run import tiny_run

    from launch.ending import end_line
    from tempo.logging import read_records

    summary = tiny_run(tmp_path / "compact", "gym_CartPole-v1", meta=True, steps=60, log_every=20)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("frame ")]
    records = read_records(tmp_path / "compact" / "metrics.jsonl")
    # The terminal shows what metrics.jsonl records, write by write.
    shown = io.StringIO()
    output = ProgressOutput(60, stream=shown)
    for record in records:
        scalars = {k: v for k, v in record.items() if k not in ("step", "time", "nonfinite")}
        output.write(record["step"], {k: v for k, v in scalars.items() if v is not None}, {})
    assert lines == shown.getvalue().splitlines()
    assert {int(line.split()[1].split("/")[0]) for line in lines} == {r["step"] for r in records}
    assert all(len(line) <= WIDTH and "/60  " in line for line in lines)
    assert "model_loss " in lines[-1] and "meta_std " in lines[-1] and "eta 0:00:00" in lines[-1]
    returns = [r["train/return"] for r in records if "train/return" in r]
    assert f"  return {returns[-1]:.4g}  eval -  " in lines[-1]  # no evaluation: eval_every 0
    assert "actor_loss" not in out and "replay_steps" not in out
    assert summary["ended"] == "finished"
    assert end_line(summary, "unused").startswith(
        f"Finished 60 env frames; outputs in {tmp_path / 'compact'}. Evaluate: "
    )


def test_verbose_prints_every_metric_of_each_record(tmp_path, capsys):
    from test_run import tiny_run

    from tempo.logging import read_records

    tiny_run(tmp_path, "gym_CartPole-v1", steps=40, log_every=20, verbose=True)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[step ")]
    records = read_records(tmp_path / "metrics.jsonl")
    assert len(lines) == len(records) >= 2
    for line, record in zip(lines, records):
        assert line.startswith(f"[step {record['step']}] ")
        for key in set(record) - {"step", "time"}:  # by its name, or its short name
            short = {"eta_s": "eta"}.get(key, key.rsplit("/", 1)[-1])
            assert f" {key} " in line or f" {short} " in line, key


def test_tensorflow_loads_without_its_start_up_lines_unless_asked():
    """TensorFlow logs "Could not find cuda drivers" and "oneDNN custom
    operations are on" while its libraries load, before it reads
    TF_CPP_MIN_LOG_LEVEL, each after absl's preamble, and twice (a second copy of
    its logging in the profiler plugin). The launchers hold them back; at level 0
    they show."""
    import pathlib
    import subprocess
    import sys

    code = "from launch.common import import_tensorflow_quietly as load; load(); print('ours')"
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}

    def start(**extra):
        command = [sys.executable, "-c", code]
        done = subprocess.run(
            command, cwd=root, env={**env, **extra}, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0 and done.stdout == "ours\n", done.stderr[-2000:]
        return done.stderr

    assert start() == ""
    assert start(TF_CPP_MIN_LOG_LEVEL="0").count("before absl::InitializeLog() is called") == 2
