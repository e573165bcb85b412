"""NCCL paths on a one-rank process group (one GPU): `torch.compile` of a DDP model with
`no_sync` accumulation, as the Trainer builds it, gives the gradients of plain accumulation
and all-reduces once per window; gather-with-grad (all-gather forward, reduce-scatter
backward) leaves the loss and its gradients the local ones."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel
from trainer_helpers import tiny_config

from cliptune import distributed
from cliptune.data import TrainLoader, device_batches
from cliptune.loss import ClipLoss, clip_loss
from cliptune.model import CLIP

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda", 0)


@pytest.fixture(scope="module")
def nccl_group(tmp_path_factory):
    """A one-rank NCCL process group for this module's tests."""
    torch.cuda.set_device(CUDA)
    store = tmp_path_factory.mktemp("nccl") / "store"
    dist.init_process_group("nccl", init_method=f"file://{store}", rank=0, world_size=1)
    assert dist.get_backend() == "nccl"
    yield
    dist.destroy_process_group()


def test_compiled_ddp_no_sync_accumulates_like_plain_training(tmp_path, cache_dir, data,
                                                              nccl_group, no_tf32):
    torch.manual_seed(0)
    plain = CLIP(tiny_config(tmp_path, cache_dir).model).to(CUDA)
    ddp = DistributedDataParallel(copy.deepcopy(plain), device_ids=[CUDA.index])
    reduced = []

    def counting_allreduce(state, bucket):
        reduced.append(bucket.index())
        return default_hooks.allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, counting_allreduce)
    compiled = torch.compile(ddp)
    loss_fn = ClipLoss()
    loader = TrainLoader(data.train, batch_size=16, seed=0, epoch=1, augment=True, flip=True,
                         pin_memory=True)
    first, second = list(device_batches(loader, CUDA))[:2]
    for batch in (first, second):
        (loss_fn(*plain(*batch)) / 2).backward()
    with ddp.no_sync():  # the first micro-batch of a window of two: no all-reduce
        (loss_fn(*compiled(*first)) / 2).backward()
    assert reduced == []
    (loss_fn(*compiled(*second)) / 2).backward()  # the window's last: one all-reduce
    assert reduced, "the synchronised backward did not all-reduce"
    for (name, p), q in zip(plain.named_parameters(), ddp.module.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_gather_with_grad_on_nccl_equals_the_local_loss(nccl_group):
    gen = torch.Generator(device=CUDA).manual_seed(0)
    image = F.normalize(torch.randn(8, 32, device=CUDA, generator=gen), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(8, 32, device=CUDA, generator=gen), dim=-1).requires_grad_()
    scale = torch.tensor(math.log(1 / 0.07), device=CUDA, requires_grad=True)
    local = clip_loss(image, text, scale)
    expected = torch.autograd.grad(local, (image, text, scale))

    both = distributed.all_gather_with_grad(torch.cat([image, text], dim=1))
    assert both.shape == (8, 64)
    gathered = clip_loss(both[:, :32], both[:, 32:], scale)
    got = torch.autograd.grad(gathered, (image, text, scale))  # through reduce_scatter_tensor
    assert torch.equal(gathered, local)
    for a, b in zip(expected, got, strict=True):  # summed in another order: float rounding
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
