"""Our Atari pipeline against the released code's, recorded by tests/reference/make_atari_golden.py.

The golden file holds what the release's own ``common.Atari`` (gym 0.19.0's
``AtariPreprocessing`` over atari-py 0.2.9's ALE, OpenCV 4.5.3 for the resize)
returned for fixed action sequences with sticky actions off, the raw ALE screens
behind those observations, and OpenCV INTER_AREA resizes at other sizes. No
OpenCV and no old gym are needed here: our ALE (ale-py 0.12) replays the same
actions and no-op counts, and ``resize_area`` must reproduce OpenCV's bytes.

Where we differ from the release on purpose (the terminal observation), the
test pins both behaviours.
"""

import pathlib
import zlib

import numpy as np
import pytest

from tempo.envs import make_env
from tempo.envs.wrappers import resize_area

GOLDEN = pathlib.Path(__file__).parent / "reference" / "golden_atari_env.npz"
RESIZE_SIZES = [(64, 64), (84, 84), (105, 80), (70, 40), (100, 100), (32, 48), (64, 48)]


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as data:
        return {key: data[key] for key in data.files}


def noise_images():
    # tests/reference/make_atari_golden.py noise_images(): legacy RandomState
    # streams are the same under every numpy version.
    return np.random.RandomState(0).randint(0, 256, (1, 210, 160, 3)).astype(np.uint8)


class ReleaseNoops:
    """Stands in for the env's no-op generator: the counts the release drew."""

    def __init__(self, counts, noop_max=30):
        self.counts = list(counts)
        self.noop_max = noop_max

    def integers(self, low, high):
        # gym's AtariPreprocessing: np_random.randint(1, noop_max + 1), i.e. 1..30.
        assert (low, high) == (1, self.noop_max + 1)
        return self.counts.pop(0)


RUNS = {
    "pong": dict(task="atari_pong", time_limit=50),
    "ms_pacman": dict(task="atari_ms_pacman"),
    "breakout": dict(task="atari_breakout"),
    "pong_rgb": dict(task="atari_pong", grayscale=False),
}


def replay(golden, run):
    """Run our make_env through the release's action and no-op sequence."""
    options = dict(RUNS[run])
    env = make_env(options.pop("task"), seed=0, sticky=0.0, **options)
    env.unwrapped._rng = ReleaseNoops(golden[f"{run}/noops"])
    n = env.act_space.shape[0]
    out = []
    for action in golden[f"{run}/actions"]:
        out.append(env.reset() if action < 0 else env.step(np.eye(n, dtype=np.float32)[action]))
    env.close()
    return out


def frames_of(golden, run, index):
    """The raw screens the release recorded for observation ``index``."""
    return golden[f"{run}/frames"][golden[f"{run}/frame_obs"] == index]


def stored_images(golden, run):
    return dict(zip(golden[f"{run}/image_index"].tolist(), golden[f"{run}/image"], strict=True))


@pytest.mark.parametrize("size", RESIZE_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_resize_is_opencv_inter_area(golden, size):
    """Byte-exact OpenCV INTER_AREA: non-integer factors (fractional weights in float32,
    round half to even), 2x2 (integer, round half up) and other integer factors."""
    h, w = size
    noise = noise_images()
    cases = [
        ("screens", golden["resize/screens"]),
        ("noise", noise),
        ("noise1", noise[..., 0]),
    ]
    for name, images in cases:
        expected = golden[f"resize/{name}_{h}x{w}"]
        ours = np.stack([resize_area(x, size) for x in images])
        assert ours.shape == expected.shape and ours.dtype == np.uint8
        diff = np.abs(ours.astype(int) - expected)
        assert diff.max() == 0, f"{name} {size}: {np.count_nonzero(diff)} pixels differ"


@pytest.mark.parametrize("run", list(RUNS))
def test_whole_run_matches_release(golden, run):
    """Every observation, reward and flag of the release's runs, except the terminal
    observation (see test_terminal_observation): images by checksum throughout and
    compared pixel by pixel where the golden file keeps them."""
    ours = replay(golden, run)
    images = stored_images(golden, run)
    terminal = set(np.nonzero(golden[f"{run}/is_terminal"])[0].tolist())
    assert len(ours) == len(golden[f"{run}/actions"])
    for i, obs in enumerate(ours):
        for key in ("reward", "is_first", "is_last", "is_terminal"):
            assert obs[key] == golden[f"{run}/{key}"][i], (run, i, key)
        if i in terminal:
            continue
        if i in images:
            np.testing.assert_array_equal(obs["image"], images[i], err_msg=f"{run} obs {i}")
        assert zlib.crc32(obs["image"].tobytes()) == golden[f"{run}/image_crc"][i], (run, i)


def test_golden_covers_the_cases(golden):
    """The recording exercises what the tests claim: a time-limit end, a game over
    with reward, resets after both, and the release's seed-0 no-op counts."""
    assert golden["pong/is_last"].sum() == 1 and not golden["pong/is_terminal"].any()
    assert golden["breakout/is_terminal"].sum() == 1 and golden["breakout/reward"].sum() > 0
    assert golden["breakout/is_first"].sum() == 2 and golden["pong/is_first"].sum() == 2
    # Every release env is seeded 0: all runs draw the same no-op counts.
    for run in RUNS:
        n = len(golden[f"{run}/noops"])
        np.testing.assert_array_equal(golden[f"{run}/noops"], golden["pong/noops"][:n])
    assert golden["ale_max_num_frames_per_episode"] == 0


@pytest.mark.parametrize("run", ["pong", "ms_pacman", "breakout"])
def test_reset_observation_is_last_noop_frame(golden, run):
    """gym's AtariPreprocessing.reset zero-fills the second pooling buffer, so the first
    observation is the last no-op screen alone (not a max with the screen before)."""
    images = stored_images(golden, run)
    ours = replay(golden, run)
    for i in np.nonzero(golden[f"{run}/is_first"])[0]:
        (screen,) = frames_of(golden, run, i)
        np.testing.assert_array_equal(images[i][..., 0], resize_area(screen, (64, 64)))
        np.testing.assert_array_equal(ours[i]["image"], images[i])


def test_reset_frame_differs_from_max_of_last_two(golden):
    """ms_pacman's start animates, so the reset rule is visible in its first observation."""
    env = make_env("atari_ms_pacman", seed=0, sticky=0.0)
    env.unwrapped._rng = ReleaseNoops(golden["ms_pacman/noops"])
    screens = []
    original = env.unwrapped.gym_env.step
    env.unwrapped.gym_env.step = lambda a: (lambda o: (screens.append(o[0]), o)[1])(original(a))
    obs = env.reset()
    assert len(screens) == golden["ms_pacman/noops"][0]
    pooled = resize_area(np.maximum(screens[-2], screens[-1]), (64, 64))
    assert not np.array_equal(obs["image"][..., 0], pooled)
    np.testing.assert_array_equal(obs["image"][..., 0], resize_area(screens[-1], (64, 64)))


@pytest.mark.parametrize("run", ["pong", "ms_pacman", "breakout"])
def test_max_pool_then_resize(golden, run):
    """Each step's observation is the resize of the max over its last two raw screens
    (gym pools before resizing; pooling the resized screens gives other pixels)."""
    images = stored_images(golden, run)
    order_matters = 0
    for i, image in images.items():
        if golden[f"{run}/is_first"][i] or golden[f"{run}/is_terminal"][i]:
            continue
        a, b = frames_of(golden, run, i)[-2:]
        np.testing.assert_array_equal(image[..., 0], resize_area(np.maximum(a, b), (64, 64)))
        other = np.maximum(resize_area(a, (64, 64)), resize_area(b, (64, 64)))
        order_matters += not np.array_equal(other, image[..., 0])
    assert order_matters > 0


def test_terminal_observation(golden):
    """The game ends on the second frame of breakout's last step. The release's
    AtariPreprocessing breaks out of its frame-skip loop before copying that step's
    screens, so it repeats the previous observation; ours pools the step's last two
    screens, so the ball leaving the field is visible."""
    run = "breakout"
    (end,) = np.nonzero(golden[f"{run}/is_terminal"])[0]
    images = stored_images(golden, run)
    screens = frames_of(golden, run, end)
    assert 1 < len(screens) < 4  # ended inside the frame skip, not on its last frame
    np.testing.assert_array_equal(images[end], images[end - 1])  # the release: stale
    ours = replay(golden, run)[end]
    fresh = resize_area(np.maximum(screens[-2], screens[-1]), (64, 64))
    np.testing.assert_array_equal(ours["image"][..., 0], fresh)
    assert not np.array_equal(ours["image"], images[end])
    assert ours["is_last"] and ours["is_terminal"]


def test_no_ale_frame_cap():
    """The release's ALE (atari-py, gym's AtariEnv built directly) has no per-episode
    frame cap; only train.py's TimeLimit(27000 agent steps) ends long episodes. Ours
    turns off ale-py's 108k-frame cap, which would end them up to 7 steps early."""
    env = make_env("atari_pong", seed=0)
    assert env.unwrapped.ale.getInt("max_num_frames_per_episode") == 0
    assert env.env.limit == 27000  # OneHotAction(TimeLimit(...))


def test_defaults_match_release(golden):
    """What train.py builds by default: sticky actions 0.25 per frame, 1..30 no-ops,
    repeat 4, no end on life loss, the minimal action set."""
    noop_max, frame_skip, life_done, actions = golden["defaults"].tolist()
    env = make_env("atari_pong", seed=0)
    atari = env.unwrapped
    ale_sticky = atari.ale.getFloat("repeat_action_probability")
    assert ale_sticky == pytest.approx(float(golden["ale_repeat_action_probability"]))
    assert (atari.noops, atari.action_repeat, atari.life_loss) == (noop_max, frame_skip, life_done)
    assert env.act_space.shape == (actions,)
    env.close()
