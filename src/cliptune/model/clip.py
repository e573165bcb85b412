"""CLIP, top to bottom: transformer blocks, the image tower (ViT), the text tower (causal
transformer) and the joint model meeting in one normalised embedding space.

Pre-LN blocks as in CLIP. Attention goes through `F.scaled_dot_product_attention` with
one fused QKV projection; the text tower asks for `is_causal=True` so no mask tensor is
ever built. Parameter names and module nesting are those of OpenCLIP's CLIP (up to a
renaming, see export/open_clip.py) and of every checkpoint cliptune has written.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from cliptune.config import ModelConfig
from cliptune.model.flops import kept_patches, training_flops_per_sample

MAX_LOGIT_SCALE = math.log(100.0)


# --------------------------------------------------------------------- blocks


class QuickGELU(nn.Module):
    """`x * sigmoid(1.702 x)`: the GELU approximation the original CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "quick_gelu": QuickGELU}


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection."""

    def __init__(self, width: int, heads: int, causal: bool, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.dropout = dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)
        self.out_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        if qkv.device.type == "cpu" and qkv.dtype != torch.float32:
            # The CPU flash-attention backward is ~3x slower in bf16 than in fp32 (torch
            # 2.14, see docs/BENCHMARKS.md), so attention runs in fp32 there.
            with torch.autocast("cpu", enabled=False):
                y = self.attend(qkv.float()).to(qkv.dtype)
        else:
            y = self.attend(qkv)
        return self.out_dropout(self.out_proj(y))

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """(B, L, 3*W) packed projections -> (B, L, W) attention output."""
        batch, length, _ = qkv.shape
        # (B, L, 3, H, Dh) -> three (B, H, L, Dh) views, no copies
        q, k, v = qkv.view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=self.causal, dropout_p=self.dropout if self.training else 0.0
        )
        return y.transpose(1, 2).reshape(batch, length, -1)


class MLP(nn.Module):
    """Position-wise feed-forward: expand by `mlp_ratio`, activate, project back."""

    def __init__(self, width: int, mlp_ratio: float, activation: str, dropout: float = 0.0):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.c_fc = nn.Linear(width, hidden)
        self.act = ACTIVATIONS[activation]()
        self.c_proj = nn.Linear(hidden, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LN residual block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`."""

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: float,
        activation: str,
        causal: bool,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, causal, dropout)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio, activation, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of `layers` blocks of one width, with optional gradient checkpointing."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float,
        activation: str,
        causal: bool,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.width = width
        self.grad_checkpointing = False
        self.blocks = nn.ModuleList(
            Block(width, heads, mlp_ratio, activation, causal, dropout) for _ in range(layers)
        )

    def init_weights(self) -> None:
        """OpenCLIP's init: normal weights with std scaled by width (and depth for outputs).

        Attention biases start at zero (as `nn.MultiheadAttention` does there); the MLP
        keeps `nn.Linear`'s default bias init, also as there.
        """
        width, depth = self.width, len(self.blocks)
        attn_std = width**-0.5
        proj_std = width**-0.5 * (2 * depth) ** -0.5
        fc_std = (2 * width) ** -0.5
        for block in self.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.qkv.bias)
            nn.init.zeros_(block.attn.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

# ---------------------------------------------------------------- image tower


class PatchDropout(nn.Module):
    """FLIP's patch dropout (Li et al. 2023; OpenCLIP's `PatchDropout`): in training, each
    image keeps its class token and a random `kept_patches(patches, p)` of its patch
    tokens; in evaluation, or while `enabled` is False, every token passes.

    The tokens kept are drawn from torch's default generator, which the training loop
    seeds per batch (`runtime.seed_batch`): a resumed run draws what the uninterrupted
    one drew. The kept tokens' order does not matter: they already hold their positional
    embedding, the blocks treat tokens alike and the class token is what is pooled.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.enabled and self.p > 0):
            return x
        batch, patches = x.shape[0], x.shape[1] - 1
        scores = torch.rand(batch, patches, device=x.device)
        kept = scores.topk(kept_patches(patches, self.p), dim=1, sorted=False).indices + 1
        rows = torch.arange(batch, device=x.device).unsqueeze(1)
        return torch.cat([x[:, :1], x[rows, kept]], dim=1)


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
        self.patch_dropout = PatchDropout(config.patch_dropout)
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
        x = self.patch_dropout(torch.cat([cls, x], dim=1) + self.positional_embedding)
        x = self.transformer(self.ln_pre(x))
        # LayerNorm acts per token, so normalising only the pooled class token is exact.
        return self.ln_post(x[:, 0]) @ self.projection

# ----------------------------------------------------------------- text tower


class TextTransformer(nn.Module):
    """Embed tokens, add learned positions, run causal blocks, pool the end token, project.

    Input: token ids (B, L) with L <= context_length, laid out as
    `<start> ... <end>` followed by `pad_token_id`. Output: unnormalised (B, embed_dim).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        width = config.text_width
        self.pad_token_id = config.pad_token_id
        self.context_length = config.context_length
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, width))
        self.transformer = Transformer(
            width,
            config.text_layers,
            config.text_heads,
            config.mlp_ratio,
            config.activation,
            causal=True,
            dropout=config.dropout,
        )
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, config.embed_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width**-0.5)
        self.transformer.init_weights()

    def end_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Index of each row's end-of-text token: the last non-padding position."""
        return ((tokens != self.pad_token_id).sum(dim=1) - 1).clamp(min=0)

    def hidden_states(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-position outputs of the last block, (B, L, text_width)."""
        length = tokens.shape[1]
        if length > self.context_length:
            raise ValueError(
                f"got {length} tokens per caption, context_length is {self.context_length}"
            )
        x = self.token_embedding(tokens) + self.positional_embedding[:length]
        return self.transformer(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.hidden_states(tokens)
        rows = torch.arange(x.shape[0], device=x.device)
        # LayerNorm acts per token, so normalising only the pooled token is exact.
        return self.ln_final(x[rows, self.end_positions(tokens)]) @ self.text_projection


# ---------------------------------------------------------------- joint model


class CLIP(nn.Module):
    """Contrastive image-text model with a learnable log-temperature `logit_scale`, and
    for SigLIP (`config.init_logit_bias` set) a learnable `logit_bias`, as in OpenCLIP.

    `forward(images, tokens)` returns `(image_emb, text_emb, logit_scale)`: L2-normalised
    float32 embeddings and the log-scale as a 0-d tensor (the caller exponentiates it),
    followed by `logit_bias` when the model has one.
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
        if config.init_logit_bias is not None:
            self.logit_bias = nn.Parameter(torch.tensor(float(config.init_logit_bias)))
        else:
            self.logit_bias = None
        self.set_grad_checkpointing(config.grad_checkpointing)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N, embed_dim) unit-norm float32 embeddings."""
        return F.normalize(self.visual(images).float(), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(M, L) padded token ids -> (M, embed_dim) unit-norm float32 embeddings."""
        return F.normalize(self.text(tokens).float(), dim=-1)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = (self.encode_image(images), self.encode_text(tokens), self.logit_scale)
        return outputs if self.logit_bias is None else (*outputs, self.logit_bias)

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Keep the temperature in [1/100, 1]; call after each optimizer step."""
        self.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)

    def set_grad_checkpointing(self, enabled: bool) -> None:
        """Recompute block activations in backward instead of storing them (saves memory)."""
        self.visual.transformer.grad_checkpointing = enabled
        self.text.transformer.grad_checkpointing = enabled

    def set_patch_dropout(self, enabled: bool) -> None:
        """Train with `model.patch_dropout` (True) or on every patch (an unmasked epoch)."""
        self.visual.patch_dropout.enabled = enabled

    def num_parameters(self) -> int:
        """Number of parameters (the temperature counts when it is learnable, and the bias)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_sample(self) -> float:
        """Training FLOPs per image-text pair (3x the forward matmul FLOPs, over the tokens
        a training step processes now: see `set_patch_dropout`), for MFU."""
        return training_flops_per_sample(self.config, masked=self.visual.patch_dropout.enabled)
