"""Data-parallel training (DDP + gathered contrastive loss) against one process.

CPU (default): 2 gloo processes against 1 process at the same global batch, synthetic
data, the real training loop (`cliptune.training.loop.train_one_epoch`). Reports
samples/s of each and the cost of the feature all-gather (forward + backward) per step.

    python bench/bench_ddp.py                          # tiny preset, global batch 128
    python bench/bench_ddp.py --device cuda --preset vit-b-32 --batch-size 256

`--device cuda`: on ONE GPU, the DDP code path at world size 1 (nccl group of one,
DistributedDataParallel wrapper, loss through the autograd all-gather) against plain
training, interleaved rounds; the target is < 2% cost.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cliptune import distributed  # noqa: E402
from cliptune.config import TrainConfig, model_preset  # noqa: E402
from cliptune.loss import ClipLoss  # noqa: E402
from cliptune.model import CLIP  # noqa: E402
from cliptune.runtime import configure_matmul, resolve_precision  # noqa: E402
from cliptune.training.loop import train_one_epoch  # noqa: E402
from cliptune.training.state import TrainState  # noqa: E402


class GatheredLoss(ClipLoss):
    """ClipLoss that always goes through the autograd all-gather (even in a group of one)."""

    def gather(self, image_emb, text_emb):
        width = image_emb.shape[1]
        both = distributed.all_gather_with_grad(torch.cat([image_emb.float(),
                                                           text_emb.float()], 1))
        return both[:, :width], both[:, width:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def setup(args, device: torch.device, local_batch: int):
    torch.manual_seed(0)
    config = model_preset(args.preset)
    model = CLIP(config).to(device)
    train = TrainConfig(log_every=10**9, epochs=1)
    precision = resolve_precision(args.precision, device)
    state = TrainState.create(model, train, precision=precision, total_steps=10**6,
                              schedule_epochs=1)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(local_batch, 3, config.image_size, config.image_size, generator=g)
    tokens = torch.randint(1, config.vocab_size, (local_batch, config.context_length),
                           generator=g)
    return state, train, precision, images.to(device), tokens.to(device)


def run_steps(state, model, loss_fn, batch, steps, train, device, precision) -> float:
    """Seconds for `steps` optimizer steps of the real training loop."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    train_one_epoch(state, model, loss_fn, [batch] * steps, steps, config=train, device=device,
                    precision=precision)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def gather_ms(local_batch: int, dim: int, repeats: int) -> float:
    """Median milliseconds of one all-gather with gradient (forward + backward)."""
    times = []
    for _ in range(repeats):
        x = torch.randn(local_batch, 2 * dim, requires_grad=True)
        start = time.perf_counter()
        distributed.all_gather_with_grad(x).sum().backward()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def cpu_worker(rank: int, world: int, port: int, args, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, args.threads // world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    device = torch.device("cpu")
    local = args.batch_size // world
    state, train, precision, images, tokens = setup(args, device, local)
    model = torch.nn.parallel.DistributedDataParallel(state.model)
    loss_fn = ClipLoss()
    run_steps(state, model, loss_fn, (images, tokens), args.warmup, train, device, precision)
    seconds = [run_steps(state, model, loss_fn, (images, tokens), args.steps, train, device,
                         precision) for _ in range(args.repeats)]
    gather = gather_ms(local, model_preset(args.preset).embed_dim, 20)
    if rank == 0:
        torch.save({"seconds": seconds, "gather_ms": gather}, out)
    distributed.shutdown()


def cpu_bench(args) -> None:
    device = torch.device("cpu")
    torch.set_num_threads(args.threads)
    state, train, precision, images, tokens = setup(args, device, args.batch_size)
    loss_fn = ClipLoss()
    run_steps(state, state.model, loss_fn, (images, tokens), args.warmup, train, device,
              precision)
    def single_rounds() -> list[float]:
        return [run_steps(state, state.model, loss_fn, (images, tokens), args.steps, train,
                          device, precision) for _ in range(args.repeats)]

    # one process before and after the pair, so a change in machine load hits both alike
    single = single_rounds()
    out = Path(f"/tmp/bench_ddp_{os.getpid()}.pt")
    mp.spawn(cpu_worker, args=(2, free_port(), args, str(out)), nprocs=2, join=True)
    single += single_rounds()
    result = torch.load(out, weights_only=True)
    out.unlink()
    rate_one = args.batch_size * args.steps / statistics.median(single)
    rate_two = args.batch_size * args.steps / statistics.median(result["seconds"])
    step_ms = 1000 * statistics.median(result["seconds"]) / args.steps
    print(f"preset {args.preset}, global batch {args.batch_size}, precision {precision}, "
          f"{args.threads} threads in all, {args.repeats} x {args.steps} steps (medians), "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"1 process           : {rate_one:8.1f} samples/s")
    print(f"2 gloo processes    : {rate_two:8.1f} samples/s  ({rate_two / rate_one:.2f}x)")
    print(f"feature all-gather  : {result['gather_ms']:8.2f} ms per step (fwd+bwd), "
          f"{100 * result['gather_ms'] / step_ms:.1f}% of a {step_ms:.0f} ms step")


def cuda_bench(args) -> None:
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    configure_matmul(device)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("nccl", rank=0, world_size=1)
    state, train, precision, images, tokens = setup(args, device, args.batch_size)
    variants = {
        "plain": (state.model, ClipLoss()),
        "ddp (world 1)": (torch.nn.parallel.DistributedDataParallel(state.model,
                                                                    device_ids=[0]),
                          GatheredLoss()),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for model, loss_fn in variants.values():
        run_steps(state, model, loss_fn, (images, tokens), args.warmup, train, device, precision)
    for _ in range(args.repeats):  # interleaved: drifts in clock or load hit both alike
        for name, (model, loss_fn) in variants.items():
            times[name].append(run_steps(state, model, loss_fn, (images, tokens), args.steps,
                                         train, device, precision))
    plain = statistics.median(times["plain"])
    print(f"{torch.cuda.get_device_name(device)}, preset {args.preset}, batch "
          f"{args.batch_size}, {precision}, {args.repeats} x {args.steps} steps (medians)")
    for name, seconds in times.items():
        rate = args.batch_size * args.steps / statistics.median(seconds)
        print(f"{name:14s}: {rate:9.1f} samples/s  cost {100 * (statistics.median(seconds) / plain - 1):+.2f}%")
    ratios = [d / p for d, p in zip(times["ddp (world 1)"], times["plain"], strict=True)]
    print(f"median per-round cost of the DDP path: {100 * (statistics.median(ratios) - 1):+.2f}% "
          "(target < 2%)")
    distributed.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--preset", default=None, help="model preset (cpu: tiny, cuda: small)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="global batch (cpu: 128, cuda: 256)")
    parser.add_argument("--precision", default="auto", help="auto (default), bf16, fp16, fp32")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    cuda = args.device == "cuda"
    args.preset = args.preset or ("small" if cuda else "tiny")
    args.batch_size = args.batch_size or (256 if cuda else 128)
    args.steps = args.steps or (50 if cuda else 5)
    (cuda_bench if cuda else cpu_bench)(args)


if __name__ == "__main__":
    main()
