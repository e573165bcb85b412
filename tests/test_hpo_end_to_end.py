"""End-to-end studies on a tiny Shapes subset with a tiny model (seconds per trial)."""

from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tiny_model import TINY_MODEL

import optimize
from cliptune.checkpoint import load_checkpoint
from cliptune.config import RunConfig, apply_overrides, config_to_dict, load_config, save_config
from cliptune.errors import TrainingDiverged
from cliptune.hpo import objective as objective_module
from cliptune.hpo.driver import StudySettings, run_study
from cliptune.hpo.search_space import search_space_from_dict
from cliptune.trainer import Trainer

TINY = TINY_MODEL + [
    "data.source=shapes", "data.shapes_images=80", "data.val_size=16", "data.test_size=16",
    "train.batch_size=16", "train.eval_batch_size=16", "train.figure_images=0",
    "train.precision=fp32",
]
SPACE = {"parameters": {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True, "target": "train.lr"},
    "depth": {"type": "int", "low": 1, "high": 2,
              "target": ["model.vision_layers", "model.text_layers"]},
    "head_dim": {"type": "categorical", "choices": [8, 16],
                 "target": ["model.vision_head_dim", "model.text_head_dim"]},
}}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def base_config(root, cache_dir) -> RunConfig:
    config = apply_overrides(RunConfig(name="base"), TINY)
    config.data.cache_dir = str(cache_dir)
    config.runs_dir = str(root / "runs")
    config.checkpoints_dir = str(root / "checkpoints")
    return config


def hparams_of(run_dir) -> dict:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {key: value.ListFields()[0][1] for key, value in start.hparams.items()}


def test_cli_study_reports_tensorboard_continue_and_retrain(tmp_path, cache_dir):
    save_config(base_config(tmp_path, cache_dir), tmp_path / "base.yaml")
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    results = tmp_path / "results"
    common = ["--config", str(tmp_path / "base.yaml"), "--search-space",
              str(tmp_path / "space.yaml"), "--study-name", "t", "--results-dir", str(results),
              "--quiet"]
    study_args = common + ["--epochs", "2", "--pruner", "sha", "--seed", "3"]
    assert optimize.main(study_args + ["--trials", "4"]) == 0

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(results / "t" / "study.journal")))
    study = optuna.load_study(study_name="t", storage=storage)
    states = [t.state for t in study.trials]
    assert len(states) == 4 and TrialState.COMPLETE in states and TrialState.PRUNED in states
    for trial in study.trials:
        assert trial.user_attrs["config"]["name"] == f"t/trial_{trial.number:04d}"
        # every trial, pruned ones too, is one TensorBoard run with its hparams
        hparams = hparams_of(tmp_path / "runs" / "t" / f"trial_{trial.number:04d}")
        assert hparams["trial"] == trial.number
        assert hparams["train.lr"] == pytest.approx(trial.params["lr"])
        assert hparams["model.vision_width"] == 2 * trial.params["head_dim"]

    # only the best trial's checkpoint is kept
    best = study.best_trial
    ckpt = tmp_path / "checkpoints"
    assert (ckpt / "t" / "best.pt").is_file()
    assert json.loads((ckpt / "t" / "best.json").read_text())["trial"] == best.number
    assert not list((ckpt / ".hpo-scratch").rglob("*.pt"))

    out = results / "t"
    assert len(pd.read_csv(out / "trials.csv")) == 4
    assert json.loads((out / "best_params.json").read_text()) == best.params
    assert json.loads((out / "best_results.json").read_text())["trial"] == best.number
    with Image.open(out / "plots" / "intermediate_values.png") as image:
        assert image.size[0] > 100
    assert "Plotly.newPlot" in (out / "plots" / "optimization_history.html").read_text()
    assert "## Top 10 trials" in (out / "report.md").read_text()

    best_config = load_config(out / "best_config.yaml")  # a complete experiment
    assert best_config.train.lr == pytest.approx(best.params["lr"])
    assert best_config.train.epochs == 2 and best_config.name == "t-best"

    # the same command continues the study; then retrain the best on val and test
    assert optimize.main(study_args + ["--trials", "1"]) == 0
    assert len(optuna.load_study(study_name="t", storage=storage).trials) == 5
    assert optimize.main(common + ["--trials", "0", "--retrain-best", "--epochs", "1"]) == 0
    retrain = json.loads((out / "retrain_results.json").read_text())
    assert retrain["epochs"] == 1 and set(retrain["test"]) >= {"rsum", "loss", "i2t_r1"}
    # the retrained run is best_config.yaml, trained (here for 1 epoch)
    trained = load_checkpoint(retrain["checkpoint"])["config"]
    expected = config_to_dict(load_config(out / "best_config.yaml"))  # best after continuing
    expected["name"], expected["train"]["epochs"] = f"t/retrain_trial_{retrain['trial']:04d}", 1
    assert trained == expected
    assert json.loads((out / "best_results.json").read_text())["retrain"]["test"] == retrain["test"]
    assert "## Best configuration retrained" in (out / "report.md").read_text()


def test_a_failing_trial_does_not_stop_the_study(tmp_path, cache_dir, monkeypatch):
    class DivergesOnSecondRun(Trainer):
        runs = 0

        def fit(self):
            DivergesOnSecondRun.runs += 1
            if DivergesOnSecondRun.runs == 2:
                raise TrainingDiverged("the training loss became nan at epoch 1")
            return super().fit()

    monkeypatch.setattr(objective_module, "Trainer", DivergesOnSecondRun)
    settings = StudySettings(study_name="f", trials=3, epochs=1, pruner="none",
                             results_dir=str(tmp_path / "results"), show_progress=False)
    outcome = run_study(settings, base_config(tmp_path, cache_dir),
                        search_space_from_dict(SPACE))
    assert (outcome.summary.complete, outcome.summary.failed) == (2, 1)
    frame = pd.read_csv(tmp_path / "results" / "f" / "trials.csv")
    assert frame.loc[1, "state"] == "FAIL"
    assert frame.loc[1, "fail_reason"].startswith("diverged: the training loss became nan")


def test_two_worker_processes_share_one_study(tmp_path, cache_dir):
    settings = StudySettings(study_name="w", trials=2, workers=2, epochs=1, pruner="none",
                             results_dir=str(tmp_path / "results"), show_progress=False)
    outcome = run_study(settings, base_config(tmp_path, cache_dir), search_space_from_dict(SPACE))
    assert outcome.worker_errors == [] and not outcome.interrupted
    assert outcome.summary.complete == 2
    frame = pd.read_csv(tmp_path / "results" / "w" / "trials.csv")
    assert sorted(frame.number) == [0, 1] and set(frame.state) == {"COMPLETE"}
    assert (tmp_path / "checkpoints" / "w" / "best.pt").is_file()
