"""Analytic FLOP count of a CLIP forward pass, for model-FLOPs utilisation (MFU).

Every matmul of shapes (m, k) @ (k, n) counts 2*m*n*k, including the patch conv and
attention scores and values over the full L x L matrix (causal or not). Norms,
activations, softmax and embedding lookups are left out, as is the batch-sized
similarity matrix of the loss. Under patch dropout (`model.patch_dropout`) the image
tower's blocks see only the tokens an image keeps: the count is of the tokens processed.
"""

from __future__ import annotations

from cliptune.config import ModelConfig, TrainConfig


def transformer_flops(width: int, layers: int, length: int, mlp_ratio: float) -> float:
    """Forward FLOPs of `layers` pre-LN blocks over one sequence of `length` tokens."""
    hidden = int(width * mlp_ratio)
    qkv = 2 * length * width * 3 * width
    scores_and_values = 2 * (2 * length * length * width)
    out_proj = 2 * length * width * width
    mlp = 2 * (2 * length * width * hidden)
    return float(layers * (qkv + scores_and_values + out_proj + mlp))


def kept_patches(patches: int, patch_dropout: float) -> int:
    """Patch tokens an image keeps in training under `patch_dropout`: round((1 - p) x
    patches), at least one (the class token is kept besides)."""
    return max(1, round((1 - patch_dropout) * patches))


def vision_flops(config: ModelConfig, masked: bool = False) -> float:
    """Forward FLOPs of the image tower for one image; `masked`: as trained under
    `config.patch_dropout` (the patch conv still sees every patch, the blocks the kept ones)."""
    patches = (config.image_size // config.patch_size) ** 2
    tokens = kept_patches(patches, config.patch_dropout) if masked else patches
    patch_conv = 2 * patches * (3 * config.patch_size**2) * config.vision_width
    blocks = transformer_flops(
        config.vision_width, config.vision_layers, tokens + 1, config.mlp_ratio
    )
    projection = 2 * config.vision_width * config.embed_dim
    return float(patch_conv + blocks + projection)


def text_flops(config: ModelConfig) -> float:
    """Forward FLOPs of the text tower for one caption of `context_length` tokens."""
    blocks = transformer_flops(
        config.text_width, config.text_layers, config.context_length, config.mlp_ratio
    )
    projection = 2 * config.text_width * config.embed_dim
    return float(blocks + projection)


def training_flops_per_sample(config: ModelConfig, masked: bool = True) -> float:
    """FLOPs of one training step per image-text pair: forward plus a backward of twice that.

    `masked`: with the patch dropout of `config` (training's default); False for the
    epochs that train unmasked (`train.unmasked_epochs`).
    """
    return 3.0 * (vision_flops(config, masked) + text_flops(config))


def epochs_flops_per_sample(model: ModelConfig, train: TrainConfig, epochs: int) -> float:
    """Training FLOPs per image-text pair summed over epochs 1 to `epochs` of a run: the
    masked epochs and the unmasked last ones (`train.unmasked_epochs`) each at their count."""
    return sum(training_flops_per_sample(model, masked=train.masks_patches(epoch))
               for epoch in range(1, epochs + 1))
