"""THE definition of a model's input pixels: one recipe for every path an image takes.

The image cache, the loaders, the webdataset shard decoder (on the CPU, or on a GPU with
`decode_jpegs_cuda`), `retrieve.py` and both exports (OpenCLIP's `preprocess_cfg`,
the Hugging Face folder's `preprocessor_config.json`) all mean this:

1. decode the whole image (no reduced-size JPEG decode, see below) and convert to RGB;
2. resize it so its shorter side is `size`, the longer side `int(size * long / short)`,
   with PIL's bicubic filter (antialiased when downscaling);
3. crop the central `size` x `size` square, offset `round((side - size) / 2)` (Python's
   rounding, half to even);
4. as float: `(pixel / 255 - CLIP_MEAN) / CLIP_STD` (`normalize_images`, on the device).

Steps 2-3 are torchvision's `Resize(size, BICUBIC)` + `CenterCrop(size)` on a PIL image,
which is what OpenCLIP builds from the exported `preprocess_cfg` and what timm's eval
transform does (transformers' `TimmWrapperImageProcessor`, which the Hugging Face export
names): the same pixels, exactly. transformers' `CLIPImageProcessor` cannot be set up to
match: it centres its crop with `floor((side - size) / 2)`, so where `side - size` is odd
and its floored half odd (640x427 at 64, 128 and 224 px) its crop sits one resized pixel
earlier along the long side, and its default backend resizes a tensor (within one level
of PIL) (`cliptune.export.hf.image_processor_config`, docs/USING_ELSEWHERE.md).

PIL's JPEG draft mode (decoding at 1/2, 1/4 or 1/8 scale in the DCT) is not used: on
photo-like JPEGs it moved pixels by up to 27 levels at 64 px even when the draft kept 4x
the target size, and for Flickr30k's ~500x375 images at 128 px or more it could not
shrink the decode anyway (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import functools
import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

# what PIL decodes, as file suffixes and webdataset keys: caption files, shards, retrieve.py
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
INTERPOLATION = "bicubic"
PIL_BICUBIC = int(Image.Resampling.BICUBIC)  # 3, the value in PIL-based configs (transformers)
# Part of the image cache key: changing the recipe must change this name.
RESIZE_METHOD = "pil-bicubic-shorter-side-then-center-crop-round"

# What PIL raises for a file it cannot decode (corrupt, truncated, not an image), plus the
# decompression-bomb guard (over PIL's pixel limit), which `decode_image` turns into an error.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
                 Image.DecompressionBombWarning)


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after resizing the shorter side to `size` (torchvision's rule)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def crop_offsets(width: int, height: int, size: int) -> tuple[int, int]:
    """(left, top) of the central `size` square of a resized image (step 3: round())."""
    return int(round((width - size) / 2)), int(round((height - size) / 2))


def preprocess_pil(image: Image.Image, size: int) -> np.ndarray:
    """A decoded PIL image -> uint8 (size, size, 3): steps 1-3 of the module docstring."""
    image = image.convert("RGB")
    width, height = resized_size(*image.size, size)
    if (width, height) != image.size:
        image = image.resize((width, height), PIL_BICUBIC)
    left, top = crop_offsets(width, height, size)
    return np.asarray(image.crop((left, top, left + size, top + size)))


def decode_image(source: str | Path | bytes | BinaryIO, size: int) -> np.ndarray:
    """The image file at `source` (a path, encoded bytes or a binary file) as uint8
    (size, size, 3). Raises one of `DECODE_ERRORS` when it cannot be read (an image over
    PIL's pixel limit raises rather than warns)."""
    if isinstance(source, bytes | bytearray | memoryview):
        source = io.BytesIO(source)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(source) as image:
            return preprocess_pil(image, size)


def decode_error(err: BaseException) -> str:
    """A short reason for one of `DECODE_ERRORS`, for the skipped-images report."""
    if isinstance(err, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return f"too large ({err})"
    return f"unreadable ({type(err).__name__}: {err})"


def decode_jpegs_cuda(encoded: list[torch.Tensor], size: int, device: torch.device) -> torch.Tensor:
    """Encoded JPEGs (uint8 1-D CPU tensors) -> uint8 (n, 3, size, size) on `device`: one
    batched nvJPEG decode (`torchvision.io.decode_jpeg(list, device=...)`), then per image
    steps 2-3 on the GPU: bicubic antialiased resize of the shorter side to `size`
    (torchvision, within a level of PIL's), centre crop offset by round()."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8, device=device)
    for row, image in enumerate(images):
        height, width = image.shape[1:]
        new_w, new_h = resized_size(width, height, size)
        if (new_w, new_h) != (width, height):
            image = TF.resize(image, [new_h, new_w], interpolation=InterpolationMode.BICUBIC,
                              antialias=True)
        left, top = crop_offsets(new_w, new_h, size)
        out[row] = image[:, top:top + size, left:left + size]
    return out


@functools.cache
def _affine(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP normalisation as `x * scale + shift` on pixel values 0-255, made once per device."""
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float64).view(1, 3, 1, 1)
    return ((1 / (255 * std)).float().to(device), (-mean / std).float().to(device))


def normalize_images(images: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel values 0-255 (B, 3, H, W), uint8 or float, on any device -> float32 normalised with
    CLIP's mean and std (into `out` when given). The constants are copied to each device once."""
    scale, shift = _affine(images.device)
    # Two passes: on the CPU, addcmul with two broadcast operands runs unvectorised (3x slower).
    return torch.mul(images, scale, out=out).add_(shift)
