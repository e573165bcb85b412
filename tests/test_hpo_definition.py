"""The one study definition: validated when made, the trial budget and the fingerprint
read from it, the data decision pinned on its trial base."""

from __future__ import annotations

import dataclasses

import pytest
from hpo_tiny import tiny_plan

from cliptune.errors import ConfigError
from cliptune.hpo.definition import Fidelity, adopt_recorded, study_fingerprint
from cliptune.hpo.search_space import describe


def test_the_definition_is_validated_when_made_and_again_when_replaced(tmp_path):
    definition = tiny_plan(tmp_path, tmp_path / "cache", trial_epochs=3, target_epochs=5,
                           max_train_seconds=60.0, metric="rsum")
    base = definition.trial_base
    assert (definition.budget, base.train.epochs, definition.target.train.epochs) == (3, 3, 5)
    assert base.data.max_samples == 32 and base.train.best_metric == "val_rsum"
    assert definition.record() == study_fingerprint(
        "rsum", describe(definition.space), definition.target, Fidelity(3, 32).record(),
        {"max_train_seconds": 60.0})
    changed = dataclasses.replace(definition, fidelity=Fidelity(epochs=2))
    assert changed.budget == 2 and changed.trial_base.data.max_samples is None
    assert definition.budget == 3  # the original is untouched
    with pytest.raises(ConfigError, match=r"^fidelity: .*train.epochs"):
        dataclasses.replace(definition, fidelity=Fidelity(epochs=0))
    with pytest.raises(ConfigError, match="--metric 'loss'"):
        dataclasses.replace(definition, metric="loss")


def test_the_data_decision_pins_the_trial_base_and_joins_the_fingerprint(tmp_path):
    definition = tiny_plan(tmp_path, tmp_path / "cache", **{"target.data.source": "auto"})
    record = {"source": "shapes", "fingerprint": "f" * 16, "images": 64}
    decided = dataclasses.replace(definition, data=record)
    assert decided.trial_base.data.source == "shapes" and decided.target.data.source == "auto"
    assert decided.record() == {**definition.record(), "data": record}


def test_a_joining_definition_adopts_what_the_command_did_not_set(tmp_path):
    recorded = tiny_plan(tmp_path, tmp_path / "cache", trial_epochs=4)
    mine = tiny_plan(tmp_path, tmp_path / "cache", trial_epochs=2, max_samples=24)
    joined, adopted = adopt_recorded(mine, recorded.record(), None,
                                     frozenset({"fidelity.max_samples"}))
    assert adopted == ["fidelity.epochs 2 -> 4"]
    assert (joined.budget, joined.trial_base.data.max_samples) == (4, 24)
    assert adopt_recorded(mine, None, None, frozenset()) == (mine, [])
