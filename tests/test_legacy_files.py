"""Files written before the restructuring of issue 19 still work: a run's checkpoint
evaluates to the same numbers, exports and resumes; a study joins, reports the same
files and retrains. The files were written by tests/fixtures/make_legacy.py on main at
commit 0d28e4e."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from hpo_tiny import load, read_json, write_study_files

from cliptune.checkpoint import load_checkpoint, load_model
from cliptune.cli import evaluate, optimize
from cliptune.config import RunConfig, config_from_dict
from cliptune.export import export_checkpoint
from cliptune.hpo.definition import fingerprint_changes, study_fingerprint
from cliptune.trainer import Trainer

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy"
RECORD = json.loads((LEGACY / "run_metrics.json").read_text())
STUDY_ROOT = (LEGACY / "study" / "root.txt").read_text().strip()
REPORT_FILES = ("report.md", "trials.csv", "best_params.json", "best_hyperparameters.txt",
                "best_results.json", "best_config.yaml")


def test_legacy_checkpoint_evaluates_to_the_recorded_numbers(tmp_path):
    out = tmp_path / "eval.json"
    evaluate.run(["--checkpoint", str(LEGACY / "run_last.pt"), "--split", "val",
                  "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--json", str(out)])
    metrics = read_json(out)["metrics"]
    assert metrics == pytest.approx(RECORD["val"], rel=1e-4, abs=1e-6)


def test_legacy_checkpoint_resumes_and_ends_as_the_old_code_did(tmp_path):
    config = config_from_dict(load_checkpoint(LEGACY / "run_last.pt")["config"])
    config.data.cache_dir = str(tmp_path / "cache")
    config.runs_dir, config.checkpoints_dir = str(tmp_path / "runs"), str(tmp_path / "ckpt")
    (tmp_path / "ckpt" / config.name).mkdir(parents=True)
    shutil.copy(LEGACY / "run_last.pt", tmp_path / "ckpt" / config.name / "last.pt")
    result = Trainer(config, show_progress=False, resume="auto").fit()
    assert result.epochs_completed == 2 and len(result.history) == 2
    expected = RECORD["epoch_2"]
    last = result.history[-1]
    for key in ("train_loss", "val_loss", "val_rsum", "lr", "temperature"):
        assert last[key] == pytest.approx(expected[key], rel=1e-3, abs=1e-6), key


@pytest.mark.parametrize(("checkpoint", "fmt"), [
    ("run_last.pt", "hf"), ("study/checkpoints/best.pt", "open_clip")])
def test_legacy_checkpoints_export(tmp_path, checkpoint, fmt):
    loaded = load_model(LEGACY / checkpoint)
    assert isinstance(loaded.model.logit_scale, torch.Tensor)
    result = export_checkpoint(LEGACY / checkpoint, fmt, tmp_path / "out")
    assert all((tmp_path / "out" / name).is_file() for name in result.files)


def legacy_study(root: Path) -> list[str]:
    """The legacy study in `root` laid out as make_legacy.py made it; its optimize.py flags."""
    flags = write_study_files(root, root / "cache")
    (root / "results" / "legacy").mkdir(parents=True)
    shutil.copy(LEGACY / "study" / "study.journal", root / "results" / "legacy")
    (root / "checkpoints" / "legacy").mkdir(parents=True)
    for name in ("best.pt", "best.json"):
        shutil.copy(LEGACY / "study" / "checkpoints" / name, root / "checkpoints" / "legacy")
    return flags + ["--study-name", "legacy", "--pruner", "none"]


def test_legacy_study_reports_the_same_files(tmp_path):
    flags = legacy_study(tmp_path)
    assert optimize.run(flags + ["--trials", "0"]) == 0
    out = tmp_path / "results" / "legacy"
    for name in REPORT_FILES:
        # paths of this machine as the legacy machine's (the trials' own stay as recorded)
        written = (out / name).read_text().replace(str(tmp_path), STUDY_ROOT)
        legacy = (LEGACY / "study" / name).read_text()
        if name == "best_config.yaml":  # config keys added since appear, at their defaults
            old = legacy.splitlines()
            assert [line for line in written.splitlines() if line in old] == old
            assert (config_from_dict(yaml.safe_load(written))
                    == config_from_dict(yaml.safe_load(legacy)))
        else:
            if name == "report.md":  # since then the dashboard command names the artifacts
                written = written.replace(f" --artifact-dir {STUDY_ROOT}/results/legacy/"
                                          "artifacts", "")
                # and the report opens with its verdict
                verdict = written.splitlines()[2]
                assert verdict.startswith("**Verdict:** Trial 2 is better than the target's "
                                          "own settings by 0.3696 val_loss at trial fidelity")
                written = written.replace(f"{verdict}\n\n", "", 1)
            assert written == legacy, name


def test_legacy_study_joins_and_retrains(tmp_path):
    flags = legacy_study(tmp_path)
    assert optimize.run(flags + ["--trials", "1"]) == 0
    study = load(tmp_path, "legacy")
    assert len(study.trials) == 4 and study.trials[3].user_attrs["data"] == (
        study.trials[0].user_attrs["data"])
    assert optimize.run(flags + ["--trials", "0", "--retrain-best", "--seeds", "1"]) == 0
    retrain = read_json(tmp_path / "results" / "legacy" / "retrain_results.json")
    assert retrain["configs"]["best"]["trial"] == study.best_trial.number
    assert retrain["configs"]["base"]["trial"] == 0
    assert "## Best and base configuration at full fidelity" in (
        tmp_path / "results" / "legacy" / "report.md").read_text()


def test_a_fingerprint_from_before_a_config_key_counts_it_at_its_default():
    config = RunConfig()
    current = study_fingerprint("val_loss", [], config, {})
    recorded = study_fingerprint("val_loss", [], config, {})
    del recorded["target"]["model.patch_dropout"]  # a study created before the key existed
    assert fingerprint_changes(recorded, current) == []
    config.model.patch_dropout = 0.5
    assert fingerprint_changes(recorded, study_fingerprint("val_loss", [], config, {})) == [
        "target: model.patch_dropout: 0.0 -> 0.5"]
