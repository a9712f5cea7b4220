"""launch.bench on the small `cpu` config: the JSON keys the issue promises, the
consistency of its numbers and the printed ratio (timings themselves are not
asserted: the machine is noisy)."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
KEYS = {"config", "mode", "median_s", "min_s", "max_s", "compile_s", "peak_rss_mb", "gflop"}


@pytest.mark.slow  # two processes that each compile two updates: about 90 s
def test_bench_rows_parts_and_ratio(tmp_path):
    path = tmp_path / "bench.jsonl"
    cmd = [sys.executable, "-m", "launch.bench", "--configs=cpu", "--modes=tempo,dreamerv2"]
    cmd += ["--iters=2", "--batch=2", "--length=4", "--parts", f"--json={path}"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["config"], r["mode"]) for r in rows] == [("cpu", "tempo"), ("cpu", "dreamerv2")]
    tempo, dreamer = rows
    for row in rows:
        assert KEYS <= set(row)
        assert 0 < row["min_s"] <= row["median_s"] <= row["max_s"]
        assert row["updates_per_s"] == pytest.approx(1 / row["median_s"], rel=2e-3)
        assert row["gflop"] > 0 and row["peak_rss_mb"] > 100 and row["policy_ms"] > 0
        assert set(row["parts_s"]) == {"model_forward", "model_gradients", "behavior_gradients"}
        assert all(v > 0 for v in row["parts_s"].values())
    # Same networks in both modes; TEMPO does strictly more arithmetic.
    assert tempo["params"] == dreamer["params"]
    assert tempo["gflop"] > dreamer["gflop"]
    ratio = tempo["median_s"] / dreamer["median_s"]
    assert f"cpu: TEMPO / DreamerV2 seconds per update = {ratio:.2f}" in out.stdout
    assert "cpu tempo parts: model_forward" in out.stdout
    assert "Reproduce: python -m launch.bench --configs=cpu" in out.stdout


def test_round_ratios_pair_each_round_with_its_own_release_case(capsys):
    """Ratios are taken within a round (ours right before the release's), not
    across rounds, and several rounds print their median and range."""
    from tempo import benchmark as bench

    def row(config, mode, median, round_):
        return dict(
            config=config,
            mode=mode,
            median_s=median,
            min_s=median,
            compile_s=1.0,
            peak_rss_mb=100.0,
            round=round_,
        )

    ours = [
        row("atari", "tempo", 2.0, 0),
        row("atari", "tempo", 3.0, 1),
        row("atari", "tempo", 1.0, 2),
        row("dmc_vision", "tempo", 1.0, 0),
    ]
    released = [
        row("atari", "tempo", 4.0, 0),
        row("atari", "tempo", 4.0, 1),
        row("atari", "tempo", 5.0, 2),
    ]  # no released dmc_vision case
    ratios = bench.round_ratios(ours, released)
    assert ratios == {("atari", "tempo"): [0.5, 0.75, 0.2]}
    bench.print_side_by_side(ours, released)
    out = capsys.readouterr().out
    assert "ours / released per round" in out
    lines = [line.split() for line in out.splitlines()]
    assert ["atari", "tempo", "0.50", "0.20", "0.75", "0.50", "0.75", "0.20"] in lines
