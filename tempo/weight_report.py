"""Per-episode weights of a run's checkpoint (`python -m launch.weights`): one PNG
per stored episode (reward, value and weight against time; for image inputs
the frames at the highest and lowest weights), a CSV of every step and a
markdown table of the Spearman correlations per episode and over all of them.

Whole episodes are analysed from their first step with the trainer's initial
state, in chunks of the run's batch length that carry the posterior state, and
with the batch norms' moving statistics (`weight_analysis.analyse_episode`): a
step's weight is then the weighter's typical choice for that step rather than
one that depends on which other steps share its chunk.
"""

from __future__ import annotations

import csv
import functools
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from tempo.errors import ConfigError
from tempo.replay import episode_files_in_order
from tempo.weight_analysis import QUANTITIES, analyse_episode, correlations, extremes

CSV_COLUMNS = ("episode", "t", "weight", "reward", "value", "kl", "recon_loglik", "position")
UNTRAINED = "meta-weighter untrained (DreamerV2 run)"


def select_episodes(
    replay_dir: str | os.PathLike,
    newest: int | None = None,
    indices: Sequence[int] | None = None,
) -> list[tuple[int, pathlib.Path]]:
    """(index, path) of the stored episodes to analyse, index in storage order
    (0 the oldest): all of them, the `newest` N, or those at `indices`
    (negative ones count from the newest)."""
    files = [path for path, _ in episode_files_in_order(replay_dir)]
    if not files:
        raise ConfigError(f"No stored episodes in {replay_dir}.")
    numbered = list(enumerate(files))
    if indices:
        chosen = []
        for index in indices:
            if not -len(files) <= index < len(files):
                raise ConfigError(
                    f"Episode index {index} is out of range: {replay_dir} holds "
                    f"{len(files)} episodes (0 to {len(files) - 1}, or negative from the newest)."
                )
            chosen.append(numbered[index])
        return chosen
    return numbered[-newest:] if newest else numbered


def load_episode(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path) as episode:
        return {key: episode[key] for key in episode.files}


def restore_trainer(
    logdir: str | os.PathLike,
    obs_shapes: Mapping[str, tuple[int, ...]],
    action_size: int,
    discrete: bool,
    trainer_fn: Callable,
    checkpoint: str | None = None,
):
    """The run's trainer with `checkpoint` (default: the latest) restored; a
    checkpoint of another configuration is a ConfigError naming it and the fix."""
    import tensorflow as tf

    from tempo.run import first_line

    if checkpoint is None:
        checkpoint = tf.train.latest_checkpoint(str(pathlib.Path(logdir) / "checkpoints"))
        if checkpoint is None:
            raise ConfigError(f"No checkpoint in {pathlib.Path(logdir) / 'checkpoints'}.")
    trainer = trainer_fn(dict(obs_shapes), action_size, discrete)
    try:
        status = tf.train.Checkpoint(trainer=trainer).restore(checkpoint)
        status.expect_partial().assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as error:
        raise ConfigError(
            f"The checkpoint {checkpoint} does not match this configuration: "
            f"{first_line(error)} Analyse it with the run's own settings "
            f"({pathlib.Path(logdir) / 'config.gin'}, no model-changing --gin_param) "
            "or pass a checkpoint of this run with --checkpoint."
        ) from error
    return trainer, checkpoint


def analyse_episodes(
    trainer,
    episodes: Sequence[Mapping[str, np.ndarray]],
    chunk: int,
    seed: int = 0,
    compile: bool = True,
) -> list[dict[str, np.ndarray]]:
    """`analyse_episode` of each episode (moving statistics; compiled once for
    the chunk's shape unless `compile=False`, which pays off for a few short
    episodes only); episode i samples its posteriors from seed `seed + i`."""
    import tensorflow as tf

    from tempo.weight_analysis import analyse_batch

    analyse = functools.partial(analyse_batch, trainer, training=False)
    analyse = tf.function(analyse, autograph=False) if compile else analyse
    initial = trainer.world_model.rssm.initial(1)
    return [
        analyse_episode(analyse, initial, episode, chunk, seed + i)
        for i, episode in enumerate(episodes)
    ]


def write_csv(path: str | os.PathLike, indices: Sequence[int], tables: Sequence[Mapping]) -> None:
    """One row per step of every episode: `CSV_COLUMNS`."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for index, table in zip(indices, tables):
            for t in range(len(table["weight"])):
                writer.writerow(
                    [
                        index,
                        t,
                        *(f"{float(table[q][t]):.6g}" for q in ("weight", *QUANTITIES[:4])),
                        int(table["position"][t]),
                    ]
                )


def summary_markdown(
    indices: Sequence[int], tables: Sequence[Mapping[str, np.ndarray]], title: str
) -> str:
    """Per episode and over all steps of all episodes: steps, return, weight
    mean and spread, and the Spearman correlation of the weight with each of
    `QUANTITIES`."""
    header = ["episode", "steps", "return", "weight mean", "weight std"]
    header += [f"rho {q}" for q in QUANTITIES]
    lines = [
        f"# What the meta-weighter weighs: {title}",
        "",
        "Spearman rank correlation (rho) of each step's meta weight with its reward, "
        "value V_slow(posterior), KL(post || prior), reconstruction log-likelihood and "
        "position in the episode.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    every = {key: np.concatenate([t[key] for t in tables]) for key in ("weight", *QUANTITIES)}
    for name, table in [*zip(map(str, indices), tables), ("all", every)]:
        rho = correlations(table)
        cells = [
            name,
            str(len(table["weight"])),
            f"{np.sum(table['reward']):.4g}",
            f"{np.mean(table['weight']):.4f}",
            f"{np.std(table['weight']):.4f}",
            *(f"{rho[q]:+.3f}" for q in QUANTITIES),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_episode(
    path: str | os.PathLike,
    table: Mapping[str, np.ndarray],
    title: str,
    frames: np.ndarray | None = None,
    k: int = 4,
) -> None:
    """Reward, value and weight against time, the k highest (red) and lowest
    (blue) weights marked; with `frames` [T, H, W, C] also their frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(len(table["weight"]))
    top, bottom = extremes(table["weight"], k)
    rows = 3 + (2 if frames is not None else 0)
    heights = [1.0, 1.0, 1.2] + ([1.1, 1.1] if frames is not None else [])
    fig, axes = plt.subplots(
        rows, 1, figsize=(10, 2.0 * sum(heights)), gridspec_kw={"height_ratios": heights}
    )
    for ax, key, label in zip(axes, ("reward", "value", "weight"), ("reward", "value", "weight")):
        ax.plot(t, table[key], lw=1, color="k" if key != "weight" else "C2")
        ax.set_ylabel(label)
        ax.set_xlim(0, max(len(t) - 1, 1))
        for indices, color, name in ((top, "C3", "highest"), (bottom, "C0", "lowest")):
            values = np.asarray(table[key])[indices]
            ax.plot(t[indices], values, "o", ms=4, color=color, label=f"{k} {name} weights")
    axes[2].set_xlabel("step in episode")
    axes[2].legend(fontsize=8, loc="best")
    rho = correlations(table)
    fig.suptitle(
        title + "\nSpearman: " + ", ".join(f"{q} {rho[q]:+.2f}" for q in QUANTITIES),
        fontsize=10,
    )
    if frames is not None:
        for ax, indices, name in ((axes[3], top, "highest"), (axes[4], bottom, "lowest")):
            strip = np.concatenate(list(frames[indices]), axis=1)
            gray = strip.shape[-1] == 1
            ax.imshow(strip[..., 0] if gray else strip, cmap="gray" if gray else None)
            width = frames.shape[2]
            ax.set_xticks([width * (i + 0.5) for i in range(len(indices))])
            ax.set_xticklabels([f"t={i} w={table['weight'][i]:.3f}" for i in indices], fontsize=8)
            ax.set_yticks([])
            ax.set_ylabel(f"{name}\nweights", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def method_title(meta: bool, checkpoint: str) -> str:
    """Names what the weights are: a TEMPO checkpoint's, or an untrained weighter's."""
    name = pathlib.Path(checkpoint).name
    return f"TEMPO, {name}" if meta else f"{UNTRAINED}, {name}"


def report(
    logdir: str | os.PathLike,
    out: str | os.PathLike,
    env_config: dict,
    trainer_fn: Callable,
    checkpoint: str | None = None,
    newest: int | None = None,
    indices: Sequence[int] | None = None,
    chunk: int = 50,
    seed: int = 0,
    k: int = 4,
    compile: bool = True,
) -> dict:
    """Restores the run's trainer for its task (`env_config`, as `run_env_config`
    returns it), analyses the chosen stored episodes and writes
    episode_<index>.png, steps.csv and summary.md in `out`. Returns {title,
    checkpoint, episodes, correlations (over all steps), files}."""
    from tempo.evaluation import RESERVED, make_env_batch

    logdir, out = pathlib.Path(logdir), pathlib.Path(out)
    chosen = select_episodes(logdir / "replay", newest, indices)
    env = make_env_batch(env_config, seed=0)
    try:
        shapes = {k: tuple(s.shape) for k, s in env.obs_space.items() if k not in RESERVED}
        action_size, discrete = int(env.act_space.shape[0]), env.discrete
    finally:
        env.close()
    trainer, checkpoint = restore_trainer(
        logdir, shapes, action_size, discrete, trainer_fn, checkpoint
    )
    title = method_title(trainer.meta, checkpoint)
    episodes = [load_episode(path) for _, path in chosen]
    tables = analyse_episodes(trainer, episodes, chunk, seed, compile)
    out.mkdir(parents=True, exist_ok=True)
    image_keys = list(trainer.world_model.decoder.cnn_keys)
    files = []
    for (index, path), episode, table in zip(chosen, episodes, tables):
        frames = episode[image_keys[0]] if image_keys else None
        png = out / f"episode_{index:04d}.png"
        plot_episode(png, table, f"episode {index} ({path.name}): {title}", frames, k)
        files.append(png)
    numbers = [index for index, _ in chosen]
    write_csv(out / "steps.csv", numbers, tables)
    (out / "summary.md").write_text(summary_markdown(numbers, tables, title))
    files += [out / "steps.csv", out / "summary.md"]
    every = {key: np.concatenate([t[key] for t in tables]) for key in ("weight", *QUANTITIES)}
    return {
        "title": title,
        "checkpoint": checkpoint,
        "episodes": numbers,
        "correlations": correlations(every),
        "files": [str(f) for f in files],
    }
