"""Which device each process trains on, with faked GPU counts: one process, or a torchrun
rank (cuda:LOCAL_RANK; cuda:N refused), and the per-rank, per-epoch torch seeds."""

from __future__ import annotations

import pytest
import torch

from cliptune.errors import ConfigError
from cliptune.runtime import batch_seed, process_device, seed_batch


def device(name, world=1, local=0, gpus=0):
    return process_device(name, world_size=world, local_rank=local, cuda_count=gpus)


def test_one_process():
    assert device("auto", gpus=0) == torch.device("cpu")
    assert device("auto", gpus=2) == torch.device("cuda")
    assert device("cpu", gpus=2) == torch.device("cpu")
    assert device("cuda:1", gpus=2) == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="no CUDA GPU is available here; use --device cpu"):
        device("cuda", gpus=0)
    with pytest.raises(ConfigError, match=r"cuda:2: this machine has 2 GPU\(s\)"):
        device("cuda:2", gpus=2)
    with pytest.raises(ConfigError, match="expected auto, cpu, cuda or cuda:N"):
        device("gpu0")


@pytest.mark.parametrize("name", ["auto", "cuda"])
def test_each_rank_takes_the_gpu_of_its_local_rank(name):
    assert [device(name, world=4, local=r, gpus=4) for r in range(4)] == [
        torch.device("cuda", r) for r in range(4)]
    assert device(name, world=8, local=3, gpus=4) == torch.device("cuda", 3)  # 2 nodes of 4


def test_ranks_on_the_cpu_share_it():
    assert device("cpu", world=2, local=1, gpus=2) == torch.device("cpu")
    assert device("auto", world=2, local=1, gpus=0) == torch.device("cpu")


def test_a_fixed_gpu_under_torchrun_is_refused():
    with pytest.raises(ConfigError, match=r"cuda:0 .* would put all 2 ranks on GPU 0; use "
                                          r"--device cuda .*CUDA_VISIBLE_DEVICES"):
        device("cuda:0", world=2, local=1, gpus=2)


def test_more_ranks_per_node_than_gpus_is_refused():
    with pytest.raises(ConfigError, match=r"LOCAL_RANK=1 but this machine has 1 GPU\(s\).*"
                                          "--nproc_per_node"):
        device("cuda", world=2, local=1, gpus=1)


def test_batch_seeds_differ_by_rank_epoch_and_batch_and_repeat():
    seeds = {batch_seed(0, epoch, batch, rank) for epoch in (1, 2) for batch in (0, 1)
             for rank in (0, 1)}
    assert len(seeds) == 8
    assert batch_seed(0, 1, 0, 1) == batch_seed(0, 1, 0, 1) != batch_seed(1, 1, 0, 1)
    seed_batch(7, 3, 2, 1)
    first = torch.rand(5)
    seed_batch(7, 3, 2, 1)
    assert torch.equal(torch.rand(5), first)
