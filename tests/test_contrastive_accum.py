"""Contrastive accumulation (`train.accum_features`, GradCache): k batches of B make one
contrastive batch of k x B, the same step as one batch of k x B (the two-process version
is in test_distributed.py)."""

from __future__ import annotations

import pytest
import torch
from tiny_model import TINY_MODEL
from trainer_helpers import tiny_config, weights

from cliptune.config import RunConfig, TrainConfig, apply_overrides
from cliptune.loss import ClipLoss
from cliptune.model import CLIP
from cliptune.runtime import seed_batch
from cliptune.trainer import Trainer
from cliptune.training.loop import train_one_epoch
from cliptune.training.state import TrainState

B, K = 6, 3


def sgd_state(dropout: float = 0.0) -> TrainState:
    """A tiny CLIP (fixed initial weights) under plain SGD with lr 1 and no clipping, so
    each weight moves by exactly minus its gradient: logit_scale's included, which AdamW's
    first step would hide (its update is about lr x sign(gradient))."""
    torch.manual_seed(0)
    model = CLIP(apply_overrides(RunConfig(), TINY_MODEL + [f"model.dropout={dropout}"]).model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return TrainState(model, optimizer, schedule, None, total_steps=1, schedule_epochs=1)


def pairs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, 120, (n, 16), generator=g)
    tokens[:, 10:] = 0
    return torch.randn(n, 3, 32, 32, generator=g), tokens


def one_epoch(state: TrainState, batch: int, accum: int, accum_features: bool) -> float:
    """Train `state` on the K x B pairs in batches of `batch`; returns the epoch's loss."""
    images, tokens = pairs(B * K)
    batches = [(images[i:i + batch], tokens[i:i + batch]) for i in range(0, B * K, batch)]
    config = TrainConfig(epochs=1, batch_size=batch, grad_accum_steps=accum, grad_clip=0.0,
                         accum_features=accum_features)
    stats = train_one_epoch(state, state.model, ClipLoss(), batches, len(batches),
                            config=config, device=torch.device("cpu"), precision="fp32")
    return stats.loss


def assert_same_weights(got: dict, expected: dict, atol: float) -> None:
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=atol, msg=key)


def test_accumulated_step_has_the_gradient_of_one_big_batch():
    big = sgd_state()
    big_loss = one_epoch(big, B * K, 1, accum_features=False)
    accumulated = sgd_state()
    loss = one_epoch(accumulated, B, K, accum_features=True)
    assert big.step == accumulated.step == 1
    assert loss == pytest.approx(big_loss, rel=1e-6)  # the loss of the K x B batch
    expected = weights(big)
    assert_same_weights(weights(accumulated), expected, atol=1e-5)

    plain = sgd_state()  # each batch its own negatives: another gradient, another loss
    plain_loss = one_epoch(plain, B, K, accum_features=False)
    assert plain_loss < big_loss - 0.3
    moved = max((weights(plain)[k] - v).abs().max().item() for k, v in expected.items())
    assert moved > 1e-3


def test_both_passes_draw_the_same_dropout_masks():
    """With dropout the cached features of pass 1 are those pass 2 recomputes, so the step
    equals a big batch built from the K seeded forwards with gradient."""
    accumulated = sgd_state(dropout=0.3)
    one_epoch(accumulated, B, K, accum_features=True)

    reference = sgd_state(dropout=0.3)
    images, tokens = pairs(B * K)
    outputs = []
    for index in range(K):
        seed_batch(0, 1, index, 0)  # what train_one_epoch seeds batch `index` of epoch 1 with
        outputs.append(reference.model(images[index * B:(index + 1) * B],
                                       tokens[index * B:(index + 1) * B]))
    image_emb, text_emb = (torch.cat([out[i] for out in outputs]) for i in (0, 1))
    ClipLoss()(image_emb, text_emb, reference.model.logit_scale).backward()
    reference.optimizer_step(0.0)
    assert_same_weights(weights(accumulated), weights(reference), atol=1e-5)


def test_trainer_step_of_b_times_k_equals_one_batch_of_b_times_k(tmp_path, cache_dir, data):
    """The issue's criterion through the Trainer (its loader, AdamW, clipping): one
    optimizer step over the 48 training images, batches of 16 x 3 against one of 48."""
    n_train = len(data.train)
    assert n_train == 48
    common = ("train.epochs=1", "data.augment=false", "model.dropout=0", "train.lr=2e-3",
              "train.warmup_fraction=0", "train.save_checkpoints=false")
    runs = {}
    for name, extra in (("big", ("train.batch_size=48",)),
                        ("accum", ("train.batch_size=16", "train.grad_accum_steps=3",
                                   "train.accum_features=true")),
                        ("plain", ("train.batch_size=16", "train.grad_accum_steps=3"))):
        trainer = Trainer(tiny_config(tmp_path / name, cache_dir, *common, *extra), data=data,
                          show_progress=False)
        trainer.fit()
        assert trainer.step == 1
        runs[name] = trainer
    expected = weights(runs["big"])
    assert_same_weights(weights(runs["accum"]), expected, atol=1e-5)
    assert runs["accum"].history[0]["train_loss"] == pytest.approx(
        runs["big"].history[0]["train_loss"], rel=1e-6)
    moved = max((weights(runs["plain"])[k] - v).abs().max().item() for k, v in expected.items())
    assert moved > 1e-4
