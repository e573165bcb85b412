"""The built-in Shapes dataset: generated once into the cache, in the Kaggle Flickr30k layout.

`ensure_shapes` writes `<cache>/shapes/v<version>-n<images>-seed<seed>/` holding
`flickr30k_images/results.csv` and `flickr30k_images/flickr30k_images/<id>.jpg`, so the
data flows through the same parser and image cache as Flickr30k. The folder is built
under a temporary name and renamed when complete, and reused afterwards. Everything is
determined by the seed: scenes are drawn in order from one generator (so no two images
have the same description), pixel jitter from one generator per image.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cliptune.data.catalog import Catalog
from cliptune.data.folder import load_folder
from cliptune.data.shapes_scenes import (
    BACKGROUNDS,
    CANVAS,
    COLOURS,
    Scene,
    Shape,
    describe,
    sample_scene,
)

SHAPES_VERSION = 4  # bump when scenes, captions or rendering change
CROP_SCALE = (0.9, 1.0)  # training crops keep at least 90% of the area
DATASET_SEED = 0  # the dataset is fixed, like Flickr30k; the run's seed only draws the split
COLOUR_JITTER = 14  # per channel, so colours are families rather than exact values


def _jitter(colour: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, ...]:
    values = np.clip(np.array(colour) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3), 0, 255)
    return tuple(int(v) for v in values)


def _polygon(shape: Shape) -> list[tuple[float, float]]:
    x, y, r = shape.x, shape.y, shape.radius
    if shape.kind == "triangle":
        return [(x, y - r), (x + 0.95 * r, y + 0.8 * r), (x - 0.95 * r, y + 0.8 * r)]
    if shape.kind == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.42 * r)
        return list(zip(x + radii * np.cos(angles), y + radii * np.sin(angles), strict=True))
    t, s = 0.38 * r, 0.9 * r
    if shape.kind == "cross":
        return [(x - t, y - s), (x + t, y - s), (x + t, y - t), (x + s, y - t), (x + s, y + t),
                (x + t, y + t), (x + t, y + s), (x - t, y + s), (x - t, y + t), (x - s, y + t),
                (x - s, y - t), (x - t, y - t)]
    if shape.kind == "square":
        return [(x - 0.85 * r, y - 0.85 * r), (x + 0.85 * r, y - 0.85 * r),
                (x + 0.85 * r, y + 0.85 * r), (x - 0.85 * r, y + 0.85 * r)]
    raise ValueError(f"no polygon for {shape.kind}")


def render(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """The scene as a CANVAS x CANVAS RGB image."""
    image = Image.new("RGB", (CANVAS, CANVAS), _jitter(BACKGROUNDS[scene.background], rng))
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        fill = _jitter(COLOURS[shape.colour], rng)
        if shape.kind == "circle":
            r = shape.radius
            draw.ellipse((shape.x - r, shape.y - r, shape.x + r, shape.y + r), fill=fill)
        else:
            draw.polygon(_polygon(shape), fill=fill)
    return image


def unique_scenes(n_images: int, seed: int) -> list[Scene]:
    """`n_images` scenes whose descriptions all differ, drawn in order from `seed`."""
    rng = np.random.default_rng(seed)
    scenes: list[Scene] = []
    seen: set[tuple] = set()
    while len(scenes) < n_images:
        scene = sample_scene(rng)
        if scene.key() not in seen:
            seen.add(scene.key())
            scenes.append(scene)
    return scenes


def generate_shapes(folder: Path, n_images: int, seed: int) -> None:
    """Write `n_images` images and their captions under `folder` in the Kaggle layout."""
    image_dir = folder / "flickr30k_images" / "flickr30k_images"
    image_dir.mkdir(parents=True)
    lines = ["image_name| comment_number| comment"]
    for index, scene in enumerate(unique_scenes(n_images, seed)):
        rng = np.random.default_rng([seed, index])
        name = f"{index:05d}.jpg"
        render(scene, rng).save(image_dir / name, quality=92, subsampling=0)
        lines += [f"{name}| {k}| {caption}" for k, caption in enumerate(describe(scene, rng))]
    (folder / "flickr30k_images" / "results.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def ensure_shapes(cache_dir: Path, n_images: int, seed: int = DATASET_SEED) -> Path:
    """The Shapes folder in `cache_dir`, generated on first use (atomically) and reused after."""
    root = Path(cache_dir) / "shapes" / f"v{SHAPES_VERSION}-n{n_images}-seed{seed}"
    if root.is_dir():
        return root
    partial = root.with_name(f"{root.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    generate_shapes(partial, n_images, seed)
    try:
        partial.rename(root)
    except OSError:  # another process finished first; its copy is identical
        shutil.rmtree(partial, ignore_errors=True)
        if not root.is_dir():
            raise
    return root


def load(cache_dir: Path, n_images: int) -> Catalog:
    """The Shapes catalog (generated if needed). Captions state left and right, positions
    and sizes: flips would falsify them, and so would strong crops."""
    catalog = load_folder(ensure_shapes(cache_dir, n_images), "kaggle", source="shapes")
    return replace(catalog, flip_safe=False, crop_scale=CROP_SCALE)
