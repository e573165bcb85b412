"""CLIP: an image tower and a text tower meeting in one normalised embedding space."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cliptune.config import ModelConfig
from cliptune.model.flops import training_flops_per_sample
from cliptune.model.text import TextTransformer
from cliptune.model.vision import VisionTransformer

MAX_LOGIT_SCALE = math.log(100.0)


class CLIP(nn.Module):
    """Contrastive image-text model with a learnable log-temperature `logit_scale`.

    `forward(images, tokens)` returns `(image_emb, text_emb, logit_scale)`: L2-normalised
    float32 embeddings and the log-scale as a 0-d tensor (the caller exponentiates it).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.visual = VisionTransformer(config)
        self.text = TextTransformer(config)
        initial = torch.tensor(math.log(1.0 / config.init_temperature))
        if config.learnable_temperature:
            self.logit_scale = nn.Parameter(initial)
        else:
            self.register_buffer("logit_scale", initial)
        self.set_grad_checkpointing(config.grad_checkpointing)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N, embed_dim) unit-norm float32 embeddings."""
        return F.normalize(self.visual(images).float(), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(M, L) padded token ids -> (M, embed_dim) unit-norm float32 embeddings."""
        return F.normalize(self.text(tokens).float(), dim=-1)

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encode_image(images), self.encode_text(tokens), self.logit_scale

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Keep the temperature in [1/100, 1]; call after each optimizer step."""
        self.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)

    def set_grad_checkpointing(self, enabled: bool) -> None:
        """Recompute block activations in backward instead of storing them (saves memory)."""
        self.visual.transformer.grad_checkpointing = enabled
        self.text.transformer.grad_checkpointing = enabled

    def num_parameters(self) -> int:
        """Number of parameters (the temperature counts when it is learnable)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_sample(self) -> float:
        """Training FLOPs per image-text pair (3x the forward matmul FLOPs), for MFU."""
        return training_flops_per_sample(self.config)
