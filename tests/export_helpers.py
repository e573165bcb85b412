"""Shared by the export tests: captions, a random-weight checkpoint of any architecture,
images (smooth PNG-like and photo-like JPEGs), and running the README's code blocks."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from cliptune.checkpoint import save_checkpoint
from cliptune.config import config_from_dict, config_to_dict, model_config_for
from cliptune.model import CLIP
from cliptune.tokenizer import Tokenizer

CAPTIONS = [
    "a red circle",
    "A  big BLUE square left of a green triangle, below a small yellow star and a hexagon",
    "x",
    "Café déjà-vu: two  circles\tin a row!",
]
TRAIN_CAPTIONS = [
    "a red circle above a blue square", "a green triangle left of a red circle",
    "two blue squares", "a yellow star on a white background", "a small red circle",
    "a large green square below a triangle", "three circles in a row",
]


def random_checkpoint(path: Path, loss: str = "clip", **model: object) -> Path:
    """A randomly initialised CLIP with the given model fields, trained (as it were) with
    `loss` (`siglip`: a model with a logit bias), in checkpoint format."""
    config = config_from_dict({"name": "random-export", "train": {"loss": loss}, "model": {
        "preset": "tiny", "embed_dim": 24, "image_size": 32, "patch_size": 8,
        "vision_width": 32, "vision_layers": 2, "vision_heads": 4, "text_width": 48,
        "text_layers": 2, "text_heads": 3, "context_length": 12, "vocab_size": 400, **model,
    }})
    torch.manual_seed(1)
    clip = CLIP(model_config_for(config))
    with torch.no_grad():  # give LayerNorms and biases values a default init would not
        for name, param in clip.named_parameters():
            if name.endswith("bias") or ".ln" in name:
                param.add_(0.1 * torch.randn_like(param))
    tokenizer = Tokenizer.train(TRAIN_CAPTIONS, config.model.vocab_size,
                                config.model.context_length)
    save_checkpoint({"config": config_to_dict(config), "tokenizer": tokenizer.to_json(),
                     "model": clip.state_dict(), "epoch": 0}, path)
    return path


def smooth_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like (smooth, coloured) RGB image."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)


def photo_jpeg(width: int, height: int, seed: int) -> bytes:
    """A photo-like JPEG: smooth colour, sharp-edged shapes and sensor noise."""
    rng = np.random.default_rng(seed)
    coarse = (rng.random((height // 16 + 2, width // 16 + 2, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        draw.ellipse((x, y, x + int(rng.integers(5, width // 3)), y + int(rng.integers(5, height // 3))),
                     fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    noisy = np.asarray(image).astype(int) + rng.integers(-8, 8, (height, width, 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def readme_code(readme: Path) -> str:
    """The README's ```python blocks, joined."""
    text = readme.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, f"{readme} has no python code block"
    return "\n".join(blocks)


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter in `cwd` (with a dog.jpg there)."""
    smooth_image(80, 60).save(cwd / "dog.jpg")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                          text=True, timeout=300)
