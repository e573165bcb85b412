"""Checkpoint files: round trip, atomic writes, damaged files, rebuilding the model."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from cliptune import checkpoint as checkpoint_module
from cliptune.checkpoint import (
    FORMAT,
    VERSION,
    LoadedModel,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from cliptune.config import config_from_dict, config_to_dict
from cliptune.errors import CheckpointError
from cliptune.model import CLIP
from cliptune.tokenizer import Tokenizer


def sample_state() -> dict:
    """A state shaped like the Trainer's, small enough to write in milliseconds."""
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return {
        "config": {"name": "unit", "seed": 3, "train": {"betas": [0.9, 0.98]}},
        "tokenizer": '{"model": "bpe"}',
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
        "scaler": None,
        "epoch": 2,
        "step": 40,
        "rng": {"torch": torch.get_rng_state()},
        "metrics": {"val_rsum": 123.5, "val_loss": 2.25},
        "best": {"value": 123.5, "epoch": 2.0},
        "history": [{"val_rsum": 100.0}, {"val_rsum": 123.5}],
    }


def test_round_trip(tmp_path):
    state = sample_state()
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert loaded["format"] == FORMAT and loaded["version"] == VERSION
    assert "format" not in state  # the caller's dict is not modified
    for key in ("config", "tokenizer", "scaler", "epoch", "step", "metrics", "best", "history"):
        assert loaded[key] == state[key]
    for name, tensor in state["model"].items():
        assert torch.equal(loaded["model"][name], tensor)
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    assert loaded["optimizer"]["state"][0]["step"] == state["optimizer"]["state"][0]["step"]
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left


def test_failed_write_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)
    before = path.read_bytes()

    def disk_full(obj, file):
        file.write(b"PK\x03\x04partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*last\.pt.*No space"):
        save_checkpoint({"epoch": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1


def test_interrupted_write_removes_temp_file(tmp_path, monkeypatch):
    def interrupted(obj, file):
        file.write(b"PK")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 1}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


def write_checkpoint_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "good.pt"
    save_checkpoint(sample_state(), path)
    return path.read_bytes()


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*nope\.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("epoch: 3\n")
    with pytest.raises(CheckpointError, match=r"notes\.pt is not a cliptune checkpoint"):
        load_checkpoint(path)


def test_torch_file_without_our_tag(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match=r"weights\.pt is not a cliptune checkpoint"):
        load_checkpoint(path)
    torch.save(torch.zeros(3), path)  # not even a dict
    with pytest.raises(CheckpointError, match="is not a cliptune checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_file(tmp_path, keep):
    data = write_checkpoint_bytes(tmp_path)
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=r"cut\.pt is corrupt or truncated"):
        load_checkpoint(path)


def test_corrupt_file(tmp_path):
    data = bytearray(write_checkpoint_bytes(tmp_path))
    # The pickled object graph comes first in the archive; scramble part of it.
    start = data.index(b"data.pkl") + 40
    data[start : start + 200] = bytes((7 * i + 13) % 256 for i in range(200))
    path = tmp_path / "bad.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"bad\.pt is corrupt"):
        load_checkpoint(path)


def test_newer_version_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "future.pt"
    monkeypatch.setattr(checkpoint_module, "VERSION", VERSION + 1)
    save_checkpoint({"epoch": 1}, path)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="upgrade cliptune"):
        load_checkpoint(path)


TINY_MODEL = {
    "preset": "tiny", "embed_dim": 32, "image_size": 32, "patch_size": 8,
    "vision_width": 32, "vision_layers": 1, "vision_heads": 2,
    "text_width": 32, "text_layers": 1, "text_heads": 2,
    "context_length": 16, "vocab_size": 300,
}
TINY_CAPTIONS = [
    "a red circle above a blue square", "a green triangle left of a red circle",
    "two blue squares", "a yellow star on a white background", "a small red circle",
    "a large green square below a triangle", "three circles in a row",
]


def write_tiny_checkpoint(path: Path, cache_dir: Path, *, shapes_images: int = 60) -> Path:
    """A randomly initialised tiny CLIP saved in the Trainer's checkpoint format, with a
    Shapes data config of `shapes_images` images cached under `cache_dir`."""
    config = config_from_dict({
        "name": "tiny-test", "seed": 5, "model": TINY_MODEL,
        "data": {"source": "shapes", "shapes_images": shapes_images, "cache_dir": str(cache_dir)},
        "train": {"eval_batch_size": 16, "precision": "fp32"},
    })
    torch.manual_seed(0)
    model = CLIP(config.model)
    tokenizer = Tokenizer.train(TINY_CAPTIONS, config.model.vocab_size, config.model.context_length)
    state = sample_state()
    state.update(config=config_to_dict(config), tokenizer=tokenizer.to_json(), model=model.state_dict())
    save_checkpoint(state, path)
    return path


def test_load_model_rebuilds_the_model(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "tiny.pt", tmp_path / "cache")
    loaded = load_model(path)
    assert isinstance(loaded, LoadedModel)
    assert not loaded.model.training
    assert loaded.config.model.vision_width == 32 and loaded.config.seed == 5
    assert loaded.config.data.source == "shapes"
    tokens = loaded.tokenizer.encode(["a red circle"])
    assert tokens.shape == (1, 16)

    torch.manual_seed(0)
    reference = CLIP(loaded.config.model).eval()  # same seed: the weights that were saved
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.model.encode_image(images), reference.encode_image(images))
        assert torch.allclose(loaded.model.encode_text(tokens), reference.encode_text(tokens))
        assert loaded.model.encode_image(images).shape == (2, 32)


def test_load_model_rejects_incomplete_or_mismatched_checkpoints(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "tiny.pt", tmp_path / "cache")
    state = load_checkpoint(path)

    del state["tokenizer"]
    save_checkpoint(state, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"partial\.pt lacks tokenizer"):
        load_model(tmp_path / "partial.pt")

    state = load_checkpoint(path)
    state["config"]["model"]["vision_width"] = 64
    save_checkpoint(state, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match=r"mismatch\.pt: weights do not match"):
        load_model(tmp_path / "mismatch.pt")

    state = load_checkpoint(path)
    state["tokenizer"] = "{not json"
    save_checkpoint(state, tmp_path / "badtok.pt")
    with pytest.raises(CheckpointError, match=r"badtok\.pt: its saved tokenizer is invalid"):
        load_model(tmp_path / "badtok.pt")


def test_a_checkpoint_from_before_split_seed_keeps_the_split_its_run_used(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "tiny.pt", tmp_path / "cache")
    assert load_model(path).config.data.split_seed == 0  # saved explicitly: kept (seed is 5)
    state = load_checkpoint(path)
    del state["config"]["data"]["split_seed"]  # as written before the key existed
    save_checkpoint(state, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").config.data.split_seed == 5  # the run's seed split it
