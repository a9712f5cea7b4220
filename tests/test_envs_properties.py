"""Property-based checks of the env wrappers: any episode length (1 included), any
action repeat and time limit, in both nesting orders, against a direct count."""

import math

import gymnasium
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_envs_wrappers import Counter

from tempo.envs import ActionRepeat, NormalizeAction, OneHotAction, TimeLimit

FAST = settings(max_examples=60, deadline=None)


def play(env, episodes=2):
    """Steps with action 0 until is_last, `episodes` times; per episode the list of
    (reward, is_last, is_terminal) and the first observation's flags."""
    played = []
    for _ in range(episodes):
        first = env.reset()
        assert first["is_first"] and not first["is_last"] and first["reward"] == 0
        steps = []
        while not steps or not steps[-1][1]:
            obs = env.step(0)
            assert not obs["is_first"]
            steps.append((float(obs["reward"]), bool(obs["is_last"]), bool(obs["is_terminal"])))
            assert len(steps) < 10_000
        with pytest.raises(RuntimeError, match="reset"):
            env.step(0)  # stepping past the end is caught, whatever the stack
        played.append(steps)
    return played


def expected(native_length, repeat, terminal):
    """Rewards of an episode of `native_length` native steps at `repeat` per agent step."""
    agent_steps = math.ceil(native_length / repeat)
    rewards = [float(repeat)] * (agent_steps - 1) + [native_length - repeat * (agent_steps - 1.0)]
    flags = [(False, False)] * (agent_steps - 1) + [(True, terminal)]
    return [(r, last, term) for r, (last, term) in zip(rewards, flags)]


@FAST
@given(end=st.integers(1, 40), repeat=st.integers(1, 5), limit=st.integers(1, 40))
def test_repeat_over_time_limit_counts_native_steps(end, repeat, limit):
    # The limit counts native steps; the repeat stops early at either end.
    env = ActionRepeat(TimeLimit(Counter(end=end), limit), repeat)
    want = expected(min(end, limit), repeat, terminal=end <= limit)
    assert play(env) == [want, want]


@FAST
@given(end=st.integers(1, 40), repeat=st.integers(1, 5), limit=st.integers(1, 40))
def test_time_limit_over_repeat_counts_agent_steps(end, repeat, limit):
    # The limit counts agent steps of `repeat` native steps each.
    inner = Counter(end=end)
    env = TimeLimit(ActionRepeat(inner, repeat), limit)
    native = min(end, limit * repeat)
    want = expected(native, repeat, terminal=math.ceil(end / repeat) <= limit)
    assert play(env) == [want, want]
    assert inner.steps == native


@FAST
@given(n=st.integers(1, 12), start=st.integers(-3, 3), data=st.data())
def test_one_hot_action_reaches_the_chosen_index(n, start, data):
    inner = Counter(action_space=gymnasium.spaces.Discrete(n, start=start))
    env = OneHotAction(inner)
    env.reset()
    indices = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=5))
    for index in indices:
        env.step(np.eye(n, dtype=np.float32)[index])
    assert inner.actions == [start + i for i in indices]


finite = st.floats(-100, 100, allow_nan=False, width=32)


@FAST
@given(
    bounds=st.lists(
        st.tuples(finite, finite).filter(lambda b: b[0] < b[1]), min_size=1, max_size=4
    ),
    data=st.data(),
)
def test_normalize_action_maps_the_unit_box_linearly_onto_the_bounds(bounds, data):
    low, high = (np.array(b, np.float32) for b in zip(*bounds))
    inner = Counter(action_space=gymnasium.spaces.Box(low, high))
    env = NormalizeAction(inner)
    env.reset()
    action = np.array(data.draw(st.lists(finite, min_size=len(low), max_size=len(low))))
    env.step(action)
    t = (np.clip(action, -1, 1) + 1) / 2
    sent = inner.actions[-1]
    np.testing.assert_allclose(
        sent, low + t * (high.astype(np.float64) - low), rtol=1e-5, atol=1e-4
    )
    assert np.all(sent >= low) and np.all(sent <= high)
    env.step(-np.ones(len(low)))
    env.step(np.ones(len(low)))
    np.testing.assert_allclose(inner.actions[-2:], [low, high], rtol=1e-6, atol=1e-5)


def test_normalize_action_stays_inside_lopsided_bounds():
    # Found by the property above: +1 mapped onto [-1, -1.2e-38] rounded to 0.0.
    low, high = np.float32(-1.0), np.float32(-1.1754943508222875e-38)
    inner = Counter(action_space=gymnasium.spaces.Box(low, high, (1,), np.float32))
    env = NormalizeAction(inner)
    env.reset()
    env.step(np.ones(1))
    env.step(-np.ones(1))
    assert inner.actions[0][0] == high and inner.actions[1][0] == low
