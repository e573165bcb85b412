"""Data-parallel runs under torchrun: the process group, this process's rank, small collectives.

`torchrun --nproc_per_node N src/main.py` starts N processes with `RANK`, `WORLD_SIZE`,
`LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT` set; `init_from_env` joins them (nccl on
CUDA, gloo on the CPU). Without torchrun nothing here does anything: `current()` is
rank 0 of 1 and every helper is the identity.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from cliptune.errors import ConfigError

# Seconds a collective waits for the other ranks before it fails (long enough for rank 0
# to download and cache the dataset while the others wait); a dead peer surfaces at once
# as a broken connection, and torchrun stops the other workers when one dies.
# Override with CLIPTUNE_DIST_TIMEOUT.
DEFAULT_TIMEOUT_S = 1800


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 prints, logs and writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """More than one process trains."""
        return self.world_size > 1


def current() -> DistContext:
    """The context of the initialised process group, or rank 0 of 1 without one."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return DistContext(dist.get_rank(), dist.get_world_size(), local)


def timeout() -> timedelta:
    """How long a collective waits (CLIPTUNE_DIST_TIMEOUT seconds, default 1800)."""
    raw = os.environ.get("CLIPTUNE_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        return timedelta(seconds=float(raw))
    except ValueError:
        raise ConfigError(f"CLIPTUNE_DIST_TIMEOUT={raw!r}: expected a number of seconds") from None


def init_from_env(device: str = "auto") -> DistContext:
    """Join the torchrun job described by the environment when WORLD_SIZE > 1.

    nccl when the run trains on CUDA (each process on `cuda:LOCAL_RANK`), gloo on the
    CPU. Returns the context (rank 0 of 1 when not started by torchrun).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or dist.is_initialized():
        return current()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} "
                "GPU(s); start at most that many processes per node (--nproc_per_node)"
            )
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend, timeout=timeout())
    return current()


def shutdown() -> None:
    """Wait for every rank, then leave the process group (no-op without one).

    Call it last, on every rank. The wait matters beyond the handshake: gloo's worker threads
    release a finished collective's tensors after the caller has moved on, and freeing a
    tensor that Python created takes the GIL. A thread that asks for the GIL while the
    interpreter shuts down aborts the process ("terminate called without an active
    exception", exit -6), and DistributedDataParallel keeps the group and its threads alive
    past `destroy_process_group`. The barrier releases the GIL while it waits for the
    slowest rank, so those threads finish while Python is still up.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def global_batch_size(batch_size: int, n_train: int) -> int:
    """The global batch a run trains with: `train.batch_size`, a multiple of the world size
    (else a clear error), lowered to fit a small training split."""
    world = current().world_size
    if batch_size % world:
        raise ConfigError(
            f"train.batch_size={batch_size} is the global batch and must divide evenly over "
            f"the {world} processes; choose a multiple of {world}"
        )
    return min(batch_size, n_train - n_train % world)


def broadcast_object(value: Any, src: int = 0) -> Any:
    """`value` as rank `src` has it, on every rank (the identity on one process)."""
    if not current().enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order (`[value]` on one process)."""
    if not current().enabled:
        return [value]
    values: list[Any] = [None] * current().world_size
    dist.all_gather_object(values, value)
    return values


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of `tensor` over the ranks (a new tensor; the identity on one process)."""
    ctx = current()
    if not ctx.enabled:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / ctx.world_size


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` concatenated along dim 0 in rank order; the row counts may
    differ between ranks (the identity on one process). No gradient flows back."""
    ctx = current()
    if not ctx.enabled:
        return tensor
    count = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = [torch.empty_like(count) for _ in range(ctx.world_size)]
    dist.all_gather(counts, count)
    rows = [int(c) for c in counts]
    padded = tensor.new_zeros((max(rows), *tensor.shape[1:]))  # all_gather needs equal shapes
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in rows]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, rows, strict=True)])


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenation over ranks of `tensor` (rank order) whose backward sends each rank the
    gradient of its own rows summed over every rank's loss (the identity without a process
    group; a real collective in a group of one, which the DDP benchmark measures)."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    return _GatherWithGrad.apply(tensor)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; backward reduce-scatters (sums over ranks, keeps own rows)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        rank, world = dist.get_rank(), dist.get_world_size()
        grad = grad.contiguous()
        if dist.get_backend() == "nccl":
            out = grad.new_empty((grad.shape[0] // world, *grad.shape[1:]))
            dist.reduce_scatter_tensor(out, grad)
            return out
        summed = grad.clone()  # gloo has no reduce-scatter
        dist.all_reduce(summed)
        return summed.chunk(world, dim=0)[rank]


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. downloads and caches), the other ranks after it
    (reading what it wrote); no-op on one process."""
    ctx = current()
    if ctx.enabled and not ctx.is_main:
        dist.barrier()
    yield
    if ctx.enabled and ctx.is_main:
        dist.barrier()


def peer_lost_message(err: BaseException) -> str:
    """What a surviving rank says when a collective fails because another rank went away."""
    ctx = current()
    return (
        f"rank {ctx.rank}/{ctx.world_size}: lost contact with the other ranks "
        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Another "
        "process probably died (see its output above); this job stops. Run the same command "
        "again to resume from the last checkpoint (last.pt)."
    )
