"""Registers tempo's constructors with gin (import this before parsing a config).

Only launchers and tests import this module; the library itself never reads
gin, so every class stays usable with plain keyword arguments.
"""

from __future__ import annotations

import inspect
import os
import re

import gin
from gin import config as gin_config

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
        raise ConfigError(f"Bad gin configuration: {explain(error)}") from error
    check_binding_types()


def _parameters(fn) -> dict[str, inspect.Parameter]:
    target = fn.__init__ if inspect.isclass(fn) else fn
    params = inspect.signature(target).parameters
    return {k: v for k, v in params.items() if k != "self" and v.kind is v.POSITIONAL_OR_KEYWORD}


def explain(error: Exception) -> str:
    """gin's message on one line, with the valid choices for an unknown name."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    unknown_param = re.search(r"Configurable '([\w./]+)' doesn't have a parameter named", text)
    if unknown_param:
        match = gin_config._REGISTRY.get_match(unknown_param.group(1).split("/")[-1])
        if match is not None:
            text += f" Valid parameters: {', '.join(_parameters(match.wrapped))}."
    elif re.search(r"No configurable matching", text):
        names = sorted(c.__name__ for c in CONFIGURABLES) + [
            "build_trainer",
            "make_strategy",
            "train",
        ]
        text += f" Valid configurables: {', '.join(names)}."
    return text


def _expected_type(default) -> tuple[type, ...] | None:
    """The types a binding may have, judged by the parameter's default value."""
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, int):
        return (int,)
    if isinstance(default, float):
        return (int, float)
    if isinstance(default, str):
        return (str,)
    if isinstance(default, tuple):
        return (tuple, list)
    return None


def check_binding_types() -> None:
    """Rejects a bound literal whose type does not match the parameter's default
    (a string for a size, a fraction for a count), naming binding and value:
    deep inside model building the same mistake gives an unreadable traceback."""
    literal = (bool, int, float, str, tuple, list)
    for (scope, selector), bindings in gin_config._CONFIG.items():
        match = gin_config._REGISTRY.get_match(selector)
        if match is None:
            continue
        params = _parameters(match.wrapped)
        for name, value in bindings.items():
            if name not in params or not isinstance(value, literal):
                continue
            allowed = _expected_type(params[name].default)
            if allowed is None:
                continue
            wrong = not isinstance(value, allowed) or (
                isinstance(value, bool) and bool not in allowed
            )
            if wrong:
                binding = f"{scope + '/' if scope else ''}{match.name}.{name}"
                kind = " or ".join(t.__name__ for t in allowed)
                hint = (
                    f" (write {int(value)})"
                    if isinstance(value, float) and allowed == (int,) and value.is_integer()
                    else ""
                )
                raise ConfigError(
                    f"Bad gin configuration: {binding} = {value!r} must be {kind}, "
                    f"not {type(value).__name__}{hint}."
                )


def run_setting(name: str, default):
    """A parsed binding (after `run_env_config`), or `default` when unbound."""
    try:
        return gin.query_parameter(name)
    except ValueError:
        return default


def run_env_config(logdir: str, gin_params: list[str]) -> dict:
    """Parses a run's config.gin and returns its environment settings."""
    config = os.path.join(logdir, "config.gin")
    if not os.path.exists(config):
        raise ConfigError(f"{config} not found: is {logdir!r} a tempo run directory?")
    parse_config([config], gin_params)
    env_config = {"task": gin.query_parameter("train.task")}
    for key in ENV_KEYS:
        value = run_setting(f"train.{key}", None)
        if value is not None:  # unbound: the suite default, as in training
            env_config[key] = value
    env_config.update(run_setting("train.env_options", None) or {})
    return env_config
