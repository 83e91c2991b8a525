"""Conformer layers with exact padding masks and rotary positions.

Every operation that mixes time (self-attention, depthwise convolution) sees padded
frames as absent: keys are masked and the convolution input is zeroed past each
length, so outputs at valid frames do not depend on how much padding follows.
Layer norms replace the usual batch norm in the convolution module, so outputs do
not depend on the other utterances in the batch either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..lego.brick import Brick


def lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """lengths (B,) → bool mask (B, T) that is True at valid frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def rotary(x: Tensor, base: float = 10000.0) -> Tensor:
    """Apply rotary position embedding to x (B, H, T, Dh) along T."""
    dh, t = x.shape[-1], x.shape[-2]
    inv = base ** (-torch.arange(0, dh, 2, device=x.device, dtype=torch.float32) / dh)
    ang = torch.arange(t, device=x.device, dtype=torch.float32)[:, None] * inv  # (T, Dh/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with rotary positions and a key padding mask."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x: (B, T, D), mask: (B, T) True=valid → (B, T, D)."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = rotary(q), rotary(k)  # (B, H, T, Dh) each
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :],
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class ConvModule(nn.Module):
    """Pointwise-GLU → depthwise conv (padding zeroed) → LayerNorm → SiLU → pointwise."""

    def __init__(self, dim: int, kernel_size: int = 15, dropout: float = 0.0):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.pw1 = nn.Linear(dim, 2 * dim)
        self.dw = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw2 = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x: (B, T, D) → (B, T, D)."""
        y = F.glu(self.pw1(x), dim=-1).masked_fill(~mask[..., None], 0.0)
        y = self.dw(y.transpose(1, 2)).transpose(1, 2)  # (B, D, T) for conv, back to (B, T, D)
        return self.drop(self.pw2(F.silu(self.norm(y))))


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.SiLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, dim), nn.Dropout(dropout))


class ConformerLayer(nn.Module):
    """Macaron conformer block: ½FFN → MHSA → Conv → ½FFN → LayerNorm (pre-norm residuals)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, kernel_size: int, dropout: float):
        super().__init__()
        self.ff1 = FeedForward(dim, ffn_dim, dropout)
        self.norm_att = nn.LayerNorm(dim)
        self.att = SelfAttention(dim, heads, dropout)
        self.norm_conv = nn.LayerNorm(dim)
        self.conv = ConvModule(dim, kernel_size, dropout)
        self.ff2 = FeedForward(dim, ffn_dim, dropout)
        self.norm_out = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + 0.5 * self.ff1(x)
        x = x + self.drop(self.att(self.norm_att(x), mask))
        x = x + self.conv(self.norm_conv(x), mask)
        x = x + 0.5 * self.ff2(x)
        return self.norm_out(x)


class Conformer(Brick):
    """A stack of conformer layers. forward(x (B, T, D), lengths (B,)) → (B, T, D)."""

    def __init__(self, dim: int = 256, layers: int = 12, heads: int = 4, ffn_mult: int = 4,
                 kernel_size: int = 15, dropout: float = 0.1):
        super().__init__()
        self.dim = dim
        self.layers = nn.ModuleList(
            ConformerLayer(dim, heads, ffn_mult * dim, kernel_size, dropout) for _ in range(layers))

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        mask = lengths_to_mask(lengths, x.shape[1])
        for layer in self.layers:
            x = layer(x, mask)
        return x.masked_fill(~mask[..., None], 0.0)
