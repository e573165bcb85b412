"""Studies at scale: one data decision per study, one cache build for several workers,
weights-only trial checkpoints written once, the best model through Optuna's artifact
store, and best_results/best_config/best.pt of one trial on every machine."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import optuna
import pytest
import torch
from hpo_tiny import load, read_json, tiny_plan
from optuna.trial import TrialState

from cliptune import checkpoint as checkpointer_module
from cliptune.checkpoint import load_checkpoint, load_model
from cliptune.cli import evaluate
from cliptune.data import flickr30k, image_cache
from cliptune.errors import CheckpointError, ConfigError
from cliptune.hpo import driver
from cliptune.hpo import objective as objective_module
from cliptune.hpo.definition import StudySettings
from cliptune.hpo.objective import scratch_dir
from cliptune.hpo.workers import run_workers
from cliptune.trainer import Trainer

TRAINING_STATE = ("optimizer", "scheduler", "scaler", "rng", "schedule")


def settings(root: Path, name: str, **kwargs) -> StudySettings:
    kwargs.setdefault("results_dir", str(root / "results"))
    return StudySettings(study_name=name, pruner="none", show_progress=False, **kwargs)


def run(root: Path, cache: Path, name: str, trial_epochs: int = 1, **kwargs):
    plan = tiny_plan(root, cache, trial_epochs=trial_epochs)
    return driver.run_study(settings(root, name, **kwargs), plan)


def offline_probe(monkeypatch) -> None:
    """`auto` finds no Flickr30k (a faked offline machine)."""
    monkeypatch.setattr(flickr30k, "available", lambda config: (False, "faked: offline"))


# --------------------------------------------------------------------------- data decision

def test_the_study_records_its_data_and_joining_drivers_keep_it(tmp_path, cache_dir,
                                                                monkeypatch):
    offline_probe(monkeypatch)
    plan = tiny_plan(tmp_path, cache_dir, **{"target.data.source": "auto"})
    driver.run_study(settings(tmp_path, "d", trials=1), plan)
    study = load(tmp_path, "d")
    recorded = study.user_attrs["fingerprint"]["data"]
    assert recorded["source"] == "shapes" and recorded["images"] == 32 + 16 + 16  # at fidelity
    assert len(recorded["fingerprint"]) == 16
    assert study.trials[0].user_attrs["data"] == recorded
    assert study.trials[0].user_attrs["config"]["data"]["source"] == "shapes"

    # the probe is flaky: now it would find Flickr30k. A joining driver keeps the study's
    # decision instead of resolving `auto` again.
    monkeypatch.setattr(flickr30k, "available", lambda config: (True, "faked: online"))

    def must_not_load(config):
        raise AssertionError("a joining driver resolved `auto` again")

    monkeypatch.setattr(flickr30k, "load", must_not_load)
    driver.run_study(settings(tmp_path, "d", trials=1), plan)
    study = load(tmp_path, "d")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert study.trials[1].user_attrs["data"] == recorded
    # its workers get the resolved source and the record to check against
    opened = driver.open_for_trials(settings(tmp_path, "d", trials=2, workers=2), plan)
    assert "data: shapes, as the study decided" in opened.notes[0]
    jobs = driver._jobs(settings(tmp_path, "d", trials=2, workers=2), opened,
                        lambda index, restart: index)
    assert [job.definition.trial_base.data.source for job in jobs] == ["shapes", "shapes"]
    assert all(job.definition.data == recorded for job in jobs)
    assert plan.target.data.source == "auto"  # the target itself is left as written


def test_other_data_is_refused_and_a_worker_seeing_it_stops_loudly(tmp_path, capfd):
    cache = tmp_path / "cache"  # this test edits the dataset: a cache of its own
    run(tmp_path, cache, "o", trials=1)
    study = load(tmp_path, "o")
    recorded = study.user_attrs["fingerprint"]["data"]
    captions = next(cache.glob("shapes/*/flickr30k_images/results.csv"))
    lines = captions.read_text().splitlines()
    lines[1] = lines[1].rsplit("|", 1)[0] + "| a caption someone edited ."
    captions.write_text("\n".join(lines) + "\n")

    with pytest.raises(ConfigError, match=r"(?s)data: fingerprint: '\w+' -> '\w+'.*--allow-changes"):
        run(tmp_path, cache, "o", trials=1)
    assert len(load(tmp_path, "o").trials) == 1

    # a worker that loads other data than its driver decided on (the dataset changed in
    # between) stops with both fingerprints and is not replaced
    opts = settings(tmp_path, "o", trials=1, workers=2, allow_changes=True)
    opened = driver.open_for_trials(opts, tiny_plan(tmp_path, cache))
    job = driver._jobs(opts, opened, lambda i, r: i)[0]
    job = dataclasses.replace(job, definition=dataclasses.replace(job.definition, data=recorded))
    interrupted, errors, _ = run_workers(opened.study, opened.storage, [job], lambda: None,
                                         lambda i, r: i)
    err = capfd.readouterr().err
    assert not interrupted and len(errors) == 1 and "not replaced" in errors[0]
    assert "error: worker 0: worker 0 loaded other data than the study's driver decided" in err
    assert recorded["fingerprint"] in err and opened.data.fingerprint in err
    assert len(load(tmp_path, "o").trials) == 1  # it ran no trial


def test_two_workers_on_a_fresh_cache_build_it_once(tmp_path, monkeypatch):
    cache = tmp_path / "fresh-cache"
    builds = []
    real_build = image_cache._build

    def spy(path, *args, **kwargs):
        errors = real_build(path, *args, **kwargs)
        builds.append((path, path.stat().st_ino, path.stat().st_mtime_ns))
        return errors

    monkeypatch.setattr(image_cache, "_build", spy)
    run(tmp_path, cache, "w", trials=2, workers=2)
    study = load(tmp_path, "w")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert len(builds) == 1  # the driver's, before the workers started
    path, inode, mtime = builds[0]
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (inode, mtime)  # only read since
    assert [p.name for p in path.parent.iterdir() if p.suffix == ".npy"] == [path.name]
    assert not list(cache.rglob("*.partial*")) and not list(cache.rglob("*.tmp*"))
    recorded = study.user_attrs["fingerprint"]["data"]
    assert all(t.user_attrs["data"] == recorded for t in study.trials)  # the workers' data


# --------------------------------------------------------------------------- checkpoints

def test_trials_write_one_weights_only_checkpoint_at_the_end(tmp_path, cache_dir, monkeypatch):
    writes = {"objective": [], "trainer": []}
    for module, key in ((objective_module, "objective"), (checkpointer_module, "trainer")):
        real = module.save_checkpoint

        def spy(state, path, real=real, key=key):
            writes[key].append(Path(path))
            return real(state, path)

        monkeypatch.setattr(module, "save_checkpoint", spy)
    run(tmp_path, cache_dir, "c", trial_epochs=3, trials=3)
    study = load(tmp_path, "c")
    assert writes["trainer"] == []  # no best.pt at every improving epoch
    assert 1 <= len(writes["objective"]) <= 3  # at most one per trial, at its end
    assert len(set(writes["objective"])) == len(writes["objective"])
    best = study.best_trial
    assert writes["objective"][-1] == scratch_dir(str(tmp_path / "checkpoints"), "c",
                                                  best.number) / "best.pt"
    assert "checkpoint" not in best.user_attrs  # no attribute naming a scratch file

    path = tmp_path / "checkpoints" / "c" / "best.pt"
    state = load_checkpoint(path)
    assert not set(TRAINING_STATE) & set(state)
    assert state["config"]["name"] == f"c/trial_{best.number:04d}"
    assert state["epoch"] == best.user_attrs["best_epoch"]
    assert load_model(path).config.name == f"c/trial_{best.number:04d}"  # rebuilds the model
    # evaluate.py on it gives the trial's best-epoch validation loss: the best epoch's weights
    out = tmp_path / "eval.json"
    evaluate.run(["--checkpoint", str(path), "--split", "val", "--device", "cpu",
                  "--json", str(out)])
    assert read_json(out)["metrics"]["loss"] == pytest.approx(
        best.user_attrs["metrics"]["val_loss"], abs=1e-5)
    with pytest.raises(CheckpointError, match="weights only.*cannot resume"):
        Trainer(load_model(path).config, resume=str(path), show_progress=False).fit()
    assert not list((tmp_path / "checkpoints" / ".hpo-scratch").rglob("*.pt"))


def test_best_model_through_the_artifact_store_on_another_machine(tmp_path, cache_dir):
    shared = tmp_path / "shared"
    shared.mkdir()
    common = {"storage": str(shared / "s.journal"), "artifact_store": str(shared / "artifacts")}
    machine_a, machine_b = tmp_path / "a", tmp_path / "b"
    run(machine_a, cache_dir, "s", trials=2, **common)
    study = load(tmp_path, "s", storage=common["storage"])
    best = study.best_trial
    artifact = best.user_attrs["checkpoint_artifact"]
    assert (shared / "artifacts" / artifact).is_file()

    def assert_same_trial(machine: Path, number: int) -> Path:
        out = machine / "results" / "s"
        record = read_json(out / "best_results.json")
        assert record["trial"] == number
        assert record["checkpoint"] == str(machine / "checkpoints" / "s" / "best.pt")
        assert f"(trial {number}," in (out / "best_config.yaml").read_text()
        config = load_checkpoint(record["checkpoint"])["config"]
        assert config["name"] == f"s/trial_{number:04d}"
        return Path(record["checkpoint"])

    # machine B ran no trial: it downloads the best trial's checkpoint from the store
    run(machine_b, cache_dir, "s", trials=0, **common)
    downloaded = assert_same_trial(machine_b, best.number)
    ran_here = assert_same_trial(machine_a, best.number)
    a_weights, b_weights = load_checkpoint(ran_here)["model"], load_checkpoint(downloaded)["model"]
    assert all(torch.equal(a_weights[k], b_weights[k]) for k in a_weights)
    assert "s/trial_" in json.dumps(load_checkpoint(downloaded)["config"])

    # B runs a trial of its own: whichever trial is best, every file names the same one
    run(machine_b, cache_dir, "s", trials=1, **common)
    run(machine_a, cache_dir, "s", trials=0, **common)
    best = load(tmp_path, "s", storage=common["storage"]).best_trial
    assert_same_trial(machine_b, best.number)
    assert_same_trial(machine_a, best.number)

    # a machine whose store lacks the checkpoint names none rather than another trial's
    run(tmp_path / "c", cache_dir, "s", trials=0, storage=common["storage"],
        artifact_store=str(tmp_path / "c" / "other-store"))
    record = read_json(tmp_path / "c" / "results" / "s" / "best_results.json")
    assert record["checkpoint"] is None and "--artifact-store" in record["checkpoint_note"]
    assert "none on this machine" in (tmp_path / "c" / "results" / "s" / "report.md").read_text()


def test_a_study_from_before_the_data_part_and_the_artifact_store_still_reports(tmp_path,
                                                                                cache_dir):
    run(tmp_path, cache_dir, "old", trials=1)
    study = load(tmp_path, "old")
    fingerprint = dict(study.user_attrs["fingerprint"])
    del fingerprint["data"]
    study.set_user_attr("fingerprint", fingerprint)  # as recorded before the data part
    first = study.trials[0]
    old_attrs = {key: first.user_attrs[key] for key in ("config", "metrics", "best_epoch",
                                                        "run_dir")}
    old_attrs["checkpoint"] = "checkpoints/.hpo-scratch/old/trial_0001/best.pt"  # since moved
    study.add_trial(optuna.trial.create_trial(
        params=first.params, distributions=first.distributions, value=1e-3,
        intermediate_values={1: 1e-3}, user_attrs=old_attrs))
    old = load(tmp_path, "old").trials[-1]
    folder = tmp_path / "checkpoints" / "old"
    (folder / "best.json").write_text(json.dumps({"trial": old.number, "value": 1e-3}))

    run(tmp_path, cache_dir, "old", trials=1)  # continues it: no data part, no artifact
    study = load(tmp_path, "old")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert study.user_attrs["fingerprint"]["data"] == study.trials[2].user_attrs["data"]
    record = read_json(tmp_path / "results" / "old" / "best_results.json")
    assert record["trial"] == old.number and record["checkpoint"] == str(folder / "best.pt")
    assert record["checkpoint_artifact"] is None

    (folder / "best.json").write_text(json.dumps({"trial": 0, "value": first.value}))
    run(tmp_path, cache_dir, "old", trials=0)
    record = read_json(tmp_path / "results" / "old" / "best_results.json")
    assert record["trial"] == old.number and record["checkpoint"] is None
    assert "stored no checkpoint" in record["checkpoint_note"]
