"""Transformer building blocks shared by both towers: attention, MLP, block, stack.

Pre-LN blocks as in CLIP. Attention goes through `F.scaled_dot_product_attention`
with one fused QKV projection; the text tower asks for `is_causal=True` so no mask
tensor is ever built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


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
