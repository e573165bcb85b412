"""The built-in Shapes dataset: generated once into the cache, in the Kaggle Flickr30k layout.

`ensure_shapes` writes `<cache>/shapes/v<version>-n<images>-seed<seed>/` holding
`flickr30k_images/results.csv` and `flickr30k_images/flickr30k_images/<id>.jpg`, so the
data flows through the same parser and image cache as Flickr30k. The folder is built
under a temporary name and renamed when complete, and reused afterwards. Everything is
determined by the seed: scenes are drawn in order from one generator (so no two images
have the same description), pixel jitter from one generator per image.

Scenes and captions: a scene is a plain background with 1-3 coloured shapes of three
sizes, each in its own quarter of the image (a 2x2 grid), so positions and relations
are unambiguous and the shapes are large enough to tell apart at 64 px. Captions name every shape by colour
and kind and mix in sizes, positions ("in the top left corner"), spatial relations
("to the left of", "above") and the background, with paraphrased templates, so that
retrieval needs the whole picture while many images share any single attribute.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cliptune.data.catalog import Catalog
from cliptune.data.folder import load_folder

SHAPES_VERSION = 4  # bump when scenes, captions or rendering change
CROP_SCALE = (0.9, 1.0)  # training crops keep at least 90% of the area
DATASET_SEED = 0  # the dataset is fixed, like Flickr30k; the run's seed only draws the split
COLOUR_JITTER = 14  # per channel, so colours are families rather than exact values

CANVAS = 128  # pixels; images are square so a center crop never cuts a shape off
CELL = CANVAS // 2  # a 2x2 grid
KINDS = ("circle", "square", "triangle", "star", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 210, 40),
    "orange": (250, 140, 30),
    "purple": (140, 60, 190),
    "pink": (250, 140, 200),
}
BACKGROUNDS = {"white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128)}
RADII = {"small": 14, "medium": 20, "large": 26}  # half the shape's extent, on the canvas
JITTER = 4  # pixels a centre may move from its cell's centre (shapes stay in their cell)
SHAPE_COUNT_PROBABILITIES = (0.15, 0.4, 0.45)  # scenes with 1, 2, 3 shapes
CAPTIONS_PER_IMAGE = 5

SIZE_WORDS = {"small": ("small", "little", "tiny"), "medium": ("medium", "medium-sized"),
              "large": ("large", "big")}
BACKGROUND_WORDS = {"white": ("white",), "black": ("black", "dark"), "gray": ("gray", "grey")}
ROWS = ("top", "bottom")
COLUMNS = ("left", "right")


@dataclass(frozen=True)
class Shape:
    """One shape of a scene: what it is, how big, and where its centre lies."""

    kind: str
    colour: str
    size: str
    x: float  # centre on the canvas
    y: float

    @property
    def radius(self) -> int:
        return RADII[self.size]

    @property
    def cell(self) -> tuple[str, str]:
        """(row, column) of the grid cell holding the centre."""
        return ROWS[int(self.y // CELL)], COLUMNS[int(self.x // CELL)]


@dataclass(frozen=True)
class Scene:
    """A background colour and the shapes drawn on it."""

    background: str
    shapes: tuple[Shape, ...]

    def key(self) -> tuple:
        """What the captions can tell apart: two scenes with equal keys look alike in words."""
        return (self.background,
                tuple(sorted((s.kind, s.colour, s.size, s.cell) for s in self.shapes)))


def sample_scene(rng: np.random.Generator) -> Scene:
    """A random scene: 1-3 shapes of different (colour, kind), each in its own grid cell."""
    background = str(rng.choice(list(BACKGROUNDS)))
    count = int(rng.choice([1, 2, 3], p=SHAPE_COUNT_PROBABILITIES))
    while True:
        shapes = []
        for cell in rng.choice(4, size=count, replace=False):
            centre = (np.array([cell % 2, cell // 2]) + 0.5) * CELL
            x, y = centre + rng.uniform(-JITTER, JITTER, size=2)
            shapes.append(Shape(str(rng.choice(KINDS)), str(rng.choice(list(COLOURS))),
                                str(rng.choice(list(RADII))), round(float(x), 1),
                                round(float(y), 1)))
        if len({(s.kind, s.colour) for s in shapes}) == count:  # each shape can be named
            return Scene(background, tuple(shapes))


# --------------------------------------------------------------------------- wording


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _name(shape: Shape, rng: np.random.Generator, size: bool | None = None) -> str:
    """'a small red circle' (the size word included when `size`, else mostly)."""
    include = bool(rng.random() < 0.75) if size is None else size
    words = [_pick(rng, SIZE_WORDS[shape.size])] if include else []
    return _with_article(" ".join([*words, shape.colour, shape.kind]))


def _place(shape: Shape, rng: np.random.Generator) -> str:
    row, column = shape.cell
    return _pick(rng, (f"in the {row} {column} corner", f"at the {row} {column}",
                       f"in the {row} {column}"))


def _on_background(scene: Scene, rng: np.random.Generator) -> str:
    colour = _pick(rng, BACKGROUND_WORDS[scene.background])
    return _pick(rng, (f"on a {colour} background", f"against a {colour} backdrop",
                       f"on {colour}"))


def _relation(a: Shape, b: Shape, rng: np.random.Generator) -> str:
    """'a red circle to the left of a blue square', or above/below (diagonal: either)."""
    (row_a, column_a), (row_b, column_b) = a.cell, b.cell
    horizontal = column_a != column_b and (row_a == row_b or rng.random() < 0.5)
    if horizontal:
        left, right = (a, b) if a.x < b.x else (b, a)
        return _pick(rng, (f"{_name(left, rng)} to the left of {_name(right, rng)}",
                           f"{_name(right, rng)} to the right of {_name(left, rng)}",
                           f"{_name(left, rng)} on the left and {_name(right, rng)} on the right"))
    top, bottom = (a, b) if a.y < b.y else (b, a)
    return _pick(rng, (f"{_name(top, rng)} above {_name(bottom, rng)}",
                       f"{_name(bottom, rng)} below {_name(top, rng)}",
                       f"{_name(top, rng)} at the top and {_name(bottom, rng)} at the bottom"))


def _listing(shapes: list[Shape], rng: np.random.Generator, placed: bool = False) -> str:
    names = [_name(s, rng) + (f" {_place(s, rng)}" if placed else "") for s in shapes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _shuffled(scene: Scene, rng: np.random.Generator) -> list[Shape]:
    return [scene.shapes[i] for i in rng.permutation(len(scene.shapes))]


def _pair_and_third(scene: Scene, rng: np.random.Generator) -> str:
    a, b, c = _shuffled(scene, rng)
    return _pick(rng, (f"{_relation(a, b, rng)}, with {_name(c, rng)} {_place(c, rng)}",
                       f"{_relation(a, b, rng)} and {_name(c, rng)} {_place(c, rng)}"))


Template = Callable[[Scene, np.random.Generator], str]

ONE: tuple[Template, ...] = (
    lambda s, r: f"{_name(s.shapes[0], r, True)} {_place(s.shapes[0], r)}",
    lambda s, r: f"{_name(s.shapes[0], r, True)} {_on_background(s, r)}",
    lambda s, r: f"there is {_name(s.shapes[0], r)} {_place(s.shapes[0], r)} {_on_background(s, r)}",
    lambda s, r: f"a picture of {_name(s.shapes[0], r, True)}",
    lambda s, r: f"a single {s.shapes[0].colour} {s.shapes[0].kind} {_place(s.shapes[0], r)}",
    lambda s, r: f"one {_pick(r, SIZE_WORDS[s.shapes[0].size])} {s.shapes[0].kind}, colored "
                 f"{s.shapes[0].colour}, {_on_background(s, r)}",
)
TWO: tuple[Template, ...] = (
    lambda s, r: _relation(*s.shapes, r),
    lambda s, r: f"{_relation(*s.shapes, r)} {_on_background(s, r)}",
    lambda s, r: f"{_listing(_shuffled(s, r), r)} {_on_background(s, r)}",
    lambda s, r: f"two shapes: {_listing(_shuffled(s, r), r)}",
    lambda s, r: _listing(_shuffled(s, r), r, placed=True),
)
THREE: tuple[Template, ...] = (
    lambda s, r: _listing(_shuffled(s, r), r, placed=True),
    lambda s, r: f"three shapes {_on_background(s, r)}: {_listing(_shuffled(s, r), r)}",
    lambda s, r: _listing(_shuffled(s, r), r),
    _pair_and_third,
)
TEMPLATES = {1: ONE, 2: TWO, 3: THREE}


def describe(scene: Scene, rng: np.random.Generator) -> list[str]:
    """`CAPTIONS_PER_IMAGE` different captions of `scene`."""
    templates = TEMPLATES[len(scene.shapes)]
    captions: list[str] = []
    order = rng.permutation(len(templates))  # every template once before any repeats
    for attempt in range(100):
        caption = templates[order[attempt % len(templates)]](scene, rng)
        if caption not in captions:
            captions.append(caption)
        if len(captions) == CAPTIONS_PER_IMAGE:
            return captions
    raise RuntimeError(f"could not word {CAPTIONS_PER_IMAGE} different captions for {scene}")


# --------------------------------------------------------------------------- pixels


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
