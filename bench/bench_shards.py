"""Shard decoding speed per CPU core at 224 px, against the image-cache path.

    python bench/bench_shards.py                  # 2,000 Flickr-sized JPEGs in 8 shards
    python bench/bench_shards.py --images 500 --repeats 1

Builds its own fake Flickr30k shards: `--images` photo-like 500x375 JPEGs (about
Flickr30k's file size, from bench_data.photo_like_jpegs) with a caption each, written by
webdataset.ShardWriter in img2dataset's layout. Then, on ONE core (torch at one thread,
`data.num_workers=0`, so everything runs in this process), over one epoch of batches of
128 at 224 px:

1. shards, decode: `ShardLoader` batches (tar read, JPEG decode + resize + crop by the
   recipe of data/preprocess.py, tokenize), augmentation left to the device;
2. shards, decode + augment: the same through `device_batches` on the CPU (random
   resized crop + flip + normalisation, the batched grid_sample of data/augment.py);
3. image cache, read + augment: `TrainLoader` + `device_batches` from the uint8 cache of
   the same JPEGs (decoded once beforehand, not timed).

Prints images/s per core (median of `--repeats` epochs; images per second of this
process's CPU time, so a shared machine's other load does not lower it; the wall-clock
rate beside it) and the cores a GPU training at
`--gpu-rate` images/s (default 5,000) would need to decode for it, with augmentation on the
GPU (1) or on the CPU (2). Everything is written to a temporary folder, deleted at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import webdataset as wds

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_data import photo_like_jpegs  # noqa: E402

from cliptune.data import Split, TrainLoader, device_batches  # noqa: E402
from cliptune.data.image_cache import ImageRows, load_or_build  # noqa: E402
from cliptune.data.shard_loader import ShardLoader  # noqa: E402
from cliptune.data.shards import ShardSplit  # noqa: E402
from cliptune.tokenizer import Tokenizer  # noqa: E402

SIZE = 224
BATCH = 128


def write_shards(folder: Path, names: list[str], out: Path, per_shard: int) -> list[str]:
    """The JPEGs under `folder` as shards of `per_shard` samples; returns the shard paths."""
    out.mkdir()
    with wds.ShardWriter(str(out / "train-%06d.tar"), maxcount=per_shard, verbose=0) as writer:
        for index, name in enumerate(names):
            writer.write({"__key__": f"{index:09d}", "jpg": (folder / name).read_bytes(),
                          "txt": f"a photo with number {index}"})
    return sorted(str(p) for p in out.glob("train-*.tar"))


def timed_epoch(batches, finish=None) -> tuple[float, float, int]:
    """CPU seconds of this process, wall seconds and images of one pass over `batches`."""
    cpu, wall, images = time.process_time(), time.perf_counter(), 0
    for batch in batches:
        pixels = batch[0] if finish is None else finish(batch)
        images += pixels.shape[0]
    return time.process_time() - cpu, time.perf_counter() - wall, images


def rate(runs: list[tuple[float, float, int]], clock: int = 0) -> float:
    """Median images per second of CPU time (clock 0: per core, whatever else the machine
    runs) or of wall time (clock 1)."""
    return statistics.median(run[2] / run[clock] for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="fake Flickr30k images")
    parser.add_argument("--shard-size", type=int, default=250, help="images per shard")
    parser.add_argument("--repeats", type=int, default=3, help="epochs timed per path")
    parser.add_argument("--gpu-rate", type=float, default=5000, help="images/s to feed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        names = photo_like_jpegs(work / "jpegs", args.images)
        urls = write_shards(work / "jpegs", names, work / "shards", args.shard_size)
        mb = sum(Path(u).stat().st_size for u in urls) / 2**20
        print(f"{args.images} JPEGs of 500x375 in {len(urls)} shards ({mb:.0f} MB); batches of "
              f"{BATCH} at {SIZE} px on one core (torch threads 1, no worker processes)")
        tokenizer = Tokenizer.train([f"a photo with number {i}" for i in range(100)], 512, 32)
        split = ShardSplit("train", str(work / "shards"), urls, args.images)

        def shards(augment: bool, epoch: int) -> ShardLoader:
            return ShardLoader(split, tokenizer=tokenizer, image_size=SIZE, batch_size=BATCH,
                               seed=0, epoch=epoch, augment=augment, flip=True,
                               num_workers=0, shuffle_buffer=1000)

        decode = [timed_epoch(shards(False, e)) for e in range(args.repeats)]
        augmented = [timed_epoch(device_batches(shards(True, e), "cpu"), lambda b: b[0])
                     for e in range(args.repeats)]

        cache = load_or_build(work / "jpegs", names, SIZE, work / "cache", slot="bench")
        tokens = tokenizer.encode([f"a photo with number {i}" for i in range(args.images)])
        train = Split("train", names, ImageRows(cache.path), [""] * args.images,
                      torch.arange(args.images).numpy(), tokens)
        cached = [timed_epoch(device_batches(
            TrainLoader(train, batch_size=BATCH, seed=0, epoch=e, augment=True, flip=True),
            "cpu"), lambda b: b[0]) for e in range(args.repeats)]

    rows = [("shards: decode (augment on the GPU)", decode),
            ("shards: decode + augment on the CPU", augmented),
            ("image cache: read + augment on the CPU", cached)]
    print("  (per core: images per CPU-second of this process; wall: per elapsed second)")
    for label, runs in rows:
        print(f"  {label:40s} {rate(runs):7.0f} images/s per core  (wall {rate(runs, 1):.0f})")
    rows = [(label, rate(runs)) for label, runs in rows]
    for label, value in rows[:2]:
        print(f"  cores to feed {args.gpu_rate:.0f} images/s, {label[8:]}: "
              f"{args.gpu_rate / value:.1f}")


if __name__ == "__main__":
    main()
