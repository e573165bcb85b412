"""Data-parallel training on the CPU: 2 gloo processes against 1 on the same global batch
(contrastive accumulation included), the data decision of rank 0, per-rank dropout and the
start-up lines."""

from __future__ import annotations

import json

import pytest
import torch
import torch.multiprocessing as mp
from conftest import build_fake_flickr
from distributed_worker import (
    LOSSES,
    data_decision_worker,
    embed_split_fixture,
    free_port,
    gather_rows_worker,
    global_batch,
    gradient_worker,
    one_step,
    shutdown_worker,
    tiny_clip,
    trainer_worker,
)
from tiny_model import TINY_MODEL

from cliptune.checkpoint import load_checkpoint
from cliptune.config import RunConfig, apply_overrides
from cliptune.evaluation import embed_split
from cliptune.trainer import Trainer

SHAPES = TINY_MODEL + [
    "data.source=shapes", "data.shapes_images=64", "data.val_size=16", "data.test_size=8",
    "train.epochs=2", "train.batch_size=8", "train.eval_batch_size=16", "train.log_every=1",
    "train.figure_images=1", "train.precision=fp32", "train.lr=2e-3", "train.warmup_fraction=0",
    "train.device=cpu",  # gloo ranks on the CPU, also on a machine with fewer GPUs than ranks
]


def spawn(fn, *args) -> None:
    mp.spawn(fn, args=(2, free_port(), *args), nprocs=2, join=True)


@pytest.fixture(scope="module")
def gradients(tmp_path_factory):
    out = tmp_path_factory.mktemp("grads")
    spawn(gradient_worker, str(out))
    return [torch.load(out / f"grads_{rank}.pt", weights_only=True) for rank in (0, 1)]


@pytest.mark.parametrize("loss_name", LOSSES)
def test_loss_and_every_gradient_equal_one_process(gradients, loss_name):
    model = tiny_clip(loss_name)
    images, tokens = global_batch()
    loss = one_step(model, images, tokens, loss_name)
    for rank in (0, 1):
        got = gradients[rank][loss_name]
        torch.testing.assert_close(got["loss"], loss, rtol=1e-5, atol=0)
        for name, parameter in model.named_parameters():
            expected = parameter.grad
            assert expected.abs().max() > 0, name
            torch.testing.assert_close(got["grads"][name], expected, rtol=1e-5,
                                       atol=1e-5 * expected.abs().max().item(), msg=name)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    overrides = SHAPES + [f"data.cache_dir={out / 'cache'}"]
    spawn(trainer_worker, str(out), json.dumps(overrides))
    single = apply_overrides(RunConfig(name="run"), overrides)
    single.runs_dir, single.checkpoints_dir = str(out / "one" / "runs"), str(out / "one" / "ckpt")
    trainer = Trainer(single, show_progress=False)
    result = trainer.fit()
    return out, [torch.load(out / f"trained_{r}.pt", weights_only=True) for r in (0, 1)], (
        trainer, result)


def test_two_processes_end_with_the_weights_of_one(trained):
    _, ranks, (trainer, _) = trained
    expected = trainer.model.state_dict()
    for rank in ranks:
        assert rank["weights"].keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(rank["weights"][key], value, rtol=1e-4, atol=1e-5,
                                       msg=key)
    for key in expected:  # the ranks agree exactly: DDP keeps replicas identical
        assert torch.equal(ranks[0]["weights"][key], ranks[1]["weights"][key]), key


def test_validation_metrics_equal_one_process(trained):
    _, ranks, (_, result) = trained
    for rank in ranks:
        assert len(rank["history"]) == len(result.history) == 2
        for got, expected in zip(rank["history"], result.history, strict=True):
            for key in ("val_i2t_r1", "val_i2t_r5", "val_t2i_r1", "val_t2i_r10", "val_rsum",
                        "val_loss", "train_loss"):
                assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key


def test_only_rank_zero_writes_files(trained):
    out, _, (trainer, _) = trained
    assert not (out / "rank1").exists()
    checkpoints = out / "rank0" / "checkpoints" / "run"
    assert {p.name for p in checkpoints.iterdir()} == {"best.pt", "last.pt", "metrics.json"}
    assert list((out / "rank0" / "runs" / "run").glob("events.out.tfevents.*"))
    state = load_checkpoint(checkpoints / "last.pt")
    assert state["epoch"] == 2 and state["step"] == 2 * (len(trainer.data.train) // 8) == trainer.step


def test_rank_zero_prints_world_size_backend_and_batches_first(trained):
    out, _, _ = trained
    lines = (out / "stdout_0.txt").read_text().splitlines()
    assert lines[0] == ("distributed: 2 ranks (DistributedDataParallel), backend gloo, each "
                        "rank on the CPU; rank 0 prints, logs and saves")
    assert "batch: 8 global = 4 per rank x 2 ranks" in lines[:6]
    assert "distributed:" not in (out / "stdout_1.txt").read_text()  # only rank 0 prints


@pytest.fixture(scope="module")
def accumulated(tmp_path_factory):
    """One optimizer step over the 40 training images: 2 ranks with batches of 8 x 5 as one
    contrastive batch (train.accum_features), and one process with one batch of 40."""
    out = tmp_path_factory.mktemp("accum")
    overrides = SHAPES + [f"data.cache_dir={out / 'cache'}", "train.epochs=1",
                          "data.augment=false", "model.dropout=0"]
    accum = ["train.grad_accum_steps=5", "train.accum_features=true"]
    spawn(trainer_worker, str(out), json.dumps(overrides + accum))
    single = apply_overrides(RunConfig(name="run"), overrides + ["train.batch_size=40"])
    single.runs_dir, single.checkpoints_dir = str(out / "one" / "runs"), str(out / "one" / "ckpt")
    trainer = Trainer(single, show_progress=False)
    trainer.fit()
    assert len(trainer.data.train) == 40 and trainer.step == 1
    return out, [torch.load(out / f"trained_{r}.pt", weights_only=True) for r in (0, 1)], trainer


def test_accumulated_features_on_two_processes_equal_one_batch_of_b_times_k(accumulated):
    out, ranks, trainer = accumulated
    for rank in ranks:
        for key, value in trainer.model.state_dict().items():
            torch.testing.assert_close(rank["weights"][key], value, rtol=0, atol=1e-5, msg=key)
        assert rank["history"][0]["train_loss"] == pytest.approx(
            trainer.history[0]["train_loss"], rel=1e-5)
    lines = (out / "stdout_0.txt").read_text().splitlines()
    assert ("batch: 8 global = 4 per rank x 2 ranks, 5 accumulated per optimizer step "
            "(40 samples, one contrastive batch)") in lines[:6]


@pytest.fixture(scope="module")
def decisions(tmp_path_factory):
    out = tmp_path_factory.mktemp("decision")
    fake = build_fake_flickr(out / "kagglehub")
    overrides = TINY_MODEL + ["data.source=auto", "data.val_size=2", "data.test_size=2",
                              f"data.cache_dir={out / 'cache'}", "train.device=cpu"]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KAGGLEHUB_CACHE", str(fake.cache))  # inherited by the spawned ranks
        spawn(data_decision_worker, str(out), json.dumps(overrides))
    return [torch.load(out / f"decision_{rank}.pt", weights_only=True) for rank in (0, 1)]


def test_rank_zero_resolves_auto_once_and_every_rank_uses_it(decisions):
    # rank 1's probe would have failed (Shapes); it never probes and prepares Flickr30k too
    assert [d["source"] for d in decisions] == ["flickr30k", "flickr30k"]
    assert decisions[1]["probes"] == 0
    assert decisions[0]["fingerprint"] == decisions[1]["fingerprint"]


def test_ranks_that_prepared_other_data_stop_naming_ranks_and_fingerprints(decisions):
    first = decisions[0]["fingerprint"]
    for decision in decisions:  # the same error on both ranks: none waits forever
        message = decision["mismatch"]
        assert message.startswith("the 2 ranks prepared different data (rank 0: flickr30k "
                                  f"(fingerprint {first}), rank 1: flickr30k (fingerprint ")
        assert "same data.* settings" in message
    assert decisions[0]["mismatch"] == decisions[1]["mismatch"]


def test_ranks_draw_different_dropout_masks_and_the_same_ones_again(decisions):
    (a0, b0), (a1, b1) = (d["dropout"] for d in decisions)
    assert torch.equal(a0, b0) and torch.equal(a1, b1)  # seed_batch repeats the draw
    assert not torch.allclose(a0, a1)  # same weights, same batch: only the masks differ


def test_uneven_rows_gather_in_rank_order_and_sharded_embeddings_equal_one_process(tmp_path):
    spawn(gather_rows_worker, str(tmp_path))
    ranks = [torch.load(tmp_path / f"gathered_{rank}.pt", weights_only=True) for rank in (0, 1)]
    expected = [torch.tensor([[0.0, 0], [1, 1], [2, 2]]),  # rank 0's 3 rows, rank 1's none
                torch.tensor([[0.0, 0], [1, 1], [1, 1], [2, 2], [3, 3], [4, 4], [5, 5]])]
    images, texts = embed_split(tiny_clip(), embed_split_fixture(), batch_size=4, device="cpu")
    for got in ranks:
        for tensor, want in zip(got["gathered"], expected, strict=True):
            assert torch.equal(tensor, want)
        assert got["sharded"][0].shape == images.shape and got["sharded"][1].shape == texts.shape
        torch.testing.assert_close(got["sharded"][0], images, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["sharded"][1], texts, rtol=1e-5, atol=1e-6)


def test_shutdown_waits_for_the_slowest_rank_then_leaves(tmp_path):
    # the wait lets gloo's threads release the last collective's tensors while Python is up
    spawn(shutdown_worker, str(tmp_path))
    fast, slow = (torch.load(tmp_path / f"shutdown_{rank}.pt") for rank in (1, 0))
    assert fast["seconds"] >= 0.9 > slow["seconds"]
    assert fast["left"] and slow["left"]
