"""Device, precision and seeding: the few facts about the machine a run depends on."""

from __future__ import annotations

import contextlib
import os
import random
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from cliptune.errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when available, else CPU; `cuda` without a GPU is a clear error."""
    return process_device(name, world_size=1, local_rank=0, cuda_count=visible_gpus())


def visible_gpus() -> int:
    """CUDA devices this process can use (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def process_device(name: str, *, world_size: int, local_rank: int,
                   cuda_count: int) -> torch.device:
    """The device one process of a job trains on, from `train.device` / `--device`.

    One process: `auto` is `cuda` when a GPU is there, else `cpu`; `cuda:N` must name
    an existing GPU. Under torchrun (`world_size` > 1) every rank takes its own GPU,
    `cuda:LOCAL_RANK`, for `auto` and `cuda`; `cuda:N` is refused (it would put every
    rank on GPU N): choose the GPUs with CUDA_VISIBLE_DEVICES instead. A rank whose
    `local_rank` has no GPU is refused too. `cuda_count` is the number of visible GPUs.
    """
    if name == "auto":
        name = "cuda" if cuda_count > 0 else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: only cpu and cuda are supported")
    if device.type == "cpu":
        return device
    if cuda_count == 0:
        raise ConfigError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    if world_size > 1:
        if device.index is not None:
            raise ConfigError(
                f"--device {name} (train.device) under torchrun would put all {world_size} "
                f"ranks on GPU {device.index}; use --device cuda (each rank trains on "
                "cuda:LOCAL_RANK) and choose the GPUs with CUDA_VISIBLE_DEVICES"
            )
        if local_rank >= cuda_count:
            raise ConfigError(
                f"LOCAL_RANK={local_rank} but this machine has {cuda_count} GPU(s); start at "
                "most that many processes per node (--nproc_per_node)"
            )
        return torch.device("cuda", local_rank)
    if device.index is not None and device.index >= cuda_count:
        raise ConfigError(f"--device {name}: this machine has {cuda_count} GPU(s) "
                          f"(cuda:0 to cuda:{cuda_count - 1})")
    return device


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 instructions (x86 AVX512-BF16 / AMX, Arm BF16).

    Without them bf16 autocast still runs on the CPU, emulated and slower than fp32.
    """
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags = set(value.split())
            return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    return False


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """Compute capability (major, minor) of a CUDA device."""
    return torch.cuda.get_device_capability(device)


def resolve_precision(requested: str, device: torch.device) -> str:
    """The autocast precision a run uses: `auto` -> bf16 where the device supports it
    (CUDA compute capability >= 8.0, a CPU with bf16 instructions), else fp16 on CUDA
    and fp32 on the CPU. An explicit value is returned as is, or refused with a clear
    error when the device cannot run it (fp16 on the CPU, bf16 on a pre-Ampere GPU)."""
    if requested not in PRECISIONS:
        raise ConfigError(f"train.precision: expected one of {', '.join(PRECISIONS)}, "
                          f"got {requested!r}")
    if device.type == "cuda":
        major, minor = cuda_capability(device)
        bf16_ok = major >= 8
        if requested == "auto":
            return "bf16" if bf16_ok else "fp16"
        if requested == "bf16" and not bf16_ok:
            raise ConfigError(
                f"train.precision=bf16: this GPU (compute capability {major}.{minor}) has no "
                "bf16 support (needs 8.0+, e.g. A100, H100, RTX 30xx); use "
                "train.precision=auto or fp16"
            )
        return requested
    if requested == "auto":
        return "bf16" if cpu_has_bf16() else "fp32"
    if requested == "fp16":
        raise ConfigError(
            "train.precision=fp16 needs a CUDA device; use auto, bf16 or fp32 on the CPU"
        )
    return requested


def check_precision(precision: str, device: torch.device) -> None:
    """Raise `ConfigError` when `device` cannot run `precision` (see `resolve_precision`)."""
    resolve_precision(precision, device)


def configure_matmul(device: torch.device) -> None:
    """TF32 tensor-core matmuls and convolutions for fp32 work on CUDA (Ampere and newer)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for a resolved `precision` (bf16 | fp16 | fp32) on `device`."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "auto":
        precision = resolve_precision(precision, device)
        if precision == "fp32":
            return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def batch_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    """The torch seed of one rank's training batch: a hash of (seed, epoch, batch, rank)."""
    entropy = [seed % 2**63, epoch, batch, rank]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def seed_batch(seed: int, epoch: int, batch: int, rank: int) -> None:
    """Seed torch (CPU and every GPU) for one rank's training batch.

    Dropout (and any other torch draw in the training step) then differs between ranks,
    as OpenCLIP's seed + rank does, and between batches, yet is the same on a rerun and
    on a resume from any checkpoint, mid-epoch included, whatever the number of GPUs
    before: no random state has to travel in the checkpoint."""
    torch.manual_seed(batch_seed(seed, epoch, batch, rank))
