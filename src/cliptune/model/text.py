"""The text tower: a causal transformer pooled at each caption's end-of-text token."""

from __future__ import annotations

import torch
from torch import nn

from cliptune.config import ModelConfig
from cliptune.model.layers import Transformer


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
