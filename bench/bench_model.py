"""Training-step throughput of cliptune's CLIP against OpenCLIP on the same architecture.

One step = forward + loss + backward + AdamW step (+ temperature clamp), under autocast in
`--precision` (auto: bf16 where the device has it, else fp32, as `train.precision`).
Variants are timed interleaved, `--repeats` rounds of `--steps` steps each. Reported:
median samples/s, its ratio to OpenCLIP's median, the median of per-round ratios
(robust to load from other processes), and MFU against the best matmul rate in the
step's precision measured in the same run.

    python bench/bench_model.py                      # tiny preset, batch 128, eager
    python bench/bench_model.py --compile            # also torch.compile'd variants
    python bench/bench_model.py --ablation           # also cliptune minus each speed-up
    python bench/bench_model.py --profile cliptune   # top ops of one variant (torch.profiler)
    python bench/bench_model.py --config experiments/default.yaml --patch-dropout 0.5
                                                     # also both with patch dropout 0.5
    python bench/bench_model.py --device cuda --preset vit-b-32 --batch-size 256 --compile
    python bench/bench_model.py --device cuda ... --compile --compile-mode reduce-overhead

`open_clip` is a benchmark-only dependency (requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cliptune.config import ModelConfig, load_config, model_preset  # noqa: E402
from cliptune.loss import ClipLoss  # noqa: E402
from cliptune.model import CLIP  # noqa: E402
from cliptune.model.clip import SelfAttention  # noqa: E402
from cliptune.runtime import autocast, resolve_precision  # noqa: E402

Step = Callable[[], None]


@dataclass
class Variant:
    name: str
    step: Step
    rates: list[float]  # samples/s, one per repeat
    flops_per_sample: float  # training FLOPs of one sample of this variant (for MFU)


def openclip_model(config: ModelConfig) -> torch.nn.Module:
    """OpenCLIP's CLIP with the same widths, depths, heads, patch, sizes and vocab."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(
        layers=config.vision_layers,
        width=config.vision_width,
        head_width=config.vision_width // config.vision_heads,
        mlp_ratio=config.mlp_ratio,
        patch_size=config.patch_size,
        image_size=config.image_size,
        patch_dropout=config.patch_dropout,
    )
    text = CLIPTextCfg(
        context_length=config.context_length,
        vocab_size=config.vocab_size,
        width=config.text_width,
        heads=config.text_heads,
        layers=config.text_layers,
        mlp_ratio=config.mlp_ratio,
    )
    return open_clip.CLIP(
        config.embed_dim,
        vision_cfg=vision,
        text_cfg=text,
        quick_gelu=config.activation == "quick_gelu",
    )


def make_batch(
    config: ModelConfig, batch_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and captions `<start> words <end> pad...` of random lengths.

    The end token is the largest id, so OpenCLIP's argmax pooling finds it too.
    """
    gen = torch.Generator().manual_seed(0)
    size = config.image_size
    images = torch.randn(batch_size, 3, size, size, generator=gen)
    end_id = config.vocab_size - 1
    tokens = torch.zeros(batch_size, config.context_length, dtype=torch.long)
    lengths = torch.randint(4, config.context_length + 1, (batch_size,), generator=gen)
    for row, length in enumerate(lengths.tolist()):
        tokens[row, :length] = torch.randint(3, end_id, (length,), generator=gen)
        tokens[row, 0], tokens[row, length - 1] = 1, end_id
    return images.to(device), tokens.to(device)


def training_step(
    model: torch.nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    tokens: torch.Tensor,
    after_step: Callable[[], None],
    precision: str = "bf16",
) -> Step:
    """A closure running one full optimisation step under autocast in `precision`."""

    def step() -> None:
        with autocast(images.device, precision):
            loss = loss_fn(*model(images, tokens))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        after_step()

    return step


def low_precision_attention(attention: SelfAttention, x: torch.Tensor) -> torch.Tensor:
    """SelfAttention.forward without the CPU fp32 upcast: SDPA sees bf16 under autocast."""
    return attention.out_dropout(attention.out_proj(attention.attend(attention.qkv(x))))


def cliptune_step(
    config, images, tokens, compiled: bool = False, fused: bool = True, fp32_attention: bool = True,
    compile_mode: str | None = None, precision: str = "bf16",
) -> Step:
    torch.manual_seed(0)
    model = CLIP(config).train().to(images.device)
    if not fp32_attention:
        for module in model.modules():
            if isinstance(module, SelfAttention):
                module.forward = types.MethodType(low_precision_attention, module)
    # fused=None is torch's default (a per-parameter loop on the CPU), as OpenCLIP gets
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, fused=fused or None)
    forward = torch.compile(model, mode=compile_mode) if compiled else model
    return training_step(forward, ClipLoss(), optimizer, images, tokens, model.clamp_logit_scale,
                         precision)


def openclip_step(config, images, tokens, compiled: bool = False,
                  compile_mode: str | None = None, precision: str = "bf16") -> Step:
    from open_clip.loss import ClipLoss as OpenClipLoss

    torch.manual_seed(0)
    model = openclip_model(config).train().to(images.device)
    # OpenCLIP's own training script leaves AdamW at torch's default implementation.
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)

    def clamp() -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

    forward = torch.compile(model, mode=compile_mode) if compiled else model
    return training_step(forward, OpenClipLoss(), optimizer, images, tokens, clamp, precision)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_flops(device: torch.device, repeats: int = 10,
                      dtype: torch.dtype = torch.bfloat16) -> float:
    """Best observed FLOP/s of a square matmul in `dtype` (bf16, or fp32 for an fp32 step):
    the machine's practical peak.

    8192-sized on a GPU, 2048 on a CPU (the size docs/BENCHMARKS.md's CPU MFU figures used),
    except on a CPU without native bf16 (no AVX512-BF16/AMX: about 1 GFLOP/s, a 2048
    product takes 20 s), which a 512 product shows first and which keeps that size."""
    if device.type == "cuda":
        return _matmul_peak(device, 8192, repeats, dtype)
    small = _matmul_peak(device, 512, 2, dtype)
    return small if small < 20e9 else _matmul_peak(device, 2048, repeats, dtype)


def _matmul_peak(device: torch.device, size: int, repeats: int, dtype: torch.dtype) -> float:
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    a @ b
    best = math.inf
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def time_steps(step: Step, steps: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return time.perf_counter() - start


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
    parser.add_argument("--config", help="the model of this experiment file instead of --preset "
                        "(and its train.batch_size unless --batch-size)")
    parser.add_argument("--batch-size", type=int, help="default: 128, or --config's")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                        help="autocast of the step (auto: bf16 where the device has it, "
                        "else fp32; a CPU without AVX512-BF16/AMX emulates bf16 slowly)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant")
    parser.add_argument("--compile", action="store_true", help="also torch.compile both models")
    parser.add_argument("--compile-mode", help="torch.compile mode of the compiled variants, "
                        "e.g. max-autotune or reduce-overhead (CUDA graphs)")
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="also cliptune with the default (unfused) AdamW, and with bf16 attention",
    )
    parser.add_argument("--patch-dropout", type=float, metavar="P",
                        help="also both models with patch dropout P (model.patch_dropout)")
    parser.add_argument(
        "--profile",
        metavar="VARIANT",
        help="instead of timing, profile --steps steps of one variant and print its top ops",
    )
    return parser.parse_args(argv)


def bench_model(args: argparse.Namespace) -> tuple[ModelConfig, int]:
    """The model config and batch size `args` ask for (`--config` or `--preset`)."""
    if args.config:
        experiment = load_config(args.config)
        return experiment.model, args.batch_size or experiment.train.batch_size
    return model_preset(args.preset), args.batch_size or 128


def flops_per_sample(config: ModelConfig) -> float:
    """Training FLOPs per sample of `config` (under its patch dropout), for MFU."""
    with torch.device("meta"):
        return CLIP(config).flops_per_sample()


def build_variants(args: argparse.Namespace, config: ModelConfig) -> list[Variant]:
    images, tokens = make_batch(config, args.batch_size, torch.device(args.device))
    precision = args.precision  # resolved by `measure`
    steps = {
        "openclip": openclip_step(config, images, tokens, precision=precision),
        "cliptune": cliptune_step(config, images, tokens, precision=precision),
    }
    flops = dict.fromkeys(steps, flops_per_sample(config))
    if args.patch_dropout:
        masked = replace(config, patch_dropout=args.patch_dropout)
        name = f"patch-dropout-{args.patch_dropout:g}"
        steps[f"openclip-{name}"] = openclip_step(masked, images, tokens, precision=precision)
        steps[f"cliptune-{name}"] = cliptune_step(masked, images, tokens, precision=precision)
        flops.update(dict.fromkeys(list(steps)[-2:], flops_per_sample(masked)))
    if args.ablation:
        steps["cliptune-default-adamw"] = cliptune_step(config, images, tokens, fused=False,
                                                        precision=precision)
        steps["cliptune-bf16-attention"] = cliptune_step(
            config, images, tokens, fp32_attention=False, precision=precision
        )
    if args.compile:
        mode = args.compile_mode
        steps["openclip-compiled"] = openclip_step(config, images, tokens, compiled=True,
                                                   compile_mode=mode, precision=precision)
        steps["cliptune-compiled"] = cliptune_step(config, images, tokens, compiled=True,
                                                   compile_mode=mode, precision=precision)
    return [Variant(name, step, [], flops.get(name, flops["cliptune"]))
            for name, step in steps.items()]


def profile_variant(variant: Variant, steps: int, device: torch.device) -> None:
    """Print the ops that take the most self time over `steps` steps."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        time_steps(variant.step, steps, device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=15))


@dataclass
class Measurement:
    """What one timed run measured: each variant's samples/s per repeat, the best bf16
    matmul rate (FLOP/s) and the training FLOPs per sample."""

    variants: list[Variant]
    peak_flops: float
    flops_per_sample: float  # of the model without patch dropout

    def summary(self) -> dict[str, dict[str, float]]:
        """Per variant: median samples/s, its ratio to the first variant's median (OpenCLIP
        eager), the median of per-repeat ratios (robust to load from other processes that
        slows every variant of one repeat alike), and MFU against the measured peak."""
        baseline = self.variants[0].rates
        out = {}
        for variant in self.variants:
            rate = statistics.median(variant.rates)
            out[variant.name] = {
                "samples_per_s": rate,
                "vs_openclip": rate / statistics.median(baseline),
                "paired": statistics.median(
                    r / b for r, b in zip(variant.rates, baseline, strict=True)),
                "mfu": rate * variant.flops_per_sample / self.peak_flops,
            }
        return out


def measure(args: argparse.Namespace) -> Measurement | None:
    """Warm up and time the variants `args` asks for, interleaved, printing as it goes
    (`--profile`: print the profile instead and return None)."""
    config, args.batch_size = bench_model(args)
    config = replace(config, patch_dropout=0.0)  # the base variants; --patch-dropout adds others
    device = torch.device(args.device)
    args.precision = resolve_precision(args.precision, device)
    torch.backends.cuda.matmul.allow_tf32 = True
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"{torch.get_num_threads()} CPU threads")
    print(
        f"torch {torch.__version__}, {where}, {args.precision}, "
        f"model {args.config or args.preset}, "
        f"batch {args.batch_size}, {args.steps} steps x {args.repeats} repeats, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    variants = build_variants(args, config)
    for variant in variants:
        start = time.perf_counter()
        time_steps(variant.step, args.warmup, device)
        print(f"  warmup {variant.name}: {time.perf_counter() - start:.1f} s", flush=True)
    if args.profile:
        by_name = {variant.name: variant for variant in variants}
        if args.profile not in by_name:
            raise SystemExit(f"--profile: choose one of {', '.join(by_name)}")
        profile_variant(by_name[args.profile], args.steps, device)
        return None
    peak = 0.0
    dtype = torch.float32 if args.precision == "fp32" else torch.bfloat16
    for repeat in range(args.repeats):
        peak = max(peak, matmul_peak_flops(device, dtype=dtype))
        for variant in variants:
            variant.rates.append(args.batch_size * args.steps / time_steps(variant.step, args.steps, device))
        row = "  ".join(f"{v.name} {v.rates[-1]:.0f}" for v in variants)
        print(f"  repeat {repeat + 1}: {row} samples/s", flush=True)
    return Measurement(variants, peak, flops_per_sample(config))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = measure(args)
    if result is None:
        return
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print(f"{args.precision} matmul peak (best of {args.repeats}): "
          f"{result.peak_flops / 1e9:.0f} GFLOP/s")
    print(f"training FLOPs per sample: {result.flops_per_sample / 1e9:.3f} GFLOP"
          + (f" ({result.variants[-1].flops_per_sample / 1e9:.3f} with patch dropout "
             f"{args.patch_dropout:g})" if args.patch_dropout else ""))
    print(f"{'variant':<24}{'samples/s':>10}{'vs openclip':>13}{'paired':>9}{'MFU':>8}")
    for name, row in result.summary().items():
        print(f"{name:<24}{row['samples_per_s']:>10.0f}{row['vs_openclip']:>12.2f}x"
              f"{row['paired']:>8.2f}x{row['mfu']:>8.1%}")
    if args.patch_dropout:
        rates = {variant.name: variant.rates for variant in result.variants}
        for model in ("cliptune", "openclip"):
            masked, plain = rates[f"{model}-patch-dropout-{args.patch_dropout:g}"], rates[model]
            paired = statistics.median(m / p for m, p in zip(masked, plain, strict=True))
            print(f"patch dropout {args.patch_dropout:g}, {model}: "
                  f"{statistics.median(masked) / statistics.median(plain):.2f}x the median "
                  f"samples/s, {paired:.2f}x paired (median of per-repeat ratios)")


if __name__ == "__main__":
    main()
