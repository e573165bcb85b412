from pathlib import Path

import pytest

from cliptune.config import (
    PRESETS,
    RunConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    model_config_for,
    model_preset,
    save_config,
)
from cliptune.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_yaml_round_trip(tmp_path):
    config = RunConfig(name="x", seed=3)
    config.model = model_preset("vit-b-32")
    config.train.betas = (0.9, 0.95)
    config.data.val_size = 0.2
    path = tmp_path / "run.yaml"
    save_config(config, path)
    assert load_config(path) == config


def test_preset_with_overrides_in_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  preset: small\n  vision_layers: 2\ntrain:\n  lr: 3e-4\n")
    config = load_config(path)
    assert config.model.preset == "small"
    assert config.model.vision_width == PRESETS["small"].vision_width
    assert config.model.vision_layers == 2
    assert config.train.lr == pytest.approx(3e-4)  # YAML 1.1 reads 3e-4 as a string


def test_overrides_are_typed():
    config = apply_overrides(
        RunConfig(),
        ["train.lr=3e-4", "train.epochs=7", "train.betas=[0.8, 0.9]", "data.max_samples=null",
         "train.compile=true", "model.preset=small", "model.mlp_ratio=2"],
    )
    assert config.train.lr == pytest.approx(3e-4)
    assert config.train.epochs == 7
    assert config.train.betas == (0.8, 0.9)
    assert config.data.max_samples is None
    assert config.train.compile is True
    assert config.model.vision_width == PRESETS["small"].vision_width
    assert isinstance(config.model.mlp_ratio, float)


def test_recipe_lever_defaults_reproduce_the_old_behaviour_and_take_lists():
    config = RunConfig()
    assert config.model.patch_dropout == 0.0 and config.train.unmasked_epochs == 0
    assert config.data.crop_scale is None  # the dataset's own (Shapes 0.9-1, others 0.5-1)
    assert config.data.crop_ratio == pytest.approx((3 / 4, 4 / 3))
    config = apply_overrides(RunConfig(), ["data.crop_scale=[0.5, 1]", "data.crop_ratio=[1, 1]",
                                           "model.patch_dropout=0.75", "train.unmasked_epochs=2"])
    assert config.data.crop_scale == (0.5, 1.0) and config.data.crop_ratio == (1.0, 1.0)
    assert [config.train.masks_patches(e) for e in range(1, 11)] == [True] * 8 + [False] * 2


@pytest.mark.parametrize(
    ("assignment", "fragment"),
    [
        ("train.lrr=1", "unknown config key 'train.lrr'"),
        ("trian.lr=1", "unknown config key 'trian.lr'"),
        ("train.epochs=abc", "train.epochs: expected an integer"),
        ("train.compile=maybe", "train.compile: expected true or false"),
        ("train.precision=fp8", "train.precision: expected one of auto, bf16, fp16, fp32"),
        ("train.betas=[0.9]", "train.betas: expected a list of 2 values"),
        ("model.preset=huge", "unknown model preset 'huge'"),
        ("model.vision_heads=5", "model.vision_heads=5 must divide model.vision_width=128"),
        ("train.lr", "expected key=value"),
        ("train=1", "train is a section"),
        ("train.loss=sigmoid", "train.loss: expected one of clip, siglip, got 'sigmoid'"),
        ("model.init_logit_bias=-10", "model.init_logit_bias is the logit bias of "
                                      "train.loss=siglip"),
        ("model.patch_dropout=1", "model.patch_dropout must be in [0, 1)"),
        ("model.patch_dropout=-0.5", "model.patch_dropout must be in [0, 1)"),
        ("train.unmasked_epochs=-1", "train.unmasked_epochs must be >= 0"),
        ("data.crop_scale=[0.9, 0.5]", "data.crop_scale must be [min, max] with 0 < min <= max <= 1"),
        ("data.crop_scale=[0, 1]", "data.crop_scale must be [min, max] with 0 < min"),
        ("data.crop_scale=[0.5, 1.5]", "data.crop_scale must be [min, max]"),
        ("data.crop_scale=0.5", "data.crop_scale: expected"),
        ("data.crop_ratio=[1.5, 1.0]", "data.crop_ratio must be [min, max] with 0 < min <= max"),
    ],
)
def test_bad_overrides_name_the_key(assignment, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        apply_overrides(RunConfig(), [assignment])
    assert fragment in str(info.value)


def test_siglip_model_gets_openclip_bias_unless_the_config_sets_one():
    assert model_config_for(RunConfig()).init_logit_bias is None  # clip: no bias
    siglip = apply_overrides(RunConfig(), ["train.loss=siglip"])
    assert siglip.model.init_logit_bias is None  # what is saved: the user's config
    assert model_config_for(siglip).init_logit_bias == -10.0  # what is built
    own = apply_overrides(RunConfig(), ["train.loss=siglip", "model.init_logit_bias=-5"])
    assert model_config_for(own).init_logit_bias == -5.0
    with pytest.raises(ConfigError, match="train.hard_negative_weight works with train.loss=clip"):
        apply_overrides(RunConfig(), ["train.loss=siglip", "train.hard_negative_weight=0.5"])


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: [1\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(path)
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match="bad.yaml: unknown config key 'train.epoch'"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_every_experiment_file_loads():
    files = sorted((REPO / "experiments").glob("*.yaml"))
    assert files
    for path in files:
        if "search" in path.name or "hpo" in path.name:  # search spaces, study files
            continue
        config = load_config(path)
        assert config_from_dict(config_to_dict(config)) == config


def test_default_experiment_is_tiny_on_auto_data():
    config = load_config(REPO / "experiments" / "default.yaml")
    assert config.model.preset == "tiny"
    assert config.data.source == "auto"
