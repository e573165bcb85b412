"""Contrastive accumulation (`train.accum_features`): peak memory and time per sample
against one small and one big batch.

One optimizer step of each variant, on the model of an experiment file (default:
experiments/default.yaml), synthetic data, the real training loop
(`cliptune.training.loop.train_one_epoch`):

    B               one batch of B pairs
    B x k features  k batches of B, one contrastive batch of B x k (accum_features)
    B x k plain     k batches of B, each with its own negatives (grad_accum_steps alone)
    B*k             one batch of B x k pairs

Each variant runs in a process of its own, since peak memory is a per-process high-water
mark: `ru_maxrss` on the CPU (the process's resident peak; `tracemalloc` does not see
torch), `torch.cuda.max_memory_allocated` on a GPU; both also given above the memory
after building the model and optimizer. `--rounds` interleaves the processes; time per
sample (wall clock, and the process's CPU time, which a loaded machine disturbs less) is
the median over every timed repeat.

    python bench/bench_accum.py                                 # 64 x 4, CPU
    python bench/bench_accum.py --device cuda --config experiments/gpu-flickr30k.yaml \\
        --batch-size 256 --accum 4 --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cliptune.config import TrainConfig, load_config  # noqa: E402
from cliptune.loss import ClipLoss  # noqa: E402
from cliptune.model import CLIP  # noqa: E402
from cliptune.runtime import configure_matmul, resolve_precision  # noqa: E402
from cliptune.training.loop import train_one_epoch  # noqa: E402
from cliptune.training.state import TrainState  # noqa: E402

VARIANTS = ("B", "B x k features", "B x k plain", "B*k")


def memory_mb(device: torch.device, peak: bool) -> float:
    if device.type == "cuda":
        used = torch.cuda.max_memory_allocated(device) if peak else torch.cuda.memory_allocated(device)
        return used / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(args, variant: str) -> dict:
    """Run one variant in this process: its seconds per repeat and its memory."""
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    configure_matmul(device)
    precision = resolve_precision(args.precision, device)
    model_config = load_config(args.config).model
    torch.manual_seed(0)
    batch, accum = args.batch_size, args.accum
    if variant == "B":
        accum = 1
    elif variant == "B*k":
        batch, accum = batch * accum, 1
    train = TrainConfig(epochs=1, batch_size=batch, grad_accum_steps=accum,
                        accum_features=variant == "B x k features", log_every=10**9)
    state = TrainState.create(CLIP(model_config).to(device), train, precision=precision,
                              total_steps=10**6, schedule_epochs=1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base = memory_mb(device, peak=False)
    g = torch.Generator().manual_seed(1)
    size, context = model_config.image_size, model_config.context_length
    batches = [(torch.randn(batch, 3, size, size, generator=g).to(device),
                torch.randint(1, model_config.vocab_size, (batch, context), generator=g).to(device))
               for _ in range(accum)]  # the k different batches a window holds

    def seconds(steps: int) -> tuple[float, float]:
        """Wall-clock and CPU seconds (this process, all threads) of `steps` steps."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        train_one_epoch(state, state.model, ClipLoss(), batches * steps, accum * steps,
                        config=train, device=device, precision=precision)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start, time.process_time() - cpu_start

    seconds(1)  # warm-up: allocator, optimizer state
    times = [seconds(args.steps) for _ in range(args.repeats)]
    return {"seconds": [t[0] for t in times], "cpu_seconds": [t[1] for t in times],
            "samples": batch * accum * args.steps, "precision": precision,
            "peak_mb": memory_mb(device, peak=True), "base_mb": base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "experiments" / "default.yaml"),
                        help="experiment file whose model is benchmarked")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=64, help="B, the batch per forward")
    parser.add_argument("--accum", type=int, default=4, help="k, batches per optimizer step")
    parser.add_argument("--precision", default="auto", help="auto (default), bf16, fp16, fp32")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per process")
    parser.add_argument("--rounds", type=int, default=1, help="processes per variant, interleaved")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args, args.child)))
        return
    passed = list(sys.argv[1:])
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            done = subprocess.run([sys.executable, __file__, *passed, "--child", variant],
                                  capture_output=True, text=True, check=True)
            results[variant].append(json.loads(done.stdout.splitlines()[-1]))
    b, k = args.batch_size, args.accum
    first = results["B"][0]
    print(f"model of {Path(args.config).name} on {args.device} ({first['precision']}, "
          f"{args.threads} threads), B={b}, k={k}; {args.rounds} round(s) x {args.repeats} "
          f"repeats x {args.steps} steps; load average {os.getloadavg()[0]:.1f}")
    print(f"{'variant':16s} {'negatives':>9s} {'ms/sample':>10s} {'CPU ms/sample':>13s} "
          f"{'peak MB':>9s} {'above base':>10s}")
    for variant, runs in results.items():
        per_sample = statistics.median(s / r["samples"] for r in runs for s in r["seconds"])
        cpu = statistics.median(s / r["samples"] for r in runs for s in r["cpu_seconds"])
        peak = statistics.median(r["peak_mb"] for r in runs)
        above = statistics.median(r["peak_mb"] - r["base_mb"] for r in runs)
        negatives = b * k if variant in ("B x k features", "B*k") else b
        name = f"{b * k}" if variant == "B*k" else variant.replace("B x k", f"{b} x {k}")
        print(f"{name:16s} {negatives:9d} {1000 * per_sample:10.3f} {1000 * cpu:13.3f} "
              f"{peak:9.0f} {above:10.0f}")


if __name__ == "__main__":
    main()
