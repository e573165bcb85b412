"""Data-layer speed: Shapes generation, image-cache build, per-batch loading vs a training step.

    python bench/bench_data.py                    # 300 Flickr-sized JPEGs, 6,000 Shapes images
    python bench/bench_data.py --jpegs 1000 --batches 30

1. Shapes: time to generate the default 6,000-image set (target: < 30 s).
2. Image cache: build from `--jpegs` generated 500x375 JPEGs (photo-like: smooth colour
   fields plus grain, about Flickr30k's file size) at 64 and 224 px with the process pool,
   and the reuse check (content hashing only). Target: >= 400 images/s at 64 px.
3. Loading: median time per training batch of `device_batches` on the CPU (batch 128,
   64 px: read, random resized crop of 50-100% of the area and flips as for Flickr30k,
   normalisation) from the Shapes train split, against one real training step of the
   tiny preset (bf16 autocast, forward + loss + backward + AdamW). Target: loading < 5%
   of a step.

Everything is written to a temporary folder that is deleted at the end.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cliptune.config import DataConfig, TrainConfig, model_preset  # noqa: E402
from cliptune.data import TrainLoader, device_batches, prepare_data  # noqa: E402
from cliptune.data.image_cache import load_or_build  # noqa: E402
from cliptune.data.shapes import ensure_shapes  # noqa: E402


def photo_like_jpegs(folder: Path, count: int, seed: int = 0) -> list[str]:
    """`count` 500x375 JPEGs with smooth colour fields plus grain (about 100 KB each)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    names = []
    for index in range(count):
        coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((500, 375), Image.Resampling.BICUBIC))
        grain = rng.normal(0, 14, size=field.shape)
        pixels = np.clip(field + grain, 0, 255).astype(np.uint8)
        name = f"{index:06d}.jpg"
        Image.fromarray(pixels).save(folder / name, quality=90)
        names.append(name)
    return names


def bench_shapes(cache: Path, n_images: int) -> None:
    start = time.perf_counter()
    ensure_shapes(cache, n_images)
    seconds = time.perf_counter() - start
    print(f"shapes: generated {n_images} images in {seconds:.1f} s ({n_images / seconds:.0f} images/s)")


def bench_cache(work: Path, count: int) -> None:
    folder = work / "jpegs"
    names = photo_like_jpegs(folder, count)
    mean_kb = np.mean([(folder / n).stat().st_size for n in names]) / 1024
    print(f"image cache: {count} JPEGs of 500x375, {mean_kb:.0f} KB on average")
    for size in (64, 224):
        start = time.perf_counter()
        load_or_build(folder, names, size, work / "cache", slot="bench")
        build = time.perf_counter() - start
        start = time.perf_counter()
        reused = load_or_build(folder, names, size, work / "cache", slot="bench")
        check = time.perf_counter() - start
        assert reused.reused
        print(f"  {size:>3} px: build {count / build:.0f} images/s ({build:.2f} s); "
              f"reuse check {count / check:.0f} images/s ({check:.3f} s)")


def time_loading(loader: TrainLoader, batches: int) -> list[float]:
    """Seconds per batch of `device_batches` on the CPU: read, augment, normalise."""
    timings = []
    feed = device_batches(loader, torch.device("cpu"))
    for _ in range(min(batches, len(loader))):
        start = time.perf_counter()
        next(feed)
        timings.append(time.perf_counter() - start)
    return timings


def time_training_step(data, batch_size: int, steps: int) -> float | None:
    try:
        from cliptune.loss import ClipLoss
        from cliptune.model import CLIP
        from cliptune.optim import build_optimizer
    except ImportError:
        return None
    model = CLIP(model_preset("tiny"))
    loss_fn = ClipLoss()
    optimizer = build_optimizer(model, TrainConfig())
    loader = TrainLoader(data.train, batch_size=batch_size, seed=0, epoch=1, augment=True,
                         flip=data.flip_safe)
    timings = []
    batches = list(itertools.islice(device_batches(loader, torch.device("cpu")), steps + 2))
    for index, (images, tokens) in enumerate(batches):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            image_emb, text_emb, scale = model(images, tokens)
            loss = loss_fn(image_emb, text_emb, scale)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= 2:  # the first steps warm up allocators and kernels
            timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def bench_loading(cache: Path, n_images: int, batches: int, steps: int) -> None:
    config = DataConfig(source="shapes", shapes_images=n_images, cache_dir=str(cache))
    data = prepare_data(config, image_size=64, vocab_size=4096, context_length=32,
                        quiet=True)
    rows = {}
    for name, augment in (("with augmentation", True), ("without augmentation", False)):
        # Flickr30k's augmentation: crops keeping 50-100% of the area, and flips.
        loader = TrainLoader(data.train, batch_size=128, seed=0, epoch=1, augment=augment,
                             flip=augment, crop_scale=(0.5, 1.0))
        rows[name] = statistics.median(time_loading(loader, batches))
        print(f"loading: batch 128, 64 px, {name}: {rows[name] * 1000:.1f} ms per batch")
    step = time_training_step(data, 128, steps)
    if step is None:
        print("training step: cliptune.model not available")
        return
    share = rows["with augmentation"] / step
    print(f"training step (tiny preset, batch 128, bf16): {step * 1000:.0f} ms; "
          f"loading with augmentation = {share:.1%} of a step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jpegs", type=int, default=300, help="Flickr-sized JPEGs to cache")
    parser.add_argument("--shapes", type=int, default=6000, help="Shapes images to generate")
    parser.add_argument("--batches", type=int, default=20, help="batches timed for loading")
    parser.add_argument("--steps", type=int, default=5, help="training steps timed")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bench_shapes(work / "cache", args.shapes)
        bench_cache(work, args.jpegs)
        bench_loading(work / "cache", args.shapes, args.batches, args.steps)


if __name__ == "__main__":
    main()
