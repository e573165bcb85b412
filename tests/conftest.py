"""Shared fixtures: a fake KaggleHub cache laid out like the real Flickr30k download,
small datasets in each folder format, a small Shapes dataset, a network guard, and the skip
of tests marked `cuda` on machines without a GPU."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from trainer_helpers import tiny_data


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` skip on machines where torch sees no CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


FLICKR_HANDLE = "hsankesara/flickr-image-dataset/versions/1"
MALFORMED_IMAGE = "2199200615.jpg"
MALFORMED_ROW = f"{MALFORMED_IMAGE}| 4   A dog runs across the grass ."


def write_jpeg(path: Path, size: tuple[int, int] = (60, 45), seed: int = 0) -> None:
    """A small JPEG whose pixels depend on `seed` (so different files have different bytes)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=3)
    pixels = np.clip(base + rng.integers(-20, 20, size=(size[1], size[0], 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)


@dataclass
class FakeFlickr:
    """Where the fake Flickr30k lives and what it holds."""

    cache: Path  # KAGGLEHUB_CACHE
    version_dir: Path  # <cache>/datasets/hsankesara/flickr-image-dataset/versions/1
    image_dir: Path  # version_dir/flickr30k_images/flickr30k_images
    image_names: list[str]
    n_captions: int


def build_fake_flickr(cache: Path, n_images: int = 12) -> FakeFlickr:
    """Lay out a KaggleHub cache like the real download, duplicates and malformed row included."""
    dataset = cache / "datasets" / "hsankesara" / "flickr-image-dataset"
    version_dir = dataset / "versions" / "1"
    outer = version_dir / "flickr30k_images"
    image_dir = outer / "flickr30k_images"
    names = [f"{1000092795 + 7919 * i}.jpg" for i in range(n_images - 1)] + [MALFORMED_IMAGE]
    lines = ["image_name| comment_number| comment"]
    for index, name in enumerate(names):
        for k in range(5):
            if name == MALFORMED_IMAGE and k == 4:
                lines.append(MALFORMED_ROW)
            else:
                lines.append(f"{name}| {k}| Photo {index} , caption {k} : a dog and a man .")
    csv_text = "\n".join(lines) + "\n"
    for i, name in enumerate(names):
        write_jpeg(image_dir / name, seed=i)
        write_jpeg(image_dir / "flickr30k_images" / name, seed=i)  # the nested duplicate folder
    (outer / "results.csv").write_text(csv_text, encoding="utf-8")
    (image_dir / "results.csv").write_text(csv_text, encoding="utf-8")  # the duplicate csv
    (dataset / "1.complete").touch()
    return FakeFlickr(cache, version_dir, image_dir, sorted(names), 5 * n_images)


@pytest.fixture
def fake_flickr(tmp_path, monkeypatch) -> FakeFlickr:
    """A fake Flickr30k in a KaggleHub cache at tmp_path, with KAGGLEHUB_CACHE pointing there."""
    fake = build_fake_flickr(tmp_path / "kagglehub")
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(fake.cache))
    return fake


@pytest.fixture
def no_network(monkeypatch):
    """Fail any attempt to open a network connection or resolve a host name."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def empty_kagglehub_cache(tmp_path, monkeypatch) -> Path:
    """An empty KaggleHub cache (Flickr30k not downloaded)."""
    cache = tmp_path / "empty-kagglehub"
    cache.mkdir()
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(cache))
    return cache


SHAPES_SMALL = {"image_size": 32, "vocab_size": 128, "context_length": 16}


@pytest.fixture(scope="session")
def shapes_cache_dir(tmp_path_factory) -> Path:
    """A cache folder shared by the session's Shapes fixtures (dataset generated once)."""
    return tmp_path_factory.mktemp("cliptune-cache")


@pytest.fixture(scope="session")
def shapes_data(shapes_cache_dir):
    """PreparedData of a 60-image Shapes set at 32 px (split 48/6/6), vocab 128, context 16."""
    from cliptune.config import DataConfig
    from cliptune.data import prepare_data

    config = DataConfig(source="shapes", shapes_images=60, cache_dir=str(shapes_cache_dir))
    return prepare_data(config, quiet=True, **SHAPES_SMALL)


# --------------------------------------------------------------------------- PostgreSQL

POSTGRES_ENV = "CLIPTUNE_TEST_POSTGRES_URL"
POSTGRES_UP = Path(__file__).resolve().parent.parent / ".ci" / "postgres-up"


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """URL of a real PostgreSQL server whose user may create databases.

    From $CLIPTUNE_TEST_POSTGRES_URL, else `.ci/postgres-up` starts the local server
    (root, Debian package `postgresql`); otherwise the tests fail saying how to start it.
    """
    import os
    import subprocess

    url = os.environ.get(POSTGRES_ENV)
    if url:
        return url
    how = (f"start PostgreSQL and point the tests at it: apt-get install -y postgresql; "
           f"export {POSTGRES_ENV}=$(sudo .ci/postgres-up)")
    if os.geteuid() != 0:
        pytest.fail(f"no PostgreSQL for the storage tests: {how}")
    done = subprocess.run([str(POSTGRES_UP)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f".ci/postgres-up failed ({done.stderr.strip()[-500:]}); {how}")
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture
def postgres_url(postgres_server_url) -> str:
    """A fresh, empty database on the test server for one test (dropped afterwards)."""
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    server = make_url(postgres_server_url)
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"cliptune_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield server.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class TrainedRun:
    """A tiny CLIP trained for one epoch on Shapes by `src/main.py`."""

    workdir: Path  # where main.py ran (holds checkpoints/, runs/)
    checkpoint: Path  # checkpoints/tiny/best.pt


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory) -> TrainedRun:
    """Train the tiny model once per test session (a few seconds) for the export tests."""
    import os
    import subprocess
    import sys

    from tiny_model import TINY_MODEL

    workdir = tmp_path_factory.mktemp("trained-tiny")
    overrides = [*TINY_MODEL, "data.shapes_images=60", "data.val_size=12", "data.test_size=12"]
    command = [sys.executable, str(Path(__file__).resolve().parent.parent / "src" / "main.py"),
               "--data", "shapes", "--epochs", "1", "--batch-size", "16", "--run-name", "tiny",
               "--device", "cpu", *(arg for item in overrides for arg in ("--set", item))]
    env = {**os.environ, "CLIPTUNE_CACHE": str(workdir / "cache")}
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return TrainedRun(workdir=workdir, checkpoint=workdir / "checkpoints" / "tiny" / "best.pt")


@dataclass
class TinyStudy:
    """A 3-trial study (no pruning, so every plot can be drawn) of the tiny model, run by
    `src/optimize.py` in `workdir`."""

    workdir: Path  # where optimize.py ran: optuna-results/, runs/, checkpoints/
    results: Path  # optuna-results/<name>
    name: str


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> TinyStudy:
    """Run a small study once per test session (for the dashboard and browser tests)."""
    import os
    import subprocess
    import sys

    import yaml
    from tiny_model import TINY_MODEL

    from cliptune.config import RunConfig, apply_overrides, save_config

    workdir = tmp_path_factory.mktemp("tiny-study")
    config = apply_overrides(RunConfig(name="base"), [
        *TINY_MODEL, "data.source=shapes", "data.shapes_images=60", "data.val_size=12",
        "data.test_size=12", "train.batch_size=16", "train.eval_batch_size=16",
        "train.figure_images=0", "train.precision=fp32", "train.device=cpu",
        f"data.cache_dir={workdir / 'cache'}",
    ])
    save_config(config, workdir / "base.yaml")
    space = {"parameters": {
        "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True, "target": "train.lr"},
        "depth": {"type": "int", "low": 1, "high": 2,
                  "target": ["model.vision_layers", "model.text_layers"]},
    }}
    (workdir / "space.yaml").write_text(yaml.safe_dump(space))
    script = Path(__file__).resolve().parent.parent / "src" / "optimize.py"
    command = [sys.executable, str(script), "--config", "base.yaml", "--search-space",
               "space.yaml", "--study-name", "tiny", "--trials", "3", "--epochs", "2",
               "--pruner", "none", "--seed", "0", "--quiet"]
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CLIPTUNE_CACHE": str(workdir / "cache")})
    assert done.returncode == 0, done.stderr
    return TinyStudy(workdir=workdir, results=workdir / "optuna-results" / "tiny", name="tiny")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A dataset cache folder shared by one test module's tests."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def data(cache_dir, tmp_path_factory):
    """Tiny prepared Shapes data (`trainer_helpers.tiny_data`), one per test module."""
    return tiny_data(tmp_path_factory.mktemp("prep"), cache_dir)


@pytest.fixture
def no_tf32():
    """Full fp32 matmuls and convolutions on CUDA for the test (the Trainer turns TF32 on
    process-wide), restored afterwards."""
    import torch

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = False
    yield
    matmul.allow_tf32, cudnn.allow_tf32 = before
