"""Registers tempo's constructors with gin (import this before parsing a config).

Only launchers and tests import this module; the library itself never reads
gin, so every class stays usable with plain keyword arguments.
"""

from __future__ import annotations

import os

import gin

from tempo.agent.behavior import ActorCritic
from tempo.agent.bilevel import BilevelTrainer
from tempo.agent.builder import build_trainer
from tempo.agent.optimizer import Optimizer
from tempo.agent.world_model import WorldModel
from tempo.errors import ConfigError
from tempo.evaluation import ENV_KEYS
from tempo.networks.decoder import Decoder
from tempo.networks.encoder import Encoder
from tempo.networks.heads import Actor, DistHead
from tempo.networks.meta_weighter import MetaWeighter
from tempo.networks.rssm import RSSM
from tempo.run import train
from tempo.strategy import make_strategy

# The gin-wrapped builder: calling it applies the parsed bindings.
build_trainer = gin.external_configurable(build_trainer, module="tempo")
train = gin.external_configurable(train, module="tempo")
make_strategy = gin.external_configurable(make_strategy, module="tempo")

CONFIGURABLES = (
    Encoder,
    Decoder,
    RSSM,
    DistHead,
    Actor,
    MetaWeighter,
    WorldModel,
    ActorCritic,
    BilevelTrainer,
    Optimizer,
)

for _fn in CONFIGURABLES:
    gin.external_configurable(_fn, module="tempo")

_SEARCH_PATHS: set[str] = set()


def parse_config(gin_files: list[str], gin_params: list[str] | None = None) -> None:
    """Parses gin files (later ones override earlier ones) and then bindings.

    Suite files say `include 'gin_configs/base.gin'`; that resolves from the
    repository root (the usual working directory) or, from anywhere else,
    relative to the parent of the included file's directory. Errors name
    the bad file or binding (gin's own messages), wrapped as ValueError.
    """
    for path in gin_files:
        if not os.path.isfile(path):
            raise ConfigError(f"Gin file {path!r} not found (working directory {os.getcwd()!r}).")
        root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        if root not in _SEARCH_PATHS:
            _SEARCH_PATHS.add(root)
            gin.add_config_file_search_path(root)
    try:
        gin.parse_config_files_and_bindings(list(gin_files), list(gin_params or []))
    except (ValueError, KeyError, TypeError, OSError) as error:
        raise ValueError(f"Bad gin configuration: {error}") from error


def run_env_config(logdir: str, gin_params: list[str]) -> dict:
    """Parses a run's config.gin and returns its environment settings."""
    config = os.path.join(logdir, "config.gin")
    if not os.path.exists(config):
        raise ConfigError(f"{config} not found: is {logdir!r} a tempo run directory?")
    parse_config([config], gin_params)
    env_config = {"task": gin.query_parameter("train.task")}
    for key in ENV_KEYS:
        try:
            env_config[key] = gin.query_parameter(f"train.{key}")
        except ValueError:
            pass  # not bound: the suite default, as in training
    return env_config
