import json
import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from trainer_helpers import tiny_config

from cliptune import checkpoint as checkpointer_module
from cliptune import trainer as trainer_module
from cliptune.checkpoint import load_checkpoint
from cliptune.data import device_batches
from cliptune.errors import CheckpointError, TrainingDiverged
from cliptune.model.clip import PatchDropout
from cliptune.trainer import Trainer


def test_checkpoints_tensorboard_and_metrics(tmp_path, cache_dir, data):
    config = tiny_config(tmp_path, cache_dir, "train.checkpoint_every=1", "train.keep_checkpoints=1")
    trainer = Trainer(config, data=data, show_progress=False, hparams_extra={"trial": 7})
    result = trainer.fit()
    assert result.epochs_completed == 2 and len(result.history) == 2
    assert result.best_metric == "val_rsum"
    assert 0 <= result.best_value <= 600

    ckpt = trainer.checkpoint_dir
    assert sorted(p.name for p in ckpt.glob("*.pt")) == ["best.pt", "epoch_2.pt", "last.pt"]
    state = load_checkpoint(ckpt / "last.pt")
    for key in ("config", "tokenizer", "model", "optimizer", "scheduler", "epoch", "step",
                "metrics", "history"):
        assert key in state
    assert "rng" not in state  # each batch seeds its own generators (runtime.seed_batch)
    assert state["epoch"] == 2 and state["config"]["data"]["source"] == "shapes"
    assert not list(ckpt.glob("*.tmp*"))

    results = trainer.evaluate_best(("val", "test"))
    saved = json.loads((ckpt / "metrics.json").read_text())
    for split in ("val", "test"):
        for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum",
                    "i2t_medr", "t2i_medr", "loss"):
            assert saved[split][key] == pytest.approx(results[split][key])
        assert 0 <= saved[split]["i2t_r1"] <= saved[split]["i2t_r5"] <= saved[split]["i2t_r10"] <= 1

    events = EventAccumulator(str(trainer.run_dir), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("train/loss", "train/lr", "train/temperature", "train/logit_scale",
                "train/grad_norm", "train/samples_per_s", "val/loss", "val/i2t_r1", "val/i2t_r10",
                "val/t2i_r5", "val/rsum", "hparam/best_val_loss", "hparam/val_rsum"):
        assert tag in tags["scalars"], tag
    assert {"val/retrieval", "val/similarity"} <= set(tags["images"])
    assert len(events.Scalars("val/loss")) == 2
    hparams_tags = set(events.PluginTagToContent("hparams"))
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= hparams_tags
    # one run folder: no sub-run created for the hparams
    assert [p for p in trainer.run_dir.iterdir() if p.is_dir()] == []


def test_val_loss_does_not_depend_on_training_batch_size(tmp_path, cache_dir, data):
    a = Trainer(tiny_config(tmp_path / "a", cache_dir, "train.batch_size=8"), data=data,
                show_progress=False)
    b = Trainer(tiny_config(tmp_path / "b", cache_dir, "train.batch_size=32"), data=data,
                show_progress=False)
    a.build_model()
    b.build_model()
    assert a.evaluate("val")["loss"] == pytest.approx(b.evaluate("val")["loss"], rel=1e-6)


def test_nan_loss_stops_with_a_clear_message(tmp_path, cache_dir, data, monkeypatch):
    class NanLoss(trainer_module.ClipLoss):
        def forward(self, image_emb, text_emb, logit_scale):
            return super().forward(image_emb, text_emb, logit_scale) * float("nan")

    monkeypatch.setattr(trainer_module, "ClipLoss", NanLoss)
    trainer = Trainer(tiny_config(tmp_path, cache_dir), data=data, show_progress=False)
    with pytest.raises(TrainingDiverged, match="loss became nan"):
        trainer.fit()
    # the hparams summary is still written so a failed Optuna trial shows in TensorBoard
    assert list(trainer.run_dir.glob("events.out.tfevents.*"))


def test_failed_checkpoint_write_keeps_previous(tmp_path, cache_dir, data, monkeypatch):
    config = tiny_config(tmp_path, cache_dir)
    trainer = Trainer(config, data=data, show_progress=False)
    real_save = checkpointer_module.save_checkpoint

    def save_until_epoch_two(state, path):
        if state["epoch"] == 2:
            raise CheckpointError(f"could not write {path}: No space left on device")
        real_save(state, path)

    monkeypatch.setattr(checkpointer_module, "save_checkpoint", save_until_epoch_two)
    with pytest.raises(CheckpointError, match="No space left"):
        trainer.fit()
    assert load_checkpoint(trainer.checkpoint_dir / "last.pt")["epoch"] == 1


def test_unmasked_epochs_train_the_last_epochs_on_every_patch(tmp_path, cache_dir, data,
                                                              monkeypatch):
    tokens: dict[int, set[int]] = {}
    config = tiny_config(tmp_path, cache_dir, "model.patch_dropout=0.5", "train.unmasked_epochs=1",
                         "train.save_checkpoints=false", "train.figure_images=0")
    trainer = Trainer(config, data=data, show_progress=False)
    forward = PatchDropout.forward

    def counting(self, x):
        out = forward(self, x)
        if self.training:  # what the blocks see in a training step
            tokens.setdefault(trainer.epoch + 1, set()).add(out.shape[1])
        return out

    monkeypatch.setattr(PatchDropout, "forward", counting)
    trainer.fit()
    # 4 x 4 patches: 8 kept + the class token in the first epoch, all 16 + 1 in the last
    assert tokens == {1: {9}, 2: {17}}


def test_data_crop_keys_replace_the_datasets_crops(tmp_path, cache_dir, data):
    def loader(*extra):
        trainer = Trainer(tiny_config(tmp_path, cache_dir, *extra), data=data, show_progress=False)
        return trainer._train_loader(epoch=1)

    default = loader()  # Shapes' own gentle crops (captions state sizes and positions)
    assert default.crop_scale == data.crop_scale == (0.9, 1.0)
    assert default.crop_ratio == pytest.approx((3 / 4, 4 / 3))
    small = loader("data.crop_scale=[0.3, 0.3]", "data.crop_ratio=[1, 1]")
    boxes = small.batch(0).boxes
    area = boxes[:, 2] * boxes[:, 3] / 32**2
    assert area.min() > 0.25 and area.max() < 0.35
    assert (boxes[:, 2] - boxes[:, 3]).abs().max() <= 1
    first = [next(device_batches(x, "cpu"))[0] for x in (default, small)]
    assert not torch.allclose(*first, atol=0.1)


def test_early_stopping_and_callbacks(tmp_path, cache_dir, data):
    seen = []
    # lr 1e-9 leaves the ranks (a median rank) unchanged, while the loss may still drift
    # down by an ulp an epoch: the first epoch is the best, the second stops the run.
    config = tiny_config(tmp_path, cache_dir, "train.epochs=5", "train.best_metric=i2t_medr",
                         "train.early_stopping_patience=1", "train.lr=1e-9",
                         "train.warmup_fraction=0", "train.save_checkpoints=false")
    trainer = Trainer(config, data=data, show_progress=False,
                      callbacks=[lambda t, epoch, m: seen.append((epoch, m["val_loss"]))])
    result = trainer.fit()
    assert result.best_metric == "val_i2t_medr"
    assert result.stopped_early and result.epochs_completed == 2 and result.best_epoch == 1
    assert [epoch for epoch, _ in seen] == list(range(1, result.epochs_completed + 1))
    assert all(math.isfinite(loss) for _, loss in seen)
    assert not trainer.checkpoint_dir.exists()


def test_no_resume_never_overwrites_an_old_run(tmp_path, cache_dir, data):
    config = tiny_config(tmp_path, cache_dir, "train.epochs=1")
    first = Trainer(config, data=data, show_progress=False)
    first.fit()
    second = Trainer(config, data=data, show_progress=False, resume=None)
    second.fit()
    assert second.config.name == "run-2"
    assert (first.checkpoint_dir / "last.pt").is_file()
    assert (second.checkpoint_dir / "last.pt").is_file()


def test_loss_falls_on_shapes(tmp_path, cache_dir, data):
    config = tiny_config(tmp_path, cache_dir, "train.epochs=4", "train.lr=2e-3",
                         "train.save_checkpoints=false")
    result = Trainer(config, data=data, show_progress=False).fit()
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
