"""Shapes: determinism, caption quality (5 different, true relations), layout, reuse."""

from __future__ import annotations

import re

import numpy as np
from PIL import Image

from cliptune.data import shapes
from cliptune.data.parsers import sniff_format
from cliptune.data.shapes import CANVAS, Scene, Shape, describe, sample_scene


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_deterministic_and_seed_dependent(tmp_path):
    shapes.generate_shapes(tmp_path / "a", 12, seed=3)
    shapes.generate_shapes(tmp_path / "b", 12, seed=3)
    shapes.generate_shapes(tmp_path / "c", 12, seed=4)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a") != _files(tmp_path / "c")


def test_kaggle_layout_five_different_captions_and_unique_caption_sets(tmp_path):
    root = shapes.ensure_shapes(tmp_path, 60)
    assert sniff_format(root / "flickr30k_images" / "results.csv") == "kaggle"
    catalog = shapes.load(tmp_path, 60)
    assert catalog.source == "shapes" and catalog.flip_safe is False
    assert len(catalog) == 60 and len(catalog.captions) == 300
    caption_sets = set()
    for index in range(60):
        mine = [c for c, i in zip(catalog.captions, catalog.caption_image, strict=True) if i == index]
        assert len(mine) == 5 == len(set(mine))
        caption_sets.add(frozenset(mine))
    assert len(caption_sets) == 60
    # Images are square and of the canvas size: a center crop never cuts a shape off.
    first = np.asarray(Image.open(catalog.root / catalog.image_names[0]))
    assert first.shape == (CANVAS, CANVAS, 3)
    # Many images share single attributes: each colour word shows up in many images.
    assert sum("red" in " ".join(catalog.captions[i * 5:(i + 1) * 5]) for i in range(60)) >= 5


def test_relations_in_captions_match_the_geometry():
    red = Shape("circle", "red", "small", x=30.0, y=40.0)  # both in the top row
    blue = Shape("square", "blue", "large", x=100.0, y=30.0)
    rng = np.random.default_rng(0)
    horizontal = " | ".join(c for _ in range(20) for c in describe(Scene("white", (red, blue)), rng))
    assert re.search(r"red circle to the left of an? (\w+ )?blue square", horizontal)
    assert re.search(r"blue square to the right of an? (\w+ )?red circle", horizontal)
    assert not re.search(r"blue square to the left of", horizontal)
    top = Shape("star", "green", "medium", x=30.0, y=30.0)  # both in the left column
    bottom = Shape("cross", "pink", "medium", x=34.0, y=100.0)
    vertical = " | ".join(c for _ in range(20) for c in describe(Scene("black", (bottom, top)), rng))
    assert re.search(r"green star above an? (\w+ )?pink cross", vertical)
    assert not re.search(r"pink cross above", vertical)


def test_ensure_reuses_the_folder(tmp_path):
    root = shapes.ensure_shapes(tmp_path, 10)
    stamp = (root / "flickr30k_images" / "results.csv").stat().st_mtime_ns
    assert shapes.ensure_shapes(tmp_path, 10) == root
    assert (root / "flickr30k_images" / "results.csv").stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob("shapes/*partial*"))
    assert shapes.ensure_shapes(tmp_path, 11) != root


def test_scenes_fit_the_canvas_in_distinct_cells_without_overlap():
    rng = np.random.default_rng(0)
    counts = set()
    for _ in range(300):
        scene = sample_scene(rng)
        counts.add(len(scene.shapes))
        cells = [s.cell for s in scene.shapes]
        assert len(set(cells)) == len(cells)
        for i, a in enumerate(scene.shapes):
            assert a.radius <= a.x <= CANVAS - a.radius and a.radius <= a.y <= CANVAS - a.radius
            for b in scene.shapes[i + 1:]:
                assert np.hypot(a.x - b.x, a.y - b.y) > a.radius + b.radius
    assert counts == {1, 2, 3}
