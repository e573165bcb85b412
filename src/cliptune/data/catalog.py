"""`Catalog`: the image-caption pairs of one dataset, before splitting."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cliptune.data.augment import CROP_SCALE


@dataclass
class Catalog:
    """Every image of a dataset (sorted by name) with its captions."""

    source: str  # "shapes" | "flickr30k" | "folder"
    root: Path  # folder the image names are relative to
    image_names: list[str]
    captions: list[str]
    caption_image: np.ndarray  # int64 (M,): index into image_names of each caption
    flip_safe: bool = True  # False when captions speak of left and right
    crop_scale: tuple[float, float] = CROP_SCALE  # area kept by training crops

    @classmethod
    def from_pairs(
        cls,
        pairs: Iterable[tuple[str, str]],
        *,
        source: str,
        root: Path,
    ) -> Catalog:
        """Group `(image name, caption)` pairs by image; captions keep their file order."""
        by_image: dict[str, list[str]] = {}
        for name, caption in pairs:
            by_image.setdefault(name, []).append(caption)
        names = sorted(by_image)
        captions = [caption for name in names for caption in by_image[name]]
        counts = [len(by_image[name]) for name in names]
        caption_image = np.repeat(np.arange(len(names), dtype=np.int64), counts)
        return cls(source, Path(root), names, captions, caption_image)

    def __len__(self) -> int:
        return len(self.image_names)

    def subset(self, keep: np.ndarray) -> Catalog:
        """The catalog restricted to the images at the sorted indices `keep`."""
        keep = np.asarray(keep, dtype=np.int64)
        new_index = np.full(len(self.image_names), -1, dtype=np.int64)
        new_index[keep] = np.arange(len(keep))
        mapped = new_index[self.caption_image]
        kept_captions = np.flatnonzero(mapped >= 0)
        return replace(
            self,
            image_names=[self.image_names[i] for i in keep],
            captions=[self.captions[j] for j in kept_captions],
            caption_image=mapped[kept_captions],
        )
