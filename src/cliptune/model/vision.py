"""The image tower: a ViT that pools its class token into the joint embedding space."""

from __future__ import annotations

import torch
from torch import nn

from cliptune.config import ModelConfig
from cliptune.model.layers import Transformer


class VisionTransformer(nn.Module):
    """Patchify, prepend a class token, add learned positions, run blocks, project.

    Input: normalised float images (B, 3, image_size, image_size).
    Output: unnormalised (B, embed_dim) features.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        width = config.vision_width
        grid = config.image_size // config.patch_size
        scale = width**-0.5
        self.patch_conv = nn.Conv2d(
            3, width, kernel_size=config.patch_size, stride=config.patch_size, bias=False
        )
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(
            width,
            config.vision_layers,
            config.vision_heads,
            config.mlp_ratio,
            config.activation,
            causal=False,
            dropout=config.dropout,
        )
        self.ln_post = nn.LayerNorm(width)
        self.projection = nn.Parameter(scale * torch.randn(width, config.embed_dim))
        self.transformer.init_weights()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_conv(images).flatten(2).transpose(1, 2)  # (B, grid*grid, width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x))
        # LayerNorm acts per token, so normalising only the pooled class token is exact.
        return self.ln_post(x[:, 0]) @ self.projection
