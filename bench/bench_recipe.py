"""Recipe levers against the default run: test retrieval and wall time over seeds.

Each variant is `python src/main.py` (experiments/default.yaml on Shapes unless
`--config`) with its own `--set` overrides; every (variant, seed) run is a process of its
own, run in the order seed 0 of every variant, then seed 1, ..., so a machine whose load
drifts touches each variant alike. A run whose metrics.json exists is not run again: an
interrupted benchmark continues where it stopped. The table gives each variant's test
rsum and image->text R@1 as mean +- std over the seeds, its median wall time, and the
difference of means against the first variant with twice their pooled std (a difference
within that is noise at this many seeds).

    python bench/bench_recipe.py --variant 'infonce:' --variant 'siglip:train.loss=siglip' \\
        --seeds 0,1,2 --workdir /tmp/bench-recipe
    python bench/bench_recipe.py --variant 'b32:train.batch_size=32' \\
        --variant 'b32-siglip:train.batch_size=32,train.loss=siglip'
    python bench/bench_recipe.py --quick ...            # a smoke run: 1 epoch, 120 images
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["data.shapes_images=120", "data.val_size=20", "data.test_size=20", "train.epochs=1",
         "train.batch_size=16", "train.figure_images=0"]


def parse_variant(text: str) -> tuple[str, list[str]]:
    """`NAME:KEY=V,KEY=V` -> (NAME, ["KEY=V", ...]); `NAME:` is the config as it is."""
    name, sep, overrides = text.partition(":")
    if not sep or not name:
        raise SystemExit(f"--variant {text!r}: expected NAME:KEY=VALUE,KEY=VALUE (or NAME:)")
    return name, [item.strip() for item in overrides.split(",") if item.strip()]


def run_one(args, name: str, overrides: list[str], seed: int) -> dict:
    """One `main.py` run (skipped when its result exists); returns its record."""
    run = f"{name}-seed{seed}"
    result = args.workdir / "results" / f"{run}.json"
    if result.is_file():
        return json.loads(result.read_text())
    sets = [*(QUICK if args.quick else []), *overrides]
    command = [sys.executable, str(ROOT / "src" / "main.py"), "--config", str(args.config),
               "--data", "shapes", "--run-name", run, "--seed", str(seed), "--no-resume",
               "--device", args.device, *[flag for item in sets for flag in ("--set", item)]]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=args.workdir, capture_output=True, text=True,
                          env={**os.environ, "CLIPTUNE_CACHE": str(args.workdir / "cache")})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{run} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((args.workdir / "checkpoints" / run / "metrics.json").read_text())
    record = {"variant": name, "seed": seed, "overrides": overrides, "wall_s": wall,
              "test": metrics["test"], "best_epoch": metrics["best_epoch"]}
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps(record, indent=2))
    print(f"{run}: test rsum {metrics['test']['rsum']:.1f}, i2t R@1 "
          f"{metrics['test']['i2t_r1']:.3f}, {wall:.0f} s", flush=True)
    return record


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(records: list[dict], names: list[str]) -> str:
    """Markdown table: per variant mean +- std of test rsum and i2t R@1, median wall time,
    and the difference of rsum means against the first variant."""
    lines = ["| variant | seeds | test rsum | test i2t R@1 | wall s (median) | "
             "rsum vs first | 2 x pooled std |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    first = [r["test"]["rsum"] for r in records if r["variant"] == names[0]]
    for name in names:
        mine = [r for r in records if r["variant"] == name]
        rsum = [r["test"]["rsum"] for r in mine]
        r1 = [r["test"]["i2t_r1"] for r in mine]
        (m, s), (m1, s1) = mean_std(rsum), mean_std(r1)
        pooled = ((mean_std(first)[1] ** 2 + s ** 2) / 2) ** 0.5
        diff = m - statistics.mean(first)
        lines.append(f"| {name} | {len(mine)} | {m:.1f} +- {s:.1f} | {m1:.3f} +- {s1:.3f} | "
                     f"{statistics.median(r['wall_s'] for r in mine):.0f} | {diff:+.1f} | "
                     f"{2 * pooled:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True, metavar="NAME:KEY=V,...",
                        help="a variant (repeatable); the first is the reference")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "default.yaml")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cliptune-bench-recipe"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="1 epoch on 120 images (smoke)")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.config = args.config.resolve()
    variants = [parse_variant(text) for text in args.variant]
    seeds = [int(s) for s in args.seeds.split(",")]
    records = [run_one(args, name, overrides, seed)
               for seed in seeds for name, overrides in variants]
    text = table(records, [name for name, _ in variants])
    (args.workdir / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
