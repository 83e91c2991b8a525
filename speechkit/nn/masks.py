"""Sequence masks: the one home of padding, causal and streaming-chunk masks.

Convention: a *padding* mask is True where a position is absent (what ``key_padding_mask`` of
``nn.MultiheadAttention`` takes); ``~padding_mask(...)`` is the mask of valid positions. The
causal mask is True where attention is forbidden (``attn_mask``); the chunk mask is True where it is
allowed (what ``F.scaled_dot_product_attention`` takes).
"""

from __future__ import annotations

import torch
from torch import Tensor


def padding_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B,) lengths → (B, max_len) bool, True at padded positions (at or past each length)."""
    return torch.arange(max_len, device=lengths.device)[None] >= lengths[:, None]


def causal_mask(length: int, device=None) -> Tensor:
    """(length, length) bool, True where a position may not attend (the future)."""
    return torch.triu(torch.ones(length, length, dtype=torch.bool, device=device), 1)


def chunk_mask(t: int, chunk: int, left: int | None, device=None) -> Tensor:
    """(T, T) bool: query frame i sees key frame j iff j lies in i's chunk of ``chunk`` frames or
    before it, and at most ``left`` frames (None: any number) before the start of i's chunk."""
    idx = torch.arange(t, device=device)
    start = idx // chunk * chunk  # (T,) first frame of each query's chunk
    seen = idx[None, :] < (start + chunk)[:, None]
    if left is not None:
        seen &= idx[None, :] >= (start - left)[:, None]
    return seen
