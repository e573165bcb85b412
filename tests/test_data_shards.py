"""webdataset shards: make_shards round trip, training from shards against the image cache,
resume mid-epoch (a real SIGKILL), 2 ranks x 2 workers, broken samples, truncated shards.

Every shard here is written by the `webdataset` library itself (`ShardWriter`, through
make_shards or directly) from the built-in Shapes set.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from trainer_helpers import TINY, tiny_config, weights

from cliptune.checkpoint import load_checkpoint
from cliptune.cli import make_shards
from cliptune.config import DataConfig, RunConfig, apply_overrides
from cliptune.data import prepare_data, shapes
from cliptune.data.preprocess import decode_image, decode_jpegs_cuda
from cliptune.data.shard_loader import ShardLoader
from cliptune.data.shards import resolve
from cliptune.data.splits import split_images
from cliptune.errors import ConfigError, DataError
from cliptune.evaluation import embed_split, embedding_metrics
from cliptune.model import CLIP
from cliptune.tokenizer import Tokenizer
from cliptune.trainer import Trainer

REPO = Path(__file__).resolve().parent.parent
SHAPES = ["--set", "data.shapes_images=80", "--set", "data.val_size=16", "--set",
          "data.test_size=16"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread (and so in the killed subprocess): on a loaded 2-core machine two
    threads made each tiny step ~100x slower (spinning thread pools)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write(cache_dir: Path, out: Path, *args: str) -> Path:
    make_shards.run(["--data", "shapes", "--cache-dir", str(cache_dir), "--out", str(out),
                     *args])
    return out


@pytest.fixture(scope="module")
def shard_dir(cache_dir, tmp_path_factory) -> Path:
    """Shapes (80 images: 48 train in 8 shards of 6, 16 val, 16 test) as shards."""
    return write(cache_dir, tmp_path_factory.mktemp("shards") / "shapes", *SHAPES,
                 "--shard-size", "6")


def shard_data_config(cache_dir: Path, shard_dir: Path, **values) -> DataConfig:
    return DataConfig(source="webdataset", data_dir=str(shard_dir), cache_dir=str(cache_dir),
                      **values)


def digest(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def loader(split, tokenizer, **kw) -> ShardLoader:
    options = dict(image_size=32, batch_size=8, seed=0, epoch=1, augment=False, flip=False,
                   num_workers=0, shuffle_buffer=16)
    return ShardLoader(split, tokenizer=tokenizer, **{**options, **kw})


def batch_digests(batches) -> list[str]:
    return [digest(image.permute(1, 2, 0).numpy()) for batch in batches for image in batch.images]


# ---------------------------------------------------------------- make_shards


def test_make_shards_round_trip(cache_dir, shard_dir):
    """Read back by webdataset itself: every image's own bytes, its captions and its split,
    the same split training on the source computes, and the manifest's counts."""
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    config = DataConfig(source="shapes", shapes_images=80, val_size=16, test_size=16)
    catalog = shapes.load(cache_dir, 80)
    indices = split_images(catalog.image_names, config, source="shapes")
    assert manifest["source"] == "shapes" and manifest["flip_safe"] is False
    assert manifest["crop_scale"] == list(catalog.crop_scale)
    for split, info in manifest["splits"].items():
        names, samples = [], 0
        urls = wds.shardlists.expand_urls(str(shard_dir / info["pattern"]))
        assert len(urls) == info["shards"] and sum(info["shard_samples"]) == info["samples"]
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
            meta = json.loads(sample["json"])
            assert set(sample) >= {"__key__", "jpg", "txt", "json"}
            assert meta["split"] == split and meta["key"] == sample["__key__"]
            image = catalog.image_names.index(meta["image"])
            expected = [c for c, i in zip(catalog.captions, catalog.caption_image, strict=True)
                        if i == image]
            assert meta["captions"] == expected
            assert sample["txt"].decode() == expected[0]
            assert sample["jpg"] == (catalog.root / meta["image"]).read_bytes()
            names.append(meta["image"])
            samples += 1
        assert samples == info["samples"]
        assert sorted(names) == [catalog.image_names[i] for i in indices[split]]


def test_make_shards_refuses_bad_input(cache_dir, shard_dir, tmp_path):
    with pytest.raises(DataError, match="--force"):
        write(cache_dir, shard_dir, *SHAPES)
    with pytest.raises(DataError, match="not shards"):
        make_shards.run(["--data", "webdataset", "--data-dir", str(shard_dir),
                         "--out", str(tmp_path / "x")])
    with pytest.raises(DataError, match="--shard-size"):
        write(cache_dir, tmp_path / "y", *SHAPES, "--shard-size", "0")
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="is a file"):
        write(cache_dir, tmp_path / "file", *SHAPES)


def test_shard_settings_errors(cache_dir, shard_dir, tmp_path):
    with pytest.raises(DataError, match="--data-dir"):
        resolve(DataConfig(source="webdataset"))
    with pytest.raises(DataError, match="train-000008.tar does not exist"):
        resolve(DataConfig(source="webdataset",
                           data_dir=str(shard_dir / "train-{000000..000009}.tar")))
    lone = tmp_path / "lone"
    lone.mkdir()
    for name in ("train-000000.tar", "train-000001.tar"):
        shutil.copy(shard_dir / name, lone / name)
    pattern = str(lone / "train-{000000..000001}.tar")
    with pytest.raises(DataError, match="data.val_shards"):
        resolve(DataConfig(source="webdataset", data_dir=pattern, epoch_samples=12))
    capped = resolve(DataConfig(source="webdataset", data_dir=str(shard_dir), max_samples=20))
    assert capped.train.epoch_samples == 20  # HPO's quick-run cap caps the epoch
    with pytest.raises(DataError, match="data.epoch_samples"):
        resolve(DataConfig(source="webdataset", data_dir=pattern,
                           val_shards=str(shard_dir / "val-000000.tar"),
                           test_shards=str(shard_dir / "test-000000.tar")))


# ---------------------------------------------------------------- the same pixels


def test_shards_give_the_image_cache_pixels(cache_dir, shard_dir, data):
    """Validation from shards is the cache's validation (same images, pixels, captions, and
    the same metrics for one model), and training images decoded in the shard workers are
    exactly the cache's training images: every one, once."""
    config = DataConfig(source="auto", data_dir=str(shard_dir), cache_dir=str(cache_dir))
    sharded = prepare_data(config, image_size=32, vocab_size=128, context_length=16,
                           tokenizer=data.tokenizer, quiet=True)
    assert sharded.source == "webdataset"  # auto: a folder with a shard manifest
    manifest_names = {}
    for sample in wds.WebDataset(str(shard_dir / "val-{000000..000002}.tar"), shardshuffle=False):
        manifest_names[f"val/{sample['__key__']}.jpg"] = json.loads(sample["json"])["image"]
    order = [data.val.image_names.index(manifest_names[n]) for n in sharded.val.image_names]
    np.testing.assert_array_equal(sharded.val.images[np.arange(len(order))],
                                  data.val.images[np.array(order)])
    assert sorted(sharded.val.captions) == sorted(data.val.captions)

    torch.manual_seed(0)
    model = CLIP(apply_overrides(RunConfig(), TINY).model).eval()
    scale = model.logit_scale.detach()
    a = embedding_metrics(*embed_split(model, data.val, batch_size=16, device="cpu",
                                       precision="fp32"), data.val, scale, 16)
    b = embedding_metrics(*embed_split(model, sharded.val, batch_size=16, device="cpu",
                                       precision="fp32"), sharded.val, scale, 16)
    for key in a:
        assert b[key] == pytest.approx(a[key], abs=1e-5), key

    train = {digest(data.train.images[np.array([i])][0]) for i in range(len(data.train))}
    seen = batch_digests(loader(sharded.train, data.tokenizer, num_workers=2))
    assert len(seen) == len(train) == 48 and set(seen) == train


def test_one_epoch_from_shards_matches_the_image_cache(cache_dir, tmp_path_factory, tmp_path):
    """The same tiny model and seed trained one epoch on the same Shapes images, read from
    shards or through the image cache: the orders differ (shard stream vs permutation), so
    the metrics agree within seed noise. Measured here over seeds 0-3 (240 images, 160
    train): val_loss spread 0.019 between seeds on the cache path, largest shards-cache gap
    0.022; val_rsum spread 33 points (40 val images: rsum is mostly noise after one epoch).
    Tolerances: 0.05 on val_loss, 45 on val_rsum."""
    out = write(cache_dir, tmp_path_factory.mktemp("s240") / "s", "--set",
                "data.shapes_images=240", "--set", "data.val_size=40", "--set",
                "data.test_size=40", "--shard-size", "20")
    common = ["data.shapes_images=240", "data.val_size=40", "data.test_size=40",
              "train.epochs=1", "train.lr=2e-3", "train.save_checkpoints=false"]
    results = {}
    for source, extra in (("cache", []), ("shards", ["data.source=webdataset",
                                                      f"data.data_dir={out}",
                                                      "data.num_workers=1"])):
        config = tiny_config(tmp_path / source, cache_dir, *common, *extra)
        trainer = Trainer(config, show_progress=False)
        trainer.fit()
        results[source] = trainer.history[-1]
    assert results["shards"]["train_skipped"] == 0
    assert results["shards"]["val_loss"] == pytest.approx(results["cache"]["val_loss"], abs=0.05)
    assert abs(results["shards"]["val_rsum"] - results["cache"]["val_rsum"]) <= 45


# ---------------------------------------------------------------- ranks and workers


def test_two_ranks_two_workers_read_disjoint_samples_covering_the_epoch(
        cache_dir, shard_dir, data, monkeypatch):
    """The epoch (48 samples = the training shards' content, 6 global batches of 8) read as
    rank 0 and rank 1 of 2, each with 2 DataLoader workers (webdataset's split_by_node reads
    the rank from RANK/WORLD_SIZE as torchrun sets them): disjoint, together every sample."""
    split = resolve(shard_data_config(cache_dir, shard_dir)).train
    monkeypatch.setenv("WORLD_SIZE", "2")
    per_rank = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        batches = list(loader(split, data.tokenizer, num_workers=2, rank=rank, world_size=2))
        assert len(batches) == 6 and all(len(b.images) == 4 for b in batches)
        per_rank.append(batch_digests(batches))
    assert not set(per_rank[0]) & set(per_rank[1])
    every = per_rank[0] + per_rank[1]
    assert len(every) == len(set(every)) == 48
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(DataError, match="cannot be split over 2 process"):
        loader(split, data.tokenizer, num_workers=8, rank=0, world_size=2)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    same = batch_digests(loader(split, data.tokenizer, num_workers=2, seed=0))
    again = batch_digests(loader(split, data.tokenizer, num_workers=2, seed=0))
    other = batch_digests(loader(split, data.tokenizer, num_workers=2, seed=1))
    assert same == again and same != other and sorted(same) == sorted(other)


# ---------------------------------------------------------------- broken input


def broken_shards(shard_dir: Path, out: Path) -> tuple[str, int]:
    """10 good samples (from the Shapes shards), 2 corrupt JPEGs, 1 sample without an image
    and 1 without a caption, in 2 shards written by webdataset.ShardWriter."""
    good = list(wds.WebDataset(str(shard_dir / "train-{000000..000001}.tar"),
                               shardshuffle=False))[:10]
    jpg = good[0]["jpg"]
    bad = [{"__key__": "c1", "jpg": b"not a jpeg at all", "txt": "a red circle"},
           {"__key__": "c2", "jpg": jpg[: len(jpg) // 3], "txt": "a cut jpeg"},
           {"__key__": "n1", "txt": "no image here"},
           {"__key__": "n2", "jpg": jpg}]
    samples = [{k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"}
               for s in good] + bad
    order = np.random.default_rng(0).permutation(len(samples))
    out.mkdir()
    with wds.ShardWriter(str(out / "b-%06d.tar"), maxcount=7, verbose=0) as writer:
        for i in order:
            writer.write(samples[i])
    return str(out / "b-{000000..000001}.tar"), 10


def test_broken_samples_are_skipped_and_counted(cache_dir, shard_dir, data, tmp_path, capsys):
    pattern, n_good = broken_shards(shard_dir, tmp_path / "broken")
    config = shard_data_config(cache_dir, pattern, epoch_samples=n_good,
                               val_shards=str(shard_dir / "val-{000000..000002}.tar"),
                               test_shards=str(shard_dir / "test-{000000..000002}.tar"))
    split = resolve(config).train
    stream = loader(split, data.tokenizer, batch_size=5)
    batches = list(stream)
    assert len(batches) == 2 and sum(len(b.images) for b in batches) == n_good
    assert stream.skipped() == (3, 1)  # 2 corrupt + 1 missing image; 1 missing caption

    run = tiny_config(tmp_path, cache_dir, "data.source=webdataset", f"data.data_dir={pattern}",
                      f"data.epoch_samples={n_good}", "train.batch_size=5", "train.epochs=1",
                      f"data.val_shards={config.val_shards}",
                      f"data.test_shards={config.test_shards}", "data.num_workers=1")
    trainer = Trainer(run, show_progress=True, resume=None)
    trainer.fit()
    assert trainer.history[-1]["train_skipped"] == 4
    assert ("epoch 1: skipped 4 broken training samples (3 without a readable image, "
            "1 without a caption)") in capsys.readouterr().out


def truncate(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


def test_truncated_shard_stops_the_run_naming_it(cache_dir, shard_dir, data, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shard_dir, copy)
    victim = copy / "train-000005.tar"
    truncate(victim, victim.stat().st_size // 2)  # mid-member: tar reports the cut
    split = resolve(shard_data_config(cache_dir, copy)).train
    with pytest.raises(DataError, match=r"shard .*train-000005.tar cannot be read"):
        list(loader(split, data.tokenizer, num_workers=2))

    shutil.copy(shard_dir / "train-000005.tar", victim)
    with tarfile.open(victim) as tar:
        boundary = tar.getmembers()[6].offset  # after the second sample: a shorter valid tar
    truncate(victim, boundary)
    with pytest.raises(DataError, match=r"train-000005.tar ended after 2 of the 6 samples"):
        list(loader(split, data.tokenizer))

    truncate(copy / "val-000001.tar", 3000)
    with pytest.raises(DataError, match=r"shard .*val-000001.tar cannot be read"):
        prepare_data(shard_data_config(cache_dir, copy), image_size=32, vocab_size=128,
                     context_length=16, tokenizer=data.tokenizer, quiet=True)


# ---------------------------------------------------------------- resume mid-epoch

KILL_SCRIPT = """
import sys
sys.path[:0] = [{src!r}, {tests!r}]
from pathlib import Path
from trainer_helpers import tiny_config
from cliptune.trainer import Trainer
config = tiny_config(Path({run!r}), Path({cache!r}), *{overrides!r})
Trainer(config, show_progress=False).fit()
"""


def kill_mid_epoch(tmp_path: Path, cache_dir: Path, overrides: list[str]) -> dict:
    """Run the training in a subprocess, SIGKILL it once last.pt holds a mid-epoch position;
    returns that checkpoint."""
    script = KILL_SCRIPT.format(src=str(REPO / "src"), tests=str(REPO / "tests"),
                                run=str(tmp_path), cache=str(cache_dir), overrides=overrides)
    job = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    last = tmp_path / "checkpoints" / "run" / "last.pt"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert job.poll() is None, job.communicate()[0]
            assert time.monotonic() < deadline, "no mid-epoch checkpoint written"
            if last.is_file() and load_checkpoint(last).get("position"):
                break
            time.sleep(0.01)
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    state = load_checkpoint(last)
    assert state["position"] is not None, "the run finished before it was killed"
    return state


def train_losses(trainer: Trainer) -> dict[int, float]:
    """TensorBoard's `train/loss` of a run: step -> value."""
    events = EventAccumulator(str(trainer.run_dir))
    events.Reload()
    return {event.step: event.value for event in events.Scalars("train/loss")}


@pytest.mark.parametrize("source", ["shards", "cache"])
def test_resume_mid_epoch_equals_uninterrupted(cache_dir, shard_dir, data, tmp_path, source,
                                               capsys):
    """Killed (SIGKILL) after a mid-epoch checkpoint and run again: the same weights, epoch
    losses, validation numbers and TensorBoard training losses (a log window that the
    checkpoint cut in two included) as a run never stopped; the console says where it
    resumed."""
    overrides = ["train.epochs=1", "train.checkpoint_every_steps=3", "data.num_workers=2",
                 "train.log_every=2"]
    if source == "shards":
        overrides += ["data.source=webdataset", f"data.data_dir={shard_dir}",
                      "data.epoch_samples=480"]  # 30 batches: 10 passes over the shards
    else:
        overrides += ["train.batch_size=4"]  # 12 batches an epoch
    straight = Trainer(tiny_config(tmp_path / "straight", cache_dir, *overrides),
                       show_progress=False, data=None if source == "shards" else data)
    straight.fit()

    state = kill_mid_epoch(tmp_path / "killed", cache_dir, overrides)
    assert 0 < state["position"]["batches"] < len(straight._train_loader(1))
    resumed = Trainer(tiny_config(tmp_path / "killed", cache_dir, *overrides),
                      data=None if source == "shards" else data)
    capsys.readouterr()
    resumed.fit()
    batches, n_batches = state["position"]["batches"], len(straight._train_loader(1))
    assert (f"in epoch 1 after batch {batches} of {n_batches} (step {state['step']})"
            in capsys.readouterr().out)
    expected, got = weights(straight), weights(resumed)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    for a, b in zip(straight.history, resumed.history, strict=True):
        assert (a["train_loss"], a["val_loss"], a["val_rsum"]) == (
            b["train_loss"], b["val_loss"], b["val_rsum"])
    assert train_losses(resumed) == pytest.approx(train_losses(straight), rel=1e-6)


def test_resume_position_needs_the_same_workers(cache_dir, shard_dir, data):
    split = resolve(shard_data_config(cache_dir, shard_dir)).train
    first = loader(split, data.tokenizer, num_workers=2)
    batches = iter(first)
    done = [next(batches) for _ in range(3)]
    position = first.position(3)
    rest = list(loader(split, data.tokenizer, num_workers=2, start=3, start_counters=position))
    whole = list(loader(split, data.tokenizer, num_workers=2))
    assert batch_digests(done + rest) == batch_digests(whole)
    with pytest.raises(ConfigError, match="data.num_workers=2"):
        loader(split, data.tokenizer, num_workers=1, start=3, start_counters=position)


# ---------------------------------------------------------------- GPU decoding


@pytest.mark.cuda
def test_cuda_batch_decode_matches_the_cpu_recipe(shard_dir, data, cache_dir):
    """nvJPEG + the GPU resize give the CPU recipe's pixels within a few levels (IDCT and
    bicubic rounding differ), also for a non-square photo-like JPEG; and a ShardLoader
    decoding on the GPU yields the CPU loader's batches within the same bound."""
    rng = np.random.default_rng(0)
    photo = io.BytesIO()
    from PIL import Image
    noise = rng.integers(0, 255, (45, 60, 3), dtype=np.uint8)
    Image.fromarray(np.kron(noise, np.ones((8, 8, 1), dtype=np.uint8))).save(photo, "JPEG")
    files = [s["jpg"] for s in wds.WebDataset(str(shard_dir / "val-000000.tar"),
                                              shardshuffle=False)] + [photo.getvalue()]
    for size in (32, 224):
        gpu = decode_jpegs_cuda([torch.frombuffer(bytearray(f), dtype=torch.uint8)
                                 for f in files], size, torch.device("cuda")).cpu()
        cpu = torch.from_numpy(np.stack([decode_image(f, size) for f in files])).permute(0, 3, 1, 2)
        diff = (gpu.int() - cpu.int()).abs()
        assert diff.max() <= 6 and diff.float().mean() < 1.0, (size, diff.max(), diff.float().mean())
    split = resolve(shard_data_config(cache_dir, shard_dir)).train
    on_gpu = list(loader(split, data.tokenizer, decode_device="cuda", device="cuda"))
    on_cpu = list(loader(split, data.tokenizer))
    for a, b in zip(on_gpu, on_cpu, strict=True):
        assert a.images.is_cuda
        assert (a.images.cpu().int() - b.images.int()).abs().max() <= 6
        assert torch.equal(a.tokens, b.tokens)


def test_tokenizer_learns_from_the_training_shards(cache_dir, shard_dir):
    plan = resolve(shard_data_config(cache_dir, shard_dir))
    from cliptune.data.shard_samples import train_captions
    captions = train_captions(plan.train)
    assert len(captions) == 240  # 48 images x 5 captions (json "captions")
    assert train_captions(plan.train, limit=7) == captions[:7]
    Tokenizer.train(captions, 128, 16)


def torchrun(workdir: Path, shard_dir: Path) -> subprocess.Popen:
    from test_main_cli import TINY_FLAGS
    workdir.mkdir(exist_ok=True)
    env = {**os.environ, "CLIPTUNE_CACHE": str(workdir / "cache"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", str(REPO / "src" / "main.py"), *TINY_FLAGS, "--data", "webdataset",
               "--data-dir", str(shard_dir), "--set", "data.epoch_samples=240", "--set",
               "train.checkpoint_every_steps=3", "--set", "data.num_workers=2", "--epochs", "1"]
    return subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and every process below it (torchrun's workers run in their own
    process groups, so killing its group would leave them training)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    for victim in reversed(tree):  # the workers first, then torchrun
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_torchrun_resume_mid_epoch_equals_uninterrupted(tmp_path, shard_dir):
    """2 ranks x 2 workers under torchrun, SIGKILLed after a mid-epoch checkpoint (both ranks'
    worker counts in it) and launched again: the weights of a job never stopped."""
    straight, killed = torchrun(tmp_path / "a", shard_dir), torchrun(tmp_path / "b", shard_dir)
    last = tmp_path / "b" / "checkpoints" / "cli" / "last.pt"
    try:
        deadline = time.monotonic() + 240
        while not (last.is_file() and load_checkpoint(last).get("position")):
            assert killed.poll() is None, killed.communicate()[0]
            assert time.monotonic() < deadline, "no mid-epoch checkpoint written"
            time.sleep(0.01)
        kill_tree(killed.pid)
        killed.wait()
        output, _ = straight.communicate(timeout=300)
        assert straight.returncode == 0, output
    finally:
        for job in (straight, killed):
            if job.poll() is None:
                kill_tree(job.pid)
                job.wait()
    position = load_checkpoint(last)["position"]
    assert position is not None and len(position["shards"]) == 2
    assert all(len(rank) == 2 for rank in position["shards"])
    again = torchrun(tmp_path / "b", shard_dir)
    output, _ = again.communicate(timeout=300)
    assert again.returncode == 0, output
    assert "resuming" in output
    expected = load_checkpoint(tmp_path / "a" / "checkpoints" / "cli" / "last.pt")
    got = load_checkpoint(last)
    for key, value in expected["model"].items():
        assert torch.equal(value, got["model"][key]), key
    assert [h["val_loss"] for h in got["history"]] == [h["val_loss"] for h in expected["history"]]


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_caption_field_and_resampled_shards(cache_dir, shard_dir, data):
    plan = resolve(shard_data_config(cache_dir, shard_dir, caption_field="txt"))
    from cliptune.data.shard_samples import train_captions
    assert len(train_captions(plan.train)) == 48  # one txt per sample
    names = train_captions(resolve(shard_data_config(cache_dir, shard_dir,
                                                     caption_field="image")).train)
    assert len(names) == 48 and all(n.endswith(".jpg") for n in names)  # a json string field

    split = resolve(shard_data_config(cache_dir, shard_dir)).train
    one = batch_digests(loader(split, data.tokenizer, resampled=True, num_workers=2))
    two = batch_digests(loader(split, data.tokenizer, resampled=True, num_workers=2))
    assert one == two and len(one) == 48  # seeded: the same draws on every run
    two_shards = resolve(shard_data_config(
        cache_dir, str(shard_dir / "train-{000000..000001}.tar"), epoch_samples=48)).train
    with pytest.raises(DataError, match="data.resampled=true"):
        loader(two_shards, data.tokenizer, num_workers=4)
    drawn = batch_digests(loader(two_shards, data.tokenizer, resampled=True, num_workers=4))
    assert len(drawn) == 48 and len(set(drawn)) <= 12  # 4 workers drawing from 2 shards
