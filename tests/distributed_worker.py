"""Process bodies for the 2-process gloo tests (spawned by torch.multiprocessing)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tiny_model import TINY_MODEL

from cliptune.config import RunConfig, apply_overrides, model_config_for
from cliptune.data import Split, flickr30k
from cliptune.distributed import all_gather_rows, shutdown
from cliptune.errors import DataError
from cliptune.evaluation import embed_split
from cliptune.loss import ClipLoss, SigLipLoss
from cliptune.model import CLIP
from cliptune.runtime import seed_batch
from cliptune.trainer import Trainer

GLOBAL_BATCH = 8
LOSSES = ("clip", "hard_negatives", "siglip")  # what one_step computes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def join(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def tiny_clip(loss: str = "clip") -> CLIP:
    """The tiny CLIP (same weights every call); for `siglip` with a logit bias of -2, where
    the negatives weigh in the gradient more than at OpenCLIP's -10."""
    siglip = ["train.loss=siglip", "model.init_logit_bias=-2"] if loss == "siglip" else []
    config = apply_overrides(RunConfig(), TINY_MODEL + siglip)
    torch.manual_seed(0)
    return CLIP(model_config_for(config))


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g)
    tokens = torch.randint(1, 120, (GLOBAL_BATCH, 16), generator=g)
    tokens[:, 10:] = 0
    return images, tokens


def one_step(model: torch.nn.Module, images, tokens, loss: str) -> torch.Tensor:
    """Loss `loss` (one of LOSSES) of one forward (gathered when distributed) and its
    backward."""
    if loss == "siglip":
        loss_fn = SigLipLoss()
    else:
        loss_fn = ClipLoss(hard_negative_weight=0.5 if loss == "hard_negatives" else 0.0,
                           hard_negative_k=3)
    value = loss_fn(*model(images, tokens))
    value.backward()
    return value.detach()


def gradient_worker(rank: int, world: int, port: int, out: str) -> None:
    """Rank `rank` trains its slice of the global batch for one step under DDP with each
    loss and saves the mean loss over ranks and its gradients."""
    join(rank, world, port)
    images, tokens = global_batch()
    local = GLOBAL_BATCH // world
    rows = slice(rank * local, (rank + 1) * local)
    results = {}
    for name in LOSSES:
        model = tiny_clip(name)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        loss = one_step(ddp, images[rows], tokens[rows], name)
        dist.all_reduce(loss)
        results[name] = {
            "loss": loss / world,
            "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
        }
    torch.save(results, Path(out) / f"grads_{rank}.pt")
    shutdown()


def gather_rows_worker(rank: int, world: int, port: int, out: str) -> None:
    """`all_gather_rows` of uneven row counts (3 rows on rank 0, none on rank 1, then 2 and
    5), and a sharded `embed_split` of 7 images and 9 captions."""
    join(rank, world, port)
    rows = {0: (3, 2), 1: (0, 5)}[rank]
    gathered = [all_gather_rows(torch.full((n, 2), float(rank)) + torch.arange(n)[:, None])
                for n in rows]
    split = embed_split_fixture()
    sharded = embed_split(tiny_clip(), split, batch_size=2, device="cpu", sharded=True)
    torch.save({"gathered": gathered, "sharded": sharded}, Path(out) / f"gathered_{rank}.pt")
    shutdown()


def embed_split_fixture() -> Split:
    """A 7-image, 9-caption split of random pixels and tokens (fixed seed)."""
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (7, 32, 32, 3), dtype=torch.uint8, generator=g).numpy()
    tokens = torch.randint(1, 120, (9, 16), generator=g)
    caption_image = np.array([0, 1, 2, 3, 4, 5, 6, 0, 1])
    return Split("val", [f"{i}.jpg" for i in range(7)], images, ["c"] * 9, caption_image, tokens)


def trainer_worker(rank: int, world: int, port: int, out: str, config_json: str) -> None:
    """Train with the Trainer on `world` processes; rank 1 points its output folders at
    its own directory, so any file it wrote would show there. What each rank prints goes
    to `stdout_<rank>.txt`."""
    join(rank, world, port)
    config = apply_overrides(RunConfig(name="run"), json.loads(config_json))
    base = Path(out) / f"rank{rank}"
    config.runs_dir, config.checkpoints_dir = str(base / "runs"), str(base / "checkpoints")
    with open(Path(out) / f"stdout_{rank}.txt", "w", encoding="utf-8") as printed, \
            contextlib.redirect_stdout(printed):
        trainer = Trainer(config, show_progress=True)
        result = trainer.fit()
    if rank == 0:
        trainer.evaluate_best(("val",))
    torch.save({"weights": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
                "history": result.history},
               Path(out) / f"trained_{rank}.pt")
    shutdown()


def shutdown_worker(rank: int, world: int, port: int, out: str) -> None:
    """Rank 0 reaches `shutdown` a second late; each rank saves how long its `shutdown`
    took and whether it left the group."""
    join(rank, world, port)
    all_gather_rows(torch.ones(2, 3))
    if rank == 0:
        time.sleep(1.0)
    start = time.perf_counter()
    shutdown()
    seconds = time.perf_counter() - start
    torch.save({"seconds": seconds, "left": not dist.is_initialized()},
               Path(out) / f"shutdown_{rank}.pt")


def data_decision_worker(rank: int, world: int, port: int, out: str, config_json: str) -> None:
    """The data decision of a torchrun job with `data.source=auto` (a fake Flickr30k in
    $KAGGLEHUB_CACHE), rank 1's network probe faked to fail as on a flaky network; then
    the same with rank 1 asking for other splits (its error is saved); then the dropout
    of a tiny model after each rank seeds its first epoch, twice."""
    join(rank, world, port)
    probes = []
    if rank == 1:
        def flaky(config):
            probes.append(config.kaggle_handle)
            return False, "faked: api.kaggle.com did not answer"
        flickr30k.available = flaky
    overrides = json.loads(config_json)
    config = apply_overrides(RunConfig(name="run"), overrides)
    data = Trainer(config, show_progress=False, resume=None).prepare_data()
    result = {"source": data.source, "fingerprint": data.fingerprint, "probes": len(probes)}
    other = overrides + (["data.val_size=3"] if rank == 1 else [])
    try:
        Trainer(apply_overrides(RunConfig(name="run"), other), show_progress=False,
                resume=None).prepare_data()
    except DataError as err:
        result["mismatch"] = str(err)
    torch.manual_seed(0)  # the same initial weights on both ranks
    model = CLIP(apply_overrides(RunConfig(), TINY_MODEL + ["model.dropout=0.5"]).model).train()
    images, tokens = global_batch()
    outputs = []
    for _ in range(2):
        seed_batch(0, 1, 0, rank)
        with torch.no_grad():
            outputs.append(model(images, tokens)[0])
    result["dropout"] = outputs
    torch.save(result, Path(out) / f"decision_{rank}.pt")
    shutdown()
