"""The shipped gin files: they parse and hold the reference values (their
architectures' parameter counts against the released code's are in
tests/test_reference.py)."""

import gin
import pytest

from tempo import configurables
from tempo.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def value(name):
    return gin.query_parameter(name)


@pytest.mark.parametrize(
    "suite, expected",
    [
        (
            "base",
            {
                "RSSM.deter": 1024,
                "RSSM.discrete": 32,
                "WorldModel.kl_free": 0.0,
                "model/Optimizer.lr": 1e-4,
                "actor/Optimizer.lr": 8e-5,
                "critic/Optimizer.lr": 2e-4,
                "meta/Optimizer.lr": 1e-4,
                "ActorCritic.actor_ent": 2e-3,
                "WorldModel.discount": 0.99,
                "WorldModel.reward_transform": "tanh",
                "build_trainer.pred_discount": True,
                "BilevelTrainer.meta": True,
                "BilevelTrainer.hypergrad_sign": "released",
                "BilevelTrainer.posterior_passes": 2,
                "ActorCritic.actor_grad": "auto",
                "train.batch_size": 16,
                "train.batch_length": 50,
                "train.prefill": 10000,
                "train.pretrain": 2,
                "train.train_every": 5,
                "train.prioritize_ends": True,
                "train.eval_state_mean": False,
            },
        ),
        (
            "dmc_vision",
            {
                "RSSM.deter": 200,
                "RSSM.hidden": 200,
                "RSSM.discrete": 0,
                "WorldModel.kl_free": 1.0,
                "model/Optimizer.lr": 3e-4,
                "critic/Optimizer.lr": 8e-5,
                "ActorCritic.actor_ent": 1e-4,
                "WorldModel.reward_transform": "identity",
                "build_trainer.pred_discount": False,
                "Encoder.cnn_keys": "image",
                "Encoder.mlp_keys": "$^",
                "train.obs_type": "pixels",
                "train.action_repeat": 2,
                "train.prefill": 1000,
                "train.pretrain": 101,
                "train.prioritize_ends": False,
                "train.steps": 1_000_000,
                "train.eval_every": 10_000,
                "train.video_every": 10_000,
            },
        ),
        (
            "dmc_proprio",
            {
                "RSSM.deter": 200,
                "RSSM.discrete": 32,
                "Encoder.cnn_keys": "$^",
                "Encoder.mlp_keys": ".*",
                "WorldModel.kl_free": 1.0,
                "build_trainer.pred_discount": False,
                "train.obs_type": "proprio",
                "train.action_repeat": 2,
                "train.prefill": 1000,
                "train.pretrain": 101,
                "train.prioritize_ends": False,
                "train.steps": 1_000_000,
                "train.eval_every": 20_000,
            },
        ),
        (
            "atari",
            {
                "RSSM.deter": 600,
                "RSSM.discrete": 32,
                "WorldModel.discount": 0.999,
                "WorldModel.loss_scales": {"kl": 0.1, "discount": 5.0},
                "model/Optimizer.lr": 2e-4,
                "actor/Optimizer.lr": 4e-5,
                "critic/Optimizer.lr": 1e-4,
                "ActorCritic.actor_ent": 1e-3,
                "build_trainer.pred_discount": True,
                "ActorCritic.actor_grad": "reinforce",
                "train.action_repeat": 4,
                "train.time_limit": 27000,
                "train.prefill": 50000,
                "train.pretrain": 2,
                "train.train_every": 16,
                "train.prioritize_ends": True,
                "train.steps": 200_000_000,
                "train.eval_every": 100_000,
                "train.video_every": 100_000,
            },
        ),
    ],
)
def test_suite_files_hold_the_reference_values(suite, expected):
    configurables.parse_config([f"gin_configs/{suite}.gin"])
    for name, want in expected.items():
        assert value(name) == want, name


def test_debug_overrides_a_suite_and_trains(tmp_path):
    import numpy as np
    from support import random_batch

    configurables.parse_config(
        ["gin_configs/dmc_proprio.gin", "gin_configs/debug.gin"], ["BilevelTrainer.meta = False"]
    )
    shapes = {"position": (4,), "velocity": (3,)}
    trainer = configurables.build_trainer(shapes, 2, False)
    assert trainer.world_model.rssm.deter == 16 and not trainer.meta
    assert not trainer.world_model.encoder.cnn_keys
    _, metrics = trainer.train(random_batch(shapes, 2, False), trainer.initial_state(2))
    assert np.isfinite(float(metrics["model_loss"]))


def test_bad_bindings_are_reported():
    with pytest.raises(ValueError, match="RSSM.deterr"):
        configurables.parse_config(["gin_configs/base.gin"], ["RSSM.deterr = 3"])
    with pytest.raises(ValueError, match="no_such.gin"):
        configurables.parse_config(["gin_configs/no_such.gin"])


@pytest.mark.parametrize(
    "binding, message",
    [
        ("RSSM.deterr = 3", "Valid parameters: action_size, stoch, deter, hidden,"),
        ("RSSMM.deter = 3", "Valid configurables: Actor, ActorCritic, BilevelTrainer,"),
        ("RSSM.deter = 2.5", "RSSM.deter = 2.5 must be int, not float."),
        ("train.steps = 1e5", "train.steps = 100000.0 must be int, not float (write 100000)."),
        ("BilevelTrainer.meta = 1", "BilevelTrainer.meta = 1 must be bool, not int."),
        ("model/Optimizer.lr = 'fast'", "model/Optimizer.lr = 'fast' must be int or float"),
        ("Encoder.mlp_layers = 400", "Encoder.mlp_layers = 400 must be tuple or list, not int."),
        ("train.task = 3", "train.task = 3 must be str, not int."),
    ],
)
def test_bad_bindings_name_the_value_and_the_choices_on_one_line(binding, message):
    with pytest.raises(ConfigError) as info:
        configurables.parse_config(["gin_configs/dmc_proprio.gin"], [binding])
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "binding",
    ["model/Optimizer.lr = 1", "Optimizer.clip = None", "Encoder.mlp_layers = [64, 64]"],
)
def test_compatible_binding_types_are_accepted(binding):
    configurables.parse_config(["gin_configs/dmc_proprio.gin"], [binding])
    name, text = (part.strip() for part in binding.split("="))
    assert value(name) == {"1": 1, "None": None, "[64, 64]": [64, 64]}[text]


def test_cpu_gin_builds_the_small_model_of_make_train_and_make_curves():
    configurables.parse_config(["gin_configs/dmc_proprio.gin", "gin_configs/cpu.gin"])
    assert value("train.task") == "dmc_cartpole_swingup"
    assert (value("train.batch_size"), value("train.batch_length")) == (16, 32)
    assert (value("train.prefill"), value("train.eval_every")) == (2500, 5000)
    trainer = configurables.build_trainer({"position": (3,), "velocity": (2,)}, 1, False)
    rssm = trainer.world_model.rssm
    assert (rssm.deter, rssm.hidden, rssm.stoch, rssm.discrete) == (128, 128, 16, 16)
    for net in (trainer.behavior.actor, trainer.behavior.critic, trainer.world_model.reward_head):
        assert [d.units for d in net.mlp._dense] == [128, 128]
    assert [d.units for d in trainer.meta_weighter.mlp._dense] == [128, 128]
    assert trainer.world_model.encoder.mlp_keys == ["position", "velocity"]
    assert trainer.world_model.discount_head is None and trainer.meta


def test_cpu_vision_gin_builds_the_small_pixel_model_of_the_pixel_curves():
    """dmc_vision's architecture (Gaussian latents, image-only encoder and decoder,
    no discount head) at the widths launch.bench chose, with cpu.gin's protocol."""
    configurables.parse_config(["gin_configs/dmc_vision.gin", "gin_configs/cpu_vision.gin"])
    assert (value("train.task"), value("train.obs_type")) == ("dmc_cartpole_swingup", "pixels")
    assert (value("train.batch_size"), value("train.batch_length")) == (16, 32)
    assert (value("train.prefill"), value("train.eval_every")) == (2500, 5000)
    assert (value("train.pretrain"), value("train.steps")) == (101, 100_000)
    trainer = configurables.build_trainer({"image": (64, 64, 3)}, 1, False)
    model = trainer.world_model
    assert (model.rssm.deter, model.rssm.hidden, model.rssm.stoch, model.rssm.discrete) == (
        128,
        128,
        32,
        0,
    )
    assert [c.filters for c in model.encoder._convs] == [12, 24, 48, 96]
    assert [d.filters for d in model.decoder._deconvs] == [48, 24, 12, 3]
    assert model.encoder.cnn_keys == ["image"] and model.decoder.cnn_keys == ["image"]
    for net in (trainer.behavior.actor, trainer.behavior.critic, model.reward_head):
        assert [d.units for d in net.mlp._dense] == [128, 128]
    assert [d.units for d in trainer.meta_weighter.mlp._dense] == [128, 128]
    assert model.discount_head is None and trainer.meta
