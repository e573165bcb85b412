"""Resuming: equal to an uninterrupted run (fp32 and the default bf16 path, SigLIP, patch
dropout), the learning-rate schedule kept across a changed --epochs, accumulation windows
weighted alike, save_last."""

from __future__ import annotations

import pytest
import torch
from trainer_helpers import Interrupt, interrupt_after, tiny_config, weights

from cliptune.checkpoint import Checkpointer, load_checkpoint, load_model, save_checkpoint
from cliptune.errors import ConfigError
from cliptune.trainer import Trainer
from cliptune.training.loop import window_sizes


def kill_after_first_epoch(config, data) -> Trainer:
    killed = Trainer(config, data=data, show_progress=False, callbacks=[interrupt_after(1)])
    with pytest.raises(Interrupt):
        killed.fit()
    assert load_checkpoint(killed.checkpoint_dir / "last.pt")["epoch"] == 1
    return killed


@pytest.mark.parametrize("precision", ["fp32", "bf16", "auto"])
def test_resume_equals_uninterrupted(tmp_path, cache_dir, data, precision):
    extra = f"train.precision={precision}", "model.dropout=0.2"  # dropout draws random numbers
    if precision == "fp32":
        extra += ("data.num_workers=2",)  # reader processes that persist across epochs
    straight = Trainer(tiny_config(tmp_path / "a", cache_dir, *extra), data=data,
                       show_progress=False)
    straight.fit()
    if precision != "fp32":  # the default path: autocast really runs in bf16 here
        assert straight.precision in ("bf16", "fp32")
        if precision == "bf16":
            assert straight.precision == "bf16"

    config = tiny_config(tmp_path / "b", cache_dir, *extra)
    kill_after_first_epoch(config, data)
    torch.manual_seed(1234)  # whatever the process drew since, the resumed epochs draw the same
    resumed = Trainer(config, data=data, show_progress=False)  # the same command again
    result = resumed.fit()

    assert result.epochs_completed == 2
    expected, got = weights(straight), weights(resumed)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in straight.history]


def test_siglip_run_checkpoints_its_bias_and_resumes_equal_to_uninterrupted(
        tmp_path, cache_dir, data):
    straight = Trainer(tiny_config(tmp_path / "a", cache_dir, "train.loss=siglip"), data=data,
                       show_progress=False)
    straight.fit()
    config = tiny_config(tmp_path / "b", cache_dir, "train.loss=siglip")
    killed = kill_after_first_epoch(config, data)
    saved = load_checkpoint(killed.checkpoint_dir / "last.pt")
    assert saved["config"]["train"]["loss"] == "siglip"
    assert saved["model"]["logit_bias"].item() != -10.0  # learned from OpenCLIP's start
    resumed = Trainer(config, data=data, show_progress=False)
    assert resumed.fit().epochs_completed == 2

    expected, got = weights(straight), weights(resumed)
    assert "logit_bias" in expected and expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    history = resumed.history
    assert [h["val_loss"] for h in history] == [h["val_loss"] for h in straight.history]
    assert history[-1]["logit_bias"] == pytest.approx(got["logit_bias"].item())
    best = load_model(resumed.checkpoint_dir / "best.pt")  # rebuilt from the file alone
    assert best.model.logit_bias is not None and best.config.train.loss == "siglip"


def test_resume_mid_epoch_with_patch_dropout_equals_uninterrupted(tmp_path, cache_dir, data,
                                                                  monkeypatch):
    """Which patches each image keeps is drawn per batch from the run's seed: a run killed
    right after a mid-epoch checkpoint of its masked first epoch ends as an uninterrupted
    one, its unmasked last epoch included."""
    extra = ("model.patch_dropout=0.5", "train.unmasked_epochs=1",
             "train.checkpoint_every_steps=2", "train.figure_images=0")
    straight = Trainer(tiny_config(tmp_path / "a", cache_dir, *extra), data=data,
                       show_progress=False)
    straight.fit()

    config = tiny_config(tmp_path / "b", cache_dir, *extra)
    save = Checkpointer.save_position

    def save_and_die(self, state):
        save(self, state)
        raise Interrupt

    monkeypatch.setattr(Checkpointer, "save_position", save_and_die)
    killed = Trainer(config, data=data, show_progress=False)
    with pytest.raises(Interrupt):
        killed.fit()
    monkeypatch.undo()
    position = load_checkpoint(killed.checkpoint_dir / "last.pt")["position"]
    assert position["epoch"] == 1 and position["batches"] == 2  # of 3
    torch.manual_seed(1234)  # whatever the process drew since, the resumed epochs draw the same
    resumed = Trainer(config, data=data, show_progress=False)
    assert resumed.fit().epochs_completed == 2
    expected, got = weights(straight), weights(resumed)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in straight.history]


def test_resume_from_a_checkpoint_with_the_rng_states_of_more_gpus(tmp_path, cache_dir, data):
    """Older versions saved one CUDA random state per GPU; a checkpoint of 8 GPUs resumes on
    this CPU machine (0 GPUs), says that it does not restore them, and with dropout still
    ends where an uninterrupted run does."""
    extra = "model.dropout=0.2", "train.precision=fp32"
    straight = Trainer(tiny_config(tmp_path / "a", cache_dir, *extra), data=data,
                       show_progress=False)
    straight.fit()
    config = tiny_config(tmp_path / "b", cache_dir, *extra)
    killed = kill_after_first_epoch(config, data)
    path = killed.checkpoint_dir / "last.pt"
    state = load_checkpoint(path)
    fake_cuda_state = torch.zeros(16, dtype=torch.uint8)
    state["rng"] = {"torch": torch.get_rng_state(), "cuda": [fake_cuda_state] * 8}
    save_checkpoint(state, path)
    assert torch.cuda.device_count() < 8

    note = killed.state.load_state_dict(load_checkpoint(path))
    assert "8 CUDA device(s)" in note and "not restored" in note
    resumed = Trainer(config, data=data, show_progress=False)
    assert resumed.fit().epochs_completed == 2
    expected, got = weights(straight), weights(resumed)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_bf16_differs_from_fp32(tmp_path, cache_dir, data):
    """The bf16 tests above do run in bf16: the weights differ from an fp32 run."""
    runs = []
    for precision in ("fp32", "bf16"):
        config = tiny_config(tmp_path / precision, cache_dir, f"train.precision={precision}",
                             "train.epochs=1", "train.save_checkpoints=false")
        trainer = Trainer(config, data=data, show_progress=False)
        trainer.fit()
        runs.append(weights(trainer))
    assert any(not torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_checkpoint_records_the_schedule(tmp_path, cache_dir, data):
    config = tiny_config(tmp_path, cache_dir, "train.epochs=1", "train.grad_accum_steps=2")
    trainer = Trainer(config, data=data, show_progress=False)
    trainer.fit()
    batches = len(data.train) // 16
    state = load_checkpoint(trainer.checkpoint_dir / "last.pt")
    assert state["schedule"] == {"total_steps": -(-batches // 2), "epochs": 1}
    assert state["step"] == -(-batches // 2)


def test_resume_with_more_epochs_is_refused(tmp_path, cache_dir, data):
    config = tiny_config(tmp_path, cache_dir)
    kill_after_first_epoch(config, data)
    config.train.epochs = 5
    with pytest.raises(ConfigError, match=r"schedule was built for 2 epochs .* --epochs 2"):
        Trainer(config, data=data, show_progress=False).fit()


def test_resume_with_fewer_epochs_continues_the_same_schedule(tmp_path, cache_dir, data):
    seen = {}

    def keep(trainer, epoch, metrics):
        seen[epoch] = (weights(trainer), metrics["lr"])

    straight = Trainer(tiny_config(tmp_path / "a", cache_dir, "train.epochs=3"), data=data,
                       show_progress=False, callbacks=[keep])
    straight.fit()

    config = tiny_config(tmp_path / "b", cache_dir, "train.epochs=3")
    kill_after_first_epoch(config, data)
    config.train.epochs = 2  # stop earlier, on the 3-epoch schedule
    resumed = Trainer(config, data=data, show_progress=False)
    result = resumed.fit()
    assert result.epochs_completed == 2
    assert result.history[-1]["lr"] == seen[2][1] > 0  # not the end of a 2-epoch cosine
    for key, value in seen[2][0].items():
        assert torch.equal(weights(resumed)[key], value), key


def test_window_sizes():
    assert window_sizes(7, 3) == [3, 3, 3, 3, 3, 3, 1]
    assert window_sizes(5, 2) == [2, 2, 2, 2, 1]
    assert window_sizes(4, 1) == [1, 1, 1, 1]
    assert window_sizes(2, 4) == [2, 2]


def test_partial_accumulation_window_is_weighted_like_a_full_one(tmp_path, cache_dir, data):
    """An epoch of 3 batches is one window whether grad_accum_steps is 3 or 4: the same
    mean gradient, so bit-identical weights (dividing by 4 would shrink it by a quarter)."""
    batches = len(data.train) // 16
    results = []
    for accum in (batches, batches + 1):
        config = tiny_config(tmp_path / str(accum), cache_dir, f"train.grad_accum_steps={accum}",
                             "train.save_checkpoints=false", "train.epochs=1",
                             "train.grad_clip=0")
        trainer = Trainer(config, data=data, show_progress=False)
        trainer.fit()
        assert trainer.step == 1
        results.append(weights(trainer))
    for key in results[0]:
        assert torch.equal(results[0][key], results[1][key]), key


def test_save_last_false_writes_no_last_pt(tmp_path, cache_dir, data):
    config = tiny_config(tmp_path, cache_dir, "train.save_last=false", "train.epochs=1")
    trainer = Trainer(config, data=data, show_progress=False)
    trainer.fit()
    assert sorted(p.name for p in trainer.checkpoint_dir.iterdir()) == ["best.pt"]


def test_hpo_trials_do_not_write_last_pt(tmp_path, cache_dir):
    from cliptune.hpo.definition import Fidelity, StudyDefinition
    from cliptune.hpo.objective import Objective
    from cliptune.hpo.search_space import SearchSpace

    base = tiny_config(tmp_path, cache_dir)
    objective = Objective(StudyDefinition(base, Fidelity(epochs=1), SearchSpace(parameters=())),
                          "s")
    config = objective.trial_config(0, {})
    assert config.train.save_last is False and base.train.save_last is True
