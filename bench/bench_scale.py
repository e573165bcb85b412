"""Flickr30k at full scale: prepare time, training-process memory, input-pipeline speed.

    python bench/bench_scale.py                       # CPU: everything below but the GPU part
    python bench/bench_scale.py --device cuda         # GPU: data-fed vs synthetic samples/s
    python bench/bench_scale.py --images 2000 --device cpu --model tiny --batch-size 64 \\
        --steps 5 --skip-rss                          # a quick smoke check of both parts

A Flickr30k-sized fake in the Kaggle layout is built once under `--work` (default
/tmp/cliptune-flickr30k-scale, reused by later runs): `--images` 500x375 JPEGs (hard links
to 64 distinct photo-like files, so building takes seconds; each is still decoded), 5
captions each in `results.csv` with the malformed row, the duplicate csv and the nested
duplicate image folder. Then, at `--image-size` (224):

1. prepare: `prepare_data` with a cold image cache (parse, hash, decode, BPE at the
   ViT-B/32 vocabulary, tokenize), then warm. Target: cold <= 3 min on 2 cores.
2. memory: peak RSS of `src/main.py` training the tiny preset (patch 32) for one epoch
   at 224 px, evaluation included. Target: <= 2 GB. (`--skip-rss` leaves it out.)
3. input pipeline: images/s of reading + random resized crop + flip + normalisation,
   batch `--batch-size`: the per-image torchvision loop this project used before, and
   `device_batches` (one batched op), on the same batches. Target: >= 3x.
4. one training step of `--model` (bf16 autocast) on the CPU, to show it runs.
With `--device cuda` instead: samples/s of `--steps` training steps of `--model` fed by
`device_batches` from the fake, against the same model fed one synthetic batch already on
the GPU. Target: >= 95%.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_data import photo_like_jpegs  # noqa: E402

from cliptune.config import DataConfig, TrainConfig, model_preset  # noqa: E402
from cliptune.data import TrainLoader, device_batches, prepare_data  # noqa: E402
from cliptune.data.augment import augment_images  # noqa: E402
from cliptune.data.preprocess import CLIP_MEAN, CLIP_STD, normalize_images  # noqa: E402
from cliptune.loss import ClipLoss  # noqa: E402
from cliptune.model import CLIP  # noqa: E402
from cliptune.optim import build_optimizer  # noqa: E402

MALFORMED_IMAGE = "2199200615.jpg"
DISTINCT = 64


def _captions(rng: np.random.Generator, n: int) -> list[str]:
    """`n` tokenized-looking captions over a 4,000-word Zipf vocabulary."""
    syllables = ["ba", "ko", "ri", "ta", "me", "su", "lo", "ne", "di", "ga", "pu", "vi", "ze", "ha"]
    words = ["".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(4000)]
    ranks = np.minimum(rng.zipf(1.3, size=(n, 16)) - 1, len(words) - 1)
    lengths = rng.integers(6, 17, size=n)
    return [" ".join(words[r] for r in row[:k]) + " ." for row, k in zip(ranks, lengths, strict=True)]


def build_fake(work: Path, n_images: int) -> Path:
    """The Kaggle layout of Flickr30k with `n_images` images (reused when complete)."""
    version_dir = work / "kagglehub" / "datasets" / "hsankesara" / "flickr-image-dataset" / "versions" / "1"
    done = work / f"fake-{n_images}.complete"
    if done.is_file():
        return version_dir
    start = time.perf_counter()
    shutil.rmtree(work / "kagglehub", ignore_errors=True)
    shutil.rmtree(work / "distinct", ignore_errors=True)
    distinct = [work / "distinct" / name for name in photo_like_jpegs(work / "distinct", DISTINCT)]
    outer = version_dir / "flickr30k_images"
    image_dir = outer / "flickr30k_images"
    nested = image_dir / "flickr30k_images"  # the zip's duplicate folder
    nested.mkdir(parents=True)
    names = [f"{1000092795 + 7919 * i}.jpg" for i in range(n_images - 1)] + [MALFORMED_IMAGE]
    for i, name in enumerate(names):
        os.link(distinct[i % DISTINCT], image_dir / name)
        os.link(distinct[i % DISTINCT], nested / name)
    captions = iter(_captions(np.random.default_rng(0), 5 * n_images))
    lines = ["image_name| comment_number| comment"]
    for name in names:
        for k in range(5):
            caption = next(captions)
            malformed = name == MALFORMED_IMAGE and k == 4
            lines.append(f"{name}| {k}   {caption}" if malformed else f"{name}| {k}| {caption}")
    text = "\n".join(lines) + "\n"
    (outer / "results.csv").write_text(text, encoding="utf-8")
    (image_dir / "results.csv").write_text(text, encoding="utf-8")  # the duplicate csv
    (version_dir.parents[1] / "1.complete").touch()
    done.touch()
    print(f"fake Flickr30k: {n_images} JPEGs, {5 * n_images} captions built in "
          f"{time.perf_counter() - start:.1f} s under {work}")
    return version_dir


def data_config(version_dir: Path, work: Path) -> DataConfig:
    """The fake Flickr30k under `version_dir`, its image cache under `work`."""
    return DataConfig(source="flickr30k", data_dir=str(version_dir), cache_dir=str(work / "cache"))


def bench_prepare(version_dir: Path, work: Path, size: int, model: str):
    m = model_preset(model)
    shutil.rmtree(work / "cache" / "images", ignore_errors=True)
    timings = []
    for _ in range(2):
        start = time.perf_counter()
        data = prepare_data(data_config(version_dir, work), image_size=size,
                            vocab_size=m.vocab_size, context_length=m.context_length)
        timings.append(time.perf_counter() - start)
    print(f"prepare at {size} px (vocab {m.vocab_size}): cold {timings[0]:.1f} s "
          f"(target <= 180 s), warm {timings[1]:.1f} s (image cache reused)")
    return data


def bench_rss(version_dir: Path, work: Path, size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, str(ROOT / "src" / "main.py"), "--config",
                   str(ROOT / "experiments" / "default.yaml"), "--no-resume",
                   "--data", "flickr30k", "--data-dir", str(version_dir),
                   "--cache-dir", str(work / "cache"), "--image-size", str(size), "--epochs", "1",
                   "--run-name", "rss", "--set", "model.patch_size=32"]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=tmp, capture_output=True, text=True)
        if done.returncode:
            print(done.stdout[-2000:], done.stderr[-2000:])
            raise SystemExit("the training process failed")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KB -> GB
    print(f"memory: src/main.py, tiny preset (patch 32), one epoch at {size} px with "
          f"evaluation: peak RSS {peak:.2f} GB (target <= 2 GB), {time.perf_counter() - start:.0f} s")


def per_image_loop(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """The pipeline before issue 8: resized_crop image by image, flips, then normalisation
    with constants built per call."""
    n, _, height, width = images.shape
    out = torch.empty((n, 3, height, width), dtype=images.dtype)
    for k, (top, left, h, w) in enumerate(boxes.tolist()):
        out[k] = TF.resized_crop(images[k], top, left, h, w, [height, width], antialias=True)
    mirrored = torch.from_numpy(np.flatnonzero(flips.numpy()))
    out.index_copy_(0, mirrored, TF.horizontal_flip(out.index_select(0, mirrored)))
    mean = torch.tensor(CLIP_MEAN, device=out.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=out.device).view(1, 3, 1, 1)
    return (out.float() / 255.0 - mean) / std


def _timed(run, *args):
    """(result of `run(*args)`, (wall seconds, CPU seconds of this process))."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = run(*args)
    return result, (time.perf_counter() - wall, time.process_time() - cpu)


def bench_pipeline(data, batch_size: int, batches: int) -> None:
    """Read a batch (timed once, its rows already in the page cache: the same for both
    paths), then crop + flip + normalise it
    with the old per-image loop and with the batched op, interleaved so that a busy machine
    slows both alike. One untimed warm-up batch. Wall-clock images/s, and images per
    CPU-second of this process (steadier when other processes share the cores)."""
    loader = TrainLoader(data.train, batch_size=batch_size, seed=0, epoch=1, augment=True,
                         flip=True, crop_scale=data.crop_scale)
    batches = min(batches, len(loader) - 1)
    reads, old, new = [], [], []
    for index in range(batches + 1):
        loader.batch(index)  # rows into the page cache, as from the second epoch on
        batch, read = _timed(loader.batch, index)  # read + crop boxes and flips
        _, before = _timed(per_image_loop, batch.images, batch.boxes, batch.flips)
        _, now = _timed(augment_images, batch.images, batch.boxes, batch.flips, normalize_images)
        if index > 0:
            reads.append(read)
            old.append(before)
            new.append(now)

    def rate(*parts: list) -> tuple[float, float]:
        return tuple(batch_size / sum(statistics.median(t[k] for t in part) for part in parts)
                     for k in (0, 1))

    (old_wall, old_cpu), (new_wall, new_cpu) = rate(reads, old), rate(reads, new)
    (old_aug, _), (new_aug, _) = rate(old), rate(new)
    print(f"input pipeline, {data.image_size} px, batch {batch_size}, medians of {batches} "
          f"batches, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}: "
          f"read {statistics.median(t[0] for t in reads) * 1000:.0f} ms; crop + flip + "
          f"normalise: per-image loop {old_aug:.0f} images/s, batched {new_aug:.0f} images/s "
          f"({new_aug / old_aug:.1f}x); with the read: per-image {old_wall:.0f} images/s "
          f"({old_cpu:.0f} per CPU-s), batched {new_wall:.0f} images/s ({new_cpu:.0f} per "
          f"CPU-s): {new_wall / old_wall:.1f}x wall, {new_cpu / old_cpu:.1f}x CPU (target >= 3x)")


def _model(name: str, data, device: torch.device, compile_model: bool = False):
    config = model_preset(name)
    config.image_size = data.image_size  # vocabulary and context: the preset's, as prepared
    torch.manual_seed(0)
    model = CLIP(config).to(device)
    optimizer = build_optimizer(model, TrainConfig())
    return (torch.compile(model) if compile_model else model), ClipLoss(), optimizer


def _step(model, loss_fn, optimizer, images, tokens, device: torch.device, precision: str):
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        image_emb, text_emb, scale = model(images, tokens)
        loss = loss_fn(image_emb, text_emb, scale)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def bench_cpu_step(data, name: str, batch_size: int) -> None:
    device = torch.device("cpu")
    model, loss_fn, optimizer = _model(name, data, device)
    loader = TrainLoader(data.train, batch_size=batch_size, seed=0, epoch=1, augment=True, flip=True)
    images, tokens = next(device_batches(loader, device))
    timings = []
    for _ in range(3):  # the first step creates the kernels
        start = time.perf_counter()
        loss = _step(model, loss_fn, optimizer, images, tokens, device, "bf16")
        timings.append(time.perf_counter() - start)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"training step on the CPU: {name} ({params:.0f}M parameters), {data.image_size} px, "
          f"batch {batch_size}, bf16: loss {loss.item():.3f}, {min(timings[1:]):.1f} s per step")


def _rate(run, steps: int, batch_size: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run(steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch_size / (time.perf_counter() - start)


def bench_feed(data, name: str, batch_size: int, steps: int, warmup: int, device: torch.device,
               precision: str, workers: str, compile_model: bool = False) -> tuple[float, float]:
    """Samples/s of training steps fed one synthetic batch already on the device, and fed
    by `device_batches` from the data (printed, and returned in that order)."""
    model, loss_fn, optimizer = _model(name, data, device, compile_model)
    loader = TrainLoader(data.train, batch_size=batch_size, seed=0, epoch=1, augment=True,
                         flip=True, num_workers=workers, pin_memory=device.type == "cuda",
                         crop_scale=data.crop_scale)
    if len(loader) < warmup + steps:
        raise SystemExit(f"{len(loader)} batches per epoch: lower --steps or --batch-size")
    feed = device_batches(loader, device)
    images, tokens = next(feed)
    synthetic = (torch.randn_like(images), tokens.clone())

    def run_synthetic(n: int) -> None:
        for _ in range(n):
            _step(model, loss_fn, optimizer, *synthetic, device, precision)

    def run_fed(n: int) -> None:
        for _ in range(n):
            _step(model, loss_fn, optimizer, *next(feed), device, precision)

    run_synthetic(warmup)
    synthetic_rate = _rate(run_synthetic, steps, batch_size, device)
    run_fed(warmup - 1)
    fed_rate = _rate(run_fed, steps, batch_size, device)
    compiled = ", compiled" if compile_model else ""
    print(f"training {name}{compiled} on {device} ({precision}), {data.image_size} px, batch {batch_size}, "
          f"{steps} steps after {warmup} warm-up, {loader.num_workers} reader processes: "
          f"synthetic {synthetic_rate:.0f} samples/s, fed from the fake Flickr30k "
          f"{fed_rate:.0f} samples/s = {fed_rate / synthetic_rate:.1%} (target >= 95%)")
    return synthetic_rate, fed_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/cliptune-flickr30k-scale", type=Path)
    parser.add_argument("--images", type=int, default=31783)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="vit-b-32", help="preset for the training steps")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50, help="timed steps (--device cuda)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batches", type=int, default=10, help="batches timed per pipeline")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--num-workers", default="auto")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--parts", default="prepare,rss,pipeline,step",
                        help="CPU parts to run (prepare is warm when left out)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (GPU part)")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{len(os.sched_getaffinity(0))} cores, device {device}")
    args.work.mkdir(parents=True, exist_ok=True)
    version_dir = build_fake(args.work, args.images)
    workers = args.num_workers if args.num_workers == "auto" else int(args.num_workers)
    parts = set(args.parts.split(","))
    if device.type == "cpu":
        if "prepare" in parts:
            data = bench_prepare(version_dir, args.work, args.image_size, args.model)
        else:
            m = model_preset(args.model)
            data = prepare_data(data_config(version_dir, args.work), image_size=args.image_size,
                                vocab_size=m.vocab_size, context_length=m.context_length)
        if "rss" in parts and not args.skip_rss:
            bench_rss(version_dir, args.work, args.image_size)
        if "pipeline" in parts:
            threads = torch.get_num_threads()
            for count in dict.fromkeys((threads, 1)):
                torch.set_num_threads(count)
                bench_pipeline(data, args.batch_size, args.batches)
            torch.set_num_threads(threads)
        if "step" in parts:
            bench_cpu_step(data, args.model, batch_size=16)
        if args.images <= 5000:  # the smoke check of the GPU part
            bench_feed(data, args.model, args.batch_size, args.steps, args.warmup, device,
                       args.precision, workers)
    else:
        m = model_preset(args.model)
        data = prepare_data(data_config(version_dir, args.work), image_size=args.image_size,
                            vocab_size=m.vocab_size, context_length=m.context_length)
        bench_feed(data, args.model, args.batch_size, args.steps, args.warmup, device,
                   args.precision, workers, args.compile)


if __name__ == "__main__":
    main()
