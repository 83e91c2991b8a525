"""Transformer layers with exact padding masks, and sinusoidal positions.

Thin wrappers over ``torch.nn.TransformerEncoderLayer`` / ``TransformerDecoderLayer``
(pre-norm, batch first) that take lengths instead of masks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .brick import Brick


def padding_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B,) lengths → (B, max_len) bool, True at padded positions."""
    return torch.arange(max_len, device=lengths.device)[None] >= lengths[:, None]


def causal_mask(length: int, device=None) -> Tensor:
    """(length, length) bool, True where a position may not attend (the future)."""
    return torch.triu(torch.ones(length, length, dtype=torch.bool, device=device), 1)


def sinusoids(positions: Tensor, dim: int) -> Tensor:
    """Sinusoidal encodings of (possibly fractional) positions (...,) → (..., dim)."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device) / half)
    ang = positions.float()[..., None] * freq  # (..., half)
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


class TransformerStack(Brick):
    """``layers`` pre-norm self-attention layers + final LayerNorm: (B, T, D), lengths (B,) → (B, T, D).

    Padded positions never influence valid ones (key padding mask), and are zeroed on output.
    """

    def __init__(self, dim: int, layers: int = 2, heads: int = 4, ffn_mult: int = 4, dropout: float = 0.1):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, ffn_mult * dim, dropout, batch_first=True, norm_first=True)
            for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        pad = padding_mask(lengths, x.shape[1])
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=pad)
        return self.norm(x).masked_fill(pad[..., None], 0.0)


class TokenEmbedding(Brick):
    """Token ids (B, U) → scaled embeddings + sinusoidal positions (B, U, D); lengths unchanged.

    The front end of a text encoder (the source-language side of MT).
    """

    input_kind = "tokens"
    source_side_args = ("vocab_size",)  # the input text's vocabulary (train/cli.set_vocab_sizes)

    def __init__(self, vocab_size: int, dim: int, dropout: float = 0.1):
        super().__init__()
        self.vocab_size, self.dim = vocab_size, dim
        self.embed = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.embed.weight, std=dim**-0.5)  # × sqrt(D) below: unit scale, like the positions
        self.dropout = nn.Dropout(dropout)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return lengths

    def forward(self, tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        if tokens.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"a text encoder takes token ids (B, U), got a {tokens.dtype} tensor "
                             f"of shape {tuple(tokens.shape)}")
        pos = sinusoids(torch.arange(tokens.shape[1], device=tokens.device), self.dim)
        x = self.embed(tokens) * math.sqrt(self.dim) + pos
        return self.dropout(x), lengths
