"""Search space: YAML parsing and validation, suggestions, applying params to a config."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
import yaml

from cliptune.config import RunConfig, model_config_for
from cliptune.errors import ConfigError
from cliptune.hpo.definition import load_plan
from cliptune.hpo.search_space import (
    SearchSpace,
    base_params,
    load_search_space,
    search_space_from_dict,
)

REPO = Path(__file__).resolve().parent.parent


def space(**entries):
    return search_space_from_dict({"parameters": entries}, "space.yaml")


def test_shipped_search_space_loads_and_fits_the_base_experiment():
    loaded = load_search_space(REPO / "experiments" / "search_space.yaml")
    assert {"lr", "temperature", "depth"} <= set(loaded.names)
    loaded.check_against(load_plan(REPO / "experiments" / "hpo.yaml", space=loaded).trial_base)


def test_shipped_optional_loss_entry_uncommented_searches_siglip():
    text = (REPO / "experiments" / "search_space.yaml").read_text()
    block = re.search(r"^  # loss:.*\n(?:  #   .*\n)+", text, flags=re.M).group(0)
    entry = yaml.safe_load(re.sub(r"^  # ", "", block, flags=re.M))["loss"]
    searched = space(loss=entry)
    base = load_plan(REPO / "experiments" / "hpo.yaml", space=SearchSpace(())).trial_base
    searched.check_against(base)
    trial = searched.apply(base, {"loss": "siglip"})
    assert trial.train.loss == "siglip" and model_config_for(trial).init_logit_bias == -10.0
    assert model_config_for(searched.apply(trial, {"loss": "clip"})).init_logit_bias is None


def test_suggest_and_apply_sets_every_target():
    s = space(
        lr={"type": "float", "low": 1e-4, "high": 1e-2, "log": True, "target": "train.lr"},
        depth={"type": "int", "low": 1, "high": 3,
               "target": ["model.vision_layers", "model.text_layers"]},
        act={"type": "categorical", "choices": ["gelu", "quick_gelu"],
             "target": "model.activation"},
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        params = s.suggest(trial)
        assert 1e-4 <= params["lr"] <= 1e-2 and params["depth"] in (1, 2, 3)
        config = s.apply(RunConfig(), params)
        assert config.train.lr == params["lr"]
        assert config.model.vision_layers == config.model.text_layers == params["depth"]
        assert config.model.activation == params["act"]
        study.tell(trial, 0.0)
    # the base config is left alone
    assert RunConfig().model.vision_layers == 4


def test_head_dim_sets_width_from_heads():
    s = space(
        heads={"type": "categorical", "choices": [2, 4], "target": "model.vision_heads"},
        head_dim={"type": "categorical", "choices": [8, 24], "target": "model.vision_head_dim"},
    )
    config = s.apply(RunConfig(), {"heads": 4, "head_dim": 24})
    assert (config.model.vision_heads, config.model.vision_width) == (4, 96)
    assert config.model.text_width == RunConfig().model.text_width


def test_crop_scale_min_sets_the_crop_range_and_patch_dropout_its_key():
    s = space(
        crop={"type": "float", "low": 0.3, "high": 1.0, "target": "data.crop_scale_min"},
        mask={"type": "categorical", "choices": [0.0, 0.5, 0.75], "target": "model.patch_dropout"},
    )
    s.check_against(RunConfig())
    config = s.apply(RunConfig(), {"crop": 0.5, "mask": 0.75})
    assert config.data.crop_scale == (0.5, 1.0) and config.model.patch_dropout == 0.75
    # the baseline: a target that states its crops is trial 0; the dataset's own is no value
    target = s.apply(RunConfig(), {"crop": 0.9, "mask": 0.0})
    assert base_params(s, target)[0] == {"crop": 0.9, "mask": 0.0}
    params, why = base_params(s, RunConfig())
    assert params is None and "crop = None is outside the search space" in why
    with pytest.raises(ConfigError, match=r"entry 'crop' = 0.0: .*data.crop_scale must be"):
        space(crop={"type": "float", "low": 0.0, "high": 1.0,
                    "target": "data.crop_scale_min"}).check_against(RunConfig())


def test_yaml_1_1_exponent_strings_are_numbers(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("parameters:\n  lr: {type: float, low: 1e-4, high: 1e-2, log: true, "
                    "target: train.lr}\n")
    assert load_search_space(path).parameters[0].low == pytest.approx(1e-4)


@pytest.mark.parametrize("entry, message", [
    ({"type": "float", "low": 1, "high": 2}, "missing `target`"),
    ({"type": "float", "low": 1, "high": 2, "target": "train.nope"}, "unknown target 'train.nope'"),
    ({"type": "float", "low": 1, "high": 2, "target": "train.epochs"}, "per-trial budget is --epochs"),
    ({"type": "real", "low": 1, "high": 2, "target": "train.lr"}, "must be float, int or categorical"),
    ({"type": "float", "low": 2, "high": 1, "target": "train.lr"}, "entry 'x'"),
    ({"type": "float", "low": 0, "high": 1, "log": True, "target": "train.lr"}, "entry 'x'"),
    ({"type": "int", "low": 1.5, "high": 3, "target": "model.text_layers"}, "whole numbers"),
    ({"type": "categorical", "choices": [], "target": "train.lr"}, "non-empty `choices`"),
    ({"type": "float", "low": 1, "high": 2, "target": "train.lr", "scale": 3}, "unknown field"),
    ({"type": "float", "low": "big", "high": 2, "target": "train.lr"}, "`low` must be a number"),
])
def test_bad_entries_name_file_and_entry(entry, message):
    with pytest.raises(ConfigError, match="space.yaml") as info:
        space(x=entry)
    assert message in str(info.value)


def test_two_entries_on_one_key_is_an_error():
    with pytest.raises(ConfigError, match="both set train.lr"):
        space(a={"type": "float", "low": 1e-4, "high": 1e-3, "target": "train.lr"},
              b={"type": "float", "low": 1e-4, "high": 1e-3, "target": "train.lr"})


def test_width_and_heads_that_may_not_divide_are_rejected_before_the_study():
    s = space(
        width={"type": "categorical", "choices": [64, 96], "target": "model.text_width"},
        heads={"type": "categorical", "choices": [4, 3], "target": "model.text_heads"},
    )
    with pytest.raises(ConfigError, match=r"model.text_heads=3 with model.text_width=64.*head_dim"):
        s.check_against(RunConfig())


def test_width_alone_is_checked_against_the_base_heads():
    s = space(width={"type": "int", "low": 64, "high": 128, "step": 32,
                     "target": "model.vision_width"})
    s.check_against(RunConfig())  # 64, 96, 128 with 4 heads: fine
    bad = space(width={"type": "int", "low": 60, "high": 70, "target": "model.vision_width"})
    with pytest.raises(ConfigError, match="'width'"):
        bad.check_against(RunConfig())


def test_range_values_are_checked_against_config_validation():
    s = space(dropout={"type": "float", "low": 0.0, "high": 1.0, "target": "model.dropout"})
    with pytest.raises(ConfigError, match=r"space.yaml: entry 'dropout' = 1.0: .*dropout"):
        s.check_against(RunConfig())
    floats_in_int = space(d={"type": "float", "low": 1.5, "high": 3, "target": "model.text_layers"})
    with pytest.raises(ConfigError, match="entry 'd'"):
        floats_in_int.check_against(RunConfig())


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_search_space(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("parameters: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_search_space(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("lr: {type: float}\n")
    with pytest.raises(ConfigError, match="wrong.yaml: expected one top-level key"):
        load_search_space(wrong)
