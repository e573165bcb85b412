"""End-to-end studies on a tiny Shapes subset with a tiny model (seconds per trial)."""

from __future__ import annotations

import pandas as pd
import pytest
from hpo_tiny import SPACE, load, read_json, tiny_plan, write_study_files
from optuna.trial import TrialState
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from cliptune.checkpoint import load_checkpoint
from cliptune.cli import optimize
from cliptune.config import load_config
from cliptune.errors import ConfigError, TrainingDiverged
from cliptune.hpo import objective as objective_module
from cliptune.hpo.definition import SPACE_ATTR, StudySettings
from cliptune.hpo.driver import run_study
from cliptune.trainer import Trainer


def hparams_of(run_dir) -> dict:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {key: value.ListFields()[0][1] for key, value in start.hparams.items()}


def test_cli_study_baseline_fidelity_reports_continue_and_retrain(tmp_path, cache_dir):
    flags = write_study_files(tmp_path, cache_dir, trial_epochs=2, target_epochs=2,
                              max_samples=24)
    study_args = flags + ["--study-name", "t", "--pruner", "sha", "--set", "seed=3"]
    assert optimize.run(study_args + ["--trials", "4"]) == 0

    study = load(tmp_path, "t")
    states = [t.state for t in study.trials]
    assert len(states) == 4 and TrialState.COMPLETE in states
    # trial 0 is the target's own settings, run at the study's fidelity
    assert study.trials[0].user_attrs["baseline"] is True
    assert study.trials[0].params == {"lr": pytest.approx(5e-4), "depth": 1, "head_dim": 16}
    assert study.metric_names == ["val_loss"]
    for trial in study.trials:
        config = trial.user_attrs["config"]
        assert config["name"] == f"t/trial_{trial.number:04d}"
        assert (config["data"]["max_samples"], config["train"]["epochs"]) == (24, 2)
        assert config["seed"] == 3
        hparams = hparams_of(tmp_path / "runs" / "t" / f"trial_{trial.number:04d}")
        assert hparams["trial"] == trial.number
        assert hparams["train.lr"] == pytest.approx(trial.params["lr"])
        assert hparams["model.vision_width"] == 2 * trial.params["head_dim"]

    best = study.best_trial
    ckpt = tmp_path / "checkpoints"
    assert read_json(ckpt / "t" / "best.json")["trial"] == best.number
    assert not list((ckpt / ".hpo-scratch").rglob("*.pt"))

    out = tmp_path / "results" / "t"
    assert len(pd.read_csv(out / "trials.csv")) == 4
    assert read_json(out / "best_params.json") == best.params
    with Image.open(out / "plots" / "intermediate_values.png") as image:
        assert image.size[0] > 100
    report = (out / "report.md").read_text()
    assert "Baseline (trial 0, the target's own settings): val_loss = " in report
    assert "24 training / all validation images per trial" in report
    assert "pruner sha (rungs at epoch(s) 1)" in report

    # best_config.yaml: the target with the best parameters at FULL fidelity
    best_config = load_config(out / "best_config.yaml")
    assert best_config.train.lr == pytest.approx(best.params["lr"])
    assert best_config.data.max_samples is None and best_config.train.epochs == 2
    assert best_config.name == "t-best" and best_config.seed == 3

    # the same command continues the study; then retrain best and base with 2 seeds
    assert optimize.run(study_args + ["--trials", "1"]) == 0
    assert len(load(tmp_path, "t").trials) == 5
    # retraining takes target (its seed 3), fidelity and space from the study: only where
    # this machine keeps its files is passed
    assert optimize.run(["--study-name", "t", "--trials", "0", "--retrain-best", "--seeds", "2",
                         *machine_flags(tmp_path, cache_dir)]) == 0
    retrain = read_json(out / "retrain_results.json")
    assert retrain["seeds"] == [3, 4] and retrain["epochs"] == 2
    best_runs, base_runs = retrain["configs"]["best"]["runs"], retrain["configs"]["base"]["runs"]
    assert [r["seed"] for r in best_runs] == [3, 4] and len(base_runs) == 2
    assert retrain["configs"]["base"]["trial"] == 0
    rsums = [r["test"]["rsum"] for r in best_runs]
    assert retrain["configs"]["best"]["test_mean"]["rsum"] == pytest.approx(sum(rsums) / 2)
    assert retrain["difference"]["rsum"] == pytest.approx(
        retrain["configs"]["best"]["test_mean"]["rsum"]
        - retrain["configs"]["base"]["test_mean"]["rsum"])
    comparison = retrain["comparison"]
    assert comparison["differences"] == pytest.approx(
        [b["test"]["rsum"] - a["test"]["rsum"] for b, a in zip(best_runs, base_runs, strict=True)])
    assert comparison["verdict_word"] in ("better", "worse", "within the noise")
    assert len(comparison["interval_95"]) == 2 and retrain["verdict"] == comparison["verdict"]
    # the retrained run is best_config.yaml at full fidelity, seeded
    trained = load_checkpoint(best_runs[1]["checkpoint"])["config"]
    assert trained["seed"] == 4 and trained["data"]["max_samples"] is None
    assert trained["name"] == "t/retrain/best_seed4"
    assert trained["train"]["lr"] == pytest.approx(load(tmp_path, "t").best_params["lr"])
    report = (out / "report.md").read_text()
    assert "## Best and base configuration at full fidelity" in report
    assert retrain["verdict"] in report


def test_continuing_with_other_settings_is_refused_unless_allowed(tmp_path, cache_dir):
    flags = write_study_files(tmp_path, cache_dir)
    assert optimize.run(flags + ["--study-name", "c", "--trials", "1", "--pruner", "none"]) == 0
    with pytest.raises(Exception, match=r"(?s)fidelity: epochs: 1 -> 2.*--allow-changes"):
        optimize.run(flags + ["--study-name", "c", "--trials", "1", "--epochs", "2"])
    assert optimize.run(flags + ["--study-name", "c", "--trials", "0", "--seed", "5"]) == 0
    with pytest.raises(ConfigError, match=r"target: seed: 0 -> 5"):
        optimize.run(flags + ["--study-name", "c", "--trials", "0", "--set", "seed=5"])
    # a study created before the sampler seed left the fingerprint: a separate `seed` part
    study = load(tmp_path, "c")
    fingerprint = study.user_attrs["fingerprint"]
    target = dict(fingerprint["target"])
    study.set_user_attr("fingerprint", {**fingerprint, "target": target, "seed": target.pop("seed")})
    study.set_user_attr(SPACE_ATTR, None)
    assert optimize.run(flags + ["--study-name", "c", "--trials", "0", "--seed", "4"]) == 0
    with pytest.raises(ConfigError, match=r"target: seed: 0 -> 5"):
        optimize.run(flags + ["--study-name", "c", "--trials", "0", "--set", "seed=5"])
    with pytest.raises(Exception, match=r"target: train.weight_decay: 0.1 -> 0.2"):
        optimize.run(flags + ["--study-name", "c", "--trials", "0",
                               "--set", "train.weight_decay=0.2"])
    assert len(load(tmp_path, "c").trials) == 1
    assert optimize.run(flags + ["--study-name", "c", "--trials", "1", "--pruner", "none",
                                  "--set", "train.weight_decay=0.2", "--allow-changes"]) == 0
    assert len(load(tmp_path, "c").trials) == 2


def machine_flags(root, cache_dir) -> list[str]:
    """Where this machine keeps data, runs and checkpoints (not part of a study)."""
    return ["--results-dir", str(root / "results"), "--quiet", "--cache-dir", str(cache_dir),
            "--set", f"runs_dir={root / 'runs'}", "--set", f"checkpoints_dir={root / 'checkpoints'}"]


def test_joining_takes_what_the_study_recorded(tmp_path, cache_dir):
    flags = write_study_files(tmp_path, cache_dir, max_samples=20)
    assert optimize.run(flags + ["--study-name", "j", "--trials", "1", "--pruner", "none",
                                  "--set", "train.weight_decay=0.2", "--metric", "rsum"]) == 0
    # another driver: no study file, no search space, its own sampler seed
    join = ["--study-name", "j", "--pruner", "none", *machine_flags(tmp_path, cache_dir)]
    assert optimize.run(join + ["--trials", "1", "--seed", "9"]) == 0
    study = load(tmp_path, "j")
    assert study.direction.name == "MAXIMIZE" and len(study.trials) == 2
    second = study.trials[1]
    assert set(second.params) == set(SPACE["parameters"])  # the study's space, not the shipped
    config = second.user_attrs["config"]
    assert (config["data"]["max_samples"], config["train"]["epochs"]) == (20, 1)
    assert (config["train"]["weight_decay"], config["seed"]) == (0.2, 0)
    report = (tmp_path / "results" / "j" / "report.md").read_text()
    assert "took the study's recorded settings for what the command did not set" in report
    with pytest.raises(ConfigError, match=r"fidelity: max_samples: 20 -> 30"):
        optimize.run(join + ["--trials", "0", "--max-samples", "30"])
    with pytest.raises(ConfigError, match=r"target: train.weight_decay: 0.2 -> 0.1"):
        optimize.run(join + ["--trials", "0", "--set", "train.weight_decay=0.1"])
    assert len(load(tmp_path, "j").trials) == 2


def test_a_failing_trial_does_not_stop_the_study(tmp_path, cache_dir, monkeypatch):
    class DivergesOnSecondRun(Trainer):
        runs = 0

        def fit(self):
            DivergesOnSecondRun.runs += 1
            if DivergesOnSecondRun.runs == 2:
                raise TrainingDiverged("the training loss became nan at epoch 1")
            return super().fit()

    monkeypatch.setattr(objective_module, "Trainer", DivergesOnSecondRun)
    settings = StudySettings(study_name="f", trials=3, pruner="none",
                             results_dir=str(tmp_path / "results"), show_progress=False)
    outcome = run_study(settings, tiny_plan(tmp_path, cache_dir))
    assert (outcome.summary.complete, outcome.summary.failed) == (2, 1)
    frame = pd.read_csv(tmp_path / "results" / "f" / "trials.csv")
    assert frame.loc[1, "state"] == "FAIL"
    assert frame.loc[1, "fail_reason"].startswith("diverged: the training loss became nan")


def test_a_failing_report_does_not_stop_the_study(tmp_path, cache_dir, monkeypatch, capsys):
    from cliptune.hpo.report import files as reports

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(reports, "trials_frame", broken)
    settings = StudySettings(study_name="r", trials=2, pruner="none",
                             results_dir=str(tmp_path / "results"), show_progress=False)
    outcome = run_study(settings, tiny_plan(tmp_path, cache_dir))
    assert outcome.summary.complete == 2
    assert "report not (fully) written: RuntimeError: disk full" in capsys.readouterr().err


def test_two_worker_processes_share_one_study(tmp_path, cache_dir):
    settings = StudySettings(study_name="w", trials=3, workers=2, pruner="none",
                             results_dir=str(tmp_path / "results"), show_progress=False)
    outcome = run_study(settings, tiny_plan(tmp_path, cache_dir))
    assert outcome.worker_errors == [] and not outcome.interrupted
    assert outcome.summary.complete == 3
    frame = pd.read_csv(tmp_path / "results" / "w" / "trials.csv")
    assert sorted(frame.number) == [0, 1, 2] and set(frame.state) == {"COMPLETE"}
    assert (tmp_path / "checkpoints" / "w" / "best.pt").is_file()
    owners = {t.user_attrs["owner"]["pid"] for t in load(tmp_path, "w").trials}
    assert len(owners) == 2  # both workers ran trials (the baseline is one of them)


def test_a_total_trial_budget_is_shared_by_all_drivers(tmp_path, cache_dir):
    plan = tiny_plan(tmp_path, cache_dir)

    def driver(trials: int) -> int:
        settings = StudySettings(study_name="m", trials=trials, max_trials=3, pruner="none",
                                 results_dir=str(tmp_path / "results"), show_progress=False)
        return run_study(settings, plan).summary.complete

    assert driver(10) == 3  # stops at the study's budget, not at its own 10
    assert driver(10) == 3  # a later driver finds the budget spent
    assert len(load(tmp_path, "m").trials) == 3
