"""A tiny study for tests: target experiment, study file and search space (seconds per trial)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState
from tiny_model import TINY_MODEL

from cliptune.config import RunConfig, apply_overrides, save_config, set_value
from cliptune.hpo.definition import Fidelity, StudyDefinition
from cliptune.hpo.search_space import search_space_from_dict
from cliptune.hpo.study import make_storage

TINY = TINY_MODEL + [
    "data.source=shapes", "data.shapes_images=80", "data.val_size=16", "data.test_size=16",
    "train.batch_size=16", "train.eval_batch_size=16", "train.figure_images=0",
    "train.precision=fp32", "train.device=cpu",
]
# The target (TINY: lr 5e-4, depth 1, head_dim 16) lies inside: it is the baseline trial.
SPACE = {"parameters": {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True, "target": "train.lr"},
    "depth": {"type": "int", "low": 1, "high": 2,
              "target": ["model.vision_layers", "model.text_layers"]},
    "head_dim": {"type": "categorical", "choices": [8, 16],
                 "target": ["model.vision_head_dim", "model.text_head_dim"]},
}}


def target_config(root: Path, cache_dir: Path, epochs: int = 2) -> RunConfig:
    """The tiny target experiment, writing under `root`."""
    config = apply_overrides(RunConfig(name="target"), TINY + [f"train.epochs={epochs}"])
    config.data.cache_dir = str(cache_dir)
    config.runs_dir = str(root / "runs")
    config.checkpoints_dir = str(root / "checkpoints")
    return config


def tiny_plan(root: Path, cache_dir: Path, trial_epochs: int = 1, target_epochs: int = 2,
              max_samples: int | None = 32, **changes) -> StudyDefinition:
    """Target (all 48 training images, `target_epochs`) and trials at lower fidelity, over
    SPACE; `changes`: other `StudyDefinition` fields, and `target.<key>` values."""
    target = target_config(root, cache_dir, target_epochs)
    for key in [k for k in changes if k.startswith("target.")]:
        set_value(target, key[len("target."):], changes.pop(key))
    return StudyDefinition(target, Fidelity(epochs=trial_epochs, max_samples=max_samples),
                           search_space_from_dict(SPACE), target_path="target.yaml", **changes)


def synthetic_definition(root: Path, epochs: int, **changes) -> StudyDefinition:
    """The definition of a study whose trials train nothing (reports' tests): `lr` and
    `depth` searched on a default target writing under `root`."""
    target = RunConfig(runs_dir=str(root / "runs"), checkpoints_dir=str(root / "ckpt"))
    space = {"parameters": {
        "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True, "target": "train.lr"},
        "depth": {"type": "int", "low": 1, "high": 3, "target": "model.vision_layers"}}}
    return StudyDefinition(target, Fidelity(epochs=epochs), search_space_from_dict(space),
                           **changes)


def write_study_files(root: Path, cache_dir: Path, trial_epochs: int = 1,
                      target_epochs: int = 2, max_samples: int | None = 32) -> list[str]:
    """target.yaml, study.yaml and space.yaml under `root`; returns the optimize.py flags
    that use them (plus --results-dir root/results)."""
    root.mkdir(parents=True, exist_ok=True)
    save_config(target_config(root, cache_dir, target_epochs), root / "target.yaml")
    (root / "study.yaml").write_text(yaml.safe_dump({
        "target": "target.yaml",
        "fidelity": {"epochs": trial_epochs, "max_samples": max_samples}}))
    (root / "space.yaml").write_text(yaml.safe_dump(SPACE))
    return ["--study-config", str(root / "study.yaml"), "--search-space",
            str(root / "space.yaml"), "--results-dir", str(root / "results"), "--quiet"]


def load(root: Path, name: str, storage: str | None = None) -> optuna.Study:
    """The study `name` of a test folder (journal under root/results unless `storage`)."""
    return optuna.load_study(study_name=name,
                             storage=make_storage(storage, root / "results", name))


def wait_for(predicate, timeout_s: float = 300.0, what: str = "condition"):
    """Poll `predicate` every 0.1 s until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def read_json(path: Path) -> dict:
    """Parse a JSON file."""
    return json.loads(path.read_text())


def kill_mid_trial(find_running: Callable[[], FrozenTrial | None],
                   study: Callable[[], optuna.Study]) -> FrozenTrial:
    """SIGKILL the owner of the RUNNING trial `find_running` returns, and return that trial.

    The owner is stopped (SIGSTOP) and the trial looked up again before the kill, so a trial
    that finished between the first look and the kill is never taken for the killed one;
    then it looks for another."""
    while True:
        trial = wait_for(find_running, what="a process in mid-trial")
        pid = trial.user_attrs["owner"]["pid"]
        os.kill(pid, signal.SIGSTOP)
        if study().trials[trial.number].state == TrialState.RUNNING:
            os.kill(pid, signal.SIGKILL)
            return trial
        os.kill(pid, signal.SIGCONT)
