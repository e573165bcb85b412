"""Scenes of the Shapes dataset and the captions that describe them.

A scene is a plain background with 1-3 coloured shapes of three sizes that do not
overlap. Captions name every shape by colour and kind, and mix in sizes, positions
(a 3x3 grid), spatial relations ("to the left of", "above") and the background,
with paraphrased templates, so that retrieval needs the whole picture while many
images share any single attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

CANVAS = 128  # pixels; images are square so a center crop never cuts a shape off
KINDS = ("circle", "square", "triangle", "diamond", "star", "cross")
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
RADII = {"small": 10, "medium": 15, "large": 21}  # half the shape's extent, on the canvas
SHAPE_COUNT_PROBABILITIES = (0.25, 0.4, 0.35)  # scenes with 1, 2, 3 shapes
CAPTIONS_PER_IMAGE = 5

SIZE_WORDS = {"small": ("small", "little", "tiny"), "medium": ("medium", "medium-sized"),
              "large": ("large", "big")}
BACKGROUND_WORDS = {"white": ("white",), "black": ("black", "dark"), "gray": ("gray", "grey")}
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")


@dataclass(frozen=True)
class Shape:
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
        """(row, column) of the 3x3 grid cell holding the centre."""
        third = CANVAS / 3
        return ROWS[min(int(self.y // third), 2)], COLUMNS[min(int(self.x // third), 2)]


@dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...]

    def key(self) -> tuple:
        """What the captions can tell apart: two scenes with equal keys look alike in words."""
        return (self.background,
                tuple(sorted((s.kind, s.colour, s.size, s.cell) for s in self.shapes)))


def sample_scene(rng: np.random.Generator) -> Scene:
    """A random scene: 1-3 distinct (colour, kind) shapes, non-overlapping, on a background."""
    background = str(rng.choice(list(BACKGROUNDS)))
    count = int(rng.choice([1, 2, 3], p=SHAPE_COUNT_PROBABILITIES))
    while True:
        shapes: list[Shape] = []
        for _ in range(count):
            for _attempt in range(50):
                kind, colour = str(rng.choice(KINDS)), str(rng.choice(list(COLOURS)))
                size = str(rng.choice(list(RADII)))
                r = RADII[size] + 2
                x, y = rng.uniform(r, CANVAS - r, size=2)
                candidate = Shape(kind, colour, size, round(float(x), 1), round(float(y), 1))
                if all(_apart(candidate, other) for other in shapes):
                    shapes.append(candidate)
                    break
        if len(shapes) == count:
            return Scene(background, tuple(shapes))


def _apart(a: Shape, b: Shape) -> bool:
    """Far enough apart not to overlap, and of a different colour or kind (so nameable)."""
    distance = float(np.hypot(a.x - b.x, a.y - b.y))
    return distance > a.radius + b.radius + 6 and (a.kind, a.colour) != (b.kind, b.colour)


# --------------------------------------------------------------------------- wording


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _name(shape: Shape, rng: np.random.Generator, size: bool | None = None) -> str:
    """'a small red circle' (the size word included when `size`, else at random)."""
    include = bool(rng.random() < 0.6) if size is None else size
    words = [_pick(rng, SIZE_WORDS[shape.size])] if include else []
    return _with_article(" ".join([*words, shape.colour, shape.kind]))


def _place(shape: Shape, rng: np.random.Generator) -> str:
    row, column = shape.cell
    if (row, column) == ("middle", "center"):
        return _pick(rng, ("in the center", "in the middle"))
    if row == "middle":
        return _pick(rng, (f"on the {column}", f"on the {column} side"))
    if column == "center":
        return _pick(rng, (f"at the {row}", f"near the {row}"))
    return _pick(rng, (f"in the {row} {column} corner", f"at the {row} {column}"))


def _on_background(scene: Scene, rng: np.random.Generator) -> str:
    colour = _pick(rng, BACKGROUND_WORDS[scene.background])
    return _pick(rng, (f"on a {colour} background", f"against a {colour} backdrop",
                       f"on {colour}"))


def _relation(a: Shape, b: Shape, rng: np.random.Generator) -> str:
    """'a red circle to the left of a blue square' (or above/below, whichever is clearer)."""
    if abs(a.x - b.x) >= abs(a.y - b.y):
        left, right = (a, b) if a.x < b.x else (b, a)
        return _pick(rng, (f"{_name(left, rng)} to the left of {_name(right, rng)}",
                           f"{_name(right, rng)} to the right of {_name(left, rng)}",
                           f"{_name(left, rng)} on the left and {_name(right, rng)} on the right"))
    top, bottom = (a, b) if a.y < b.y else (b, a)
    return _pick(rng, (f"{_name(top, rng)} above {_name(bottom, rng)}",
                       f"{_name(bottom, rng)} below {_name(top, rng)}",
                       f"{_name(top, rng)} at the top and {_name(bottom, rng)} at the bottom"))


def _listing(shapes: list[Shape], rng: np.random.Generator) -> str:
    names = [_name(s, rng) for s in shapes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _shuffled(scene: Scene, rng: np.random.Generator) -> list[Shape]:
    return [scene.shapes[i] for i in rng.permutation(len(scene.shapes))]


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
    lambda s, r: f"{_name(s.shapes[0], r)} {_place(s.shapes[0], r)} and "
                 f"{_name(s.shapes[1], r)} {_place(s.shapes[1], r)}",
)
def _pair_and_third(scene: Scene, rng: np.random.Generator) -> str:
    a, b, c = _shuffled(scene, rng)
    return _pick(rng, (f"{_relation(a, b, rng)}, with {_name(c, rng)} {_place(c, rng)}",
                       f"{_relation(a, b, rng)} and {_name(c, rng)} nearby"))


THREE: tuple[Template, ...] = (
    lambda s, r: f"{_listing(sorted(s.shapes, key=lambda t: t.x), r)} from left to right",
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
