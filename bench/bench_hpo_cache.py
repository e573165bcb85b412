"""One image-cache build per machine: a 2-worker study on a fresh Flickr30k-sized fake.

    python bench/bench_hpo_cache.py                          # 31,783 images, both modes
    python bench/bench_hpo_cache.py --images 2000 --mode drivers   # a small, quick run

A Flickr30k-sized fake in the Kaggle layout (`bench_scale.build_fake`, reused under
`--work`) is the target's data at `--image-size` (224) px; every run starts from an EMPTY
image cache. Modes (each on its own fresh cache):

- `workers`: one `optimize.py --workers 2` (the driver prepares the data once, before
  its workers start);
- `drivers`: two `optimize.py --workers 1` started at the same moment on one study
  (journal storage): both prepare the data at once, the cache's file lock lets one
  build while the other waits for it.

The trials themselves are tiny (tiny preset at patch 32, 1 epoch on 64 images, 32 val
images): the figures are about the data. A thread polls the cache folder every 20 ms
and prints per mode: the number of builds (distinct temporary `.*.tmp.npy` files seen;
the drivers' "image cache built" / "waiting for another process" lines must agree), the
build time (first temporary file to the finished cache), the peak temporary disk (bytes
allocated on disk to temporary files at once) against the finished cache's size, and
the wall time of the whole command. Before the lock and the driver's one decision, N
processes built N pid-named temporary caches at once (about 38 GB for 8 workers).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_scale import build_fake  # noqa: E402

from cliptune.config import RunConfig, apply_overrides, save_config  # noqa: E402

TARGET = [
    "model.preset=tiny", "model.patch_size=32", "data.source=flickr30k",
    "train.epochs=1", "train.batch_size=32", "train.eval_batch_size=32",
    "train.figure_images=0", "train.precision=fp32", "train.device=cpu",
    "data.num_workers=0", "train.save_checkpoints=false",
]
SPACE = {"parameters": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True,
                               "target": "train.lr"}}}


class CacheWatch(threading.Thread):
    """Polls a cache folder: temporary build files seen, their peak disk, the finish time."""

    def __init__(self, folder: Path, interval: float = 0.02):
        super().__init__(daemon=True)
        self.folder, self.interval = folder, interval
        self.partials: set[tuple[int, int]] = set()  # (device, inode) of each temporary file
        self.peak_bytes = 0
        self.first_partial: float | None = None
        self.finished: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            temporary = 0
            for path in self.folder.glob("images/*/.*.tmp.npy"):  # atomic_path temporaries
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                self.partials.add((stat.st_dev, stat.st_ino))
                temporary += stat.st_blocks * 512
                if self.first_partial is None:
                    self.first_partial = time.perf_counter()
            self.peak_bytes = max(self.peak_bytes, temporary)
            if self.finished is None and list(self.folder.glob("images/*/*px-*.json")):
                self.finished = time.perf_counter()
            self.stop.wait(self.interval)

    def cache_bytes(self) -> int:
        return sum(p.stat().st_blocks * 512 for p in self.folder.glob("images/*/*px-*.npy"))


def write_study(root: Path, version_dir: Path, cache: Path, size: int, trials: int) -> list[str]:
    config = apply_overrides(RunConfig(name="target"), TARGET + [f"model.image_size={size}"])
    config.data.data_dir, config.data.cache_dir = str(version_dir), str(cache)
    config.runs_dir, config.checkpoints_dir = str(root / "runs"), str(root / "checkpoints")
    save_config(config, root / "target.yaml")
    (root / "study.yaml").write_text(yaml.safe_dump({
        "target": "target.yaml",
        "fidelity": {"epochs": 1, "max_samples": 64, "max_eval_samples": 32}}))
    (root / "space.yaml").write_text(yaml.safe_dump(SPACE))
    return [sys.executable, str(ROOT / "src" / "optimize.py"), "--study-config",
            str(root / "study.yaml"), "--search-space", str(root / "space.yaml"),
            "--results-dir", str(root / "results"), "--study-name", "cache-bench",
            "--trials", str(trials)]


def run_mode(mode: str, work: Path, version_dir: Path, size: int, trials: int) -> dict:
    root = work / f"study-{mode}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    cache = root / "cache"  # fresh: nothing built yet
    command = write_study(root, version_dir, cache, size, trials)
    commands = ([command + ["--workers", "2"]] if mode == "workers"
                else [command + ["--workers", "1"]] * 2)
    watch = CacheWatch(cache)
    watch.start()
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    processes = [subprocess.Popen(c, cwd=root, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for c in commands]
    outputs = [p.communicate()[0] for p in processes]
    wall = time.perf_counter() - start
    watch.stop.set()
    watch.join()
    for process, output in zip(processes, outputs, strict=True):
        if process.returncode:
            print(output[-3000:])
            raise SystemExit(f"{mode}: optimize.py exited with {process.returncode}")
    text = "\n".join(outputs)
    built = text.count("image cache built")
    waited = text.count("image cache: waiting for another process")
    build_s = (watch.finished - watch.first_partial
               if watch.finished and watch.first_partial else float("nan"))
    result = {"mode": mode, "builds": len(watch.partials), "built_lines": built,
              "waited_lines": waited, "build_s": build_s, "peak_tmp_gb": watch.peak_bytes / 1e9,
              "cache_gb": watch.cache_bytes() / 1e9, "wall_s": wall}
    print(f"{mode}: {result['builds']} cache build(s) seen ({built} 'image cache built' "
          f"line(s), {waited} 'waiting' line(s)); build {build_s:.1f} s; peak temporary disk "
          f"{result['peak_tmp_gb']:.2f} GB for a {result['cache_gb']:.2f} GB cache; command "
          f"{wall:.0f} s wall", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/cliptune-hpo-cache", type=Path,
                        help="where the fake and the studies live")
    parser.add_argument("--images", type=int, default=31783)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--mode", choices=("both", "workers", "drivers"), default="both")
    parser.add_argument("--trials", type=int, default=2, help="trials of the study in all")
    args = parser.parse_args()
    version_dir = build_fake(args.work, args.images)
    load = os.getloadavg()[0]
    modes = ("workers", "drivers") if args.mode == "both" else (args.mode,)
    results = [run_mode(mode, args.work, version_dir, args.image_size, args.trials)
               for mode in modes]
    print(f"{args.images} images at {args.image_size} px, 1-min load average at start "
          f"{load:.1f}")
    if any(r["builds"] != 1 for r in results):
        raise SystemExit("FAIL: the cache was not built exactly once")


if __name__ == "__main__":
    main()
