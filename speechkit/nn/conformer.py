"""Conformer layers with exact padding masks, rotary positions and a streaming (chunked) mode.

Every operation that mixes time (self-attention, depthwise convolution) sees padded
frames as absent: keys are masked and the convolution input is zeroed past each
length, so outputs at valid frames do not depend on how much padding follows.
Layer norms replace the usual batch norm in the convolution module, so outputs do
not depend on the other utterances in the batch either.

Streaming (``causal=True``): the convolution looks only at past frames, and with a chunk
size C the attention of a frame sees its own chunk of C frames and at most ``left_context``
frames before that chunk (``chunk_mask``). ``forward_chunk`` processes one chunk at a time
with caches (per layer: the last ``left_context`` keys and values, the last kernel−1
convolution inputs; positions are the stream's frame numbers) and gives the same outputs as
``forward`` under the same chunk size.
Training with ``chunk_sizes`` draws a chunk size per batch (dynamic chunk training), so one
model serves several latencies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .brick import Brick
from .masks import chunk_mask, padding_mask

_ROTARY: dict = {}  # (Dh, device, dtype) → cos, sin tables (N, Dh/2), grown on demand


def rotary(x: Tensor, offset: int = 0, base: float = 10000.0) -> Tensor:
    """Apply rotary position embedding to x (B, H, T, Dh) at positions offset … offset+T−1."""
    dh, t = x.shape[-1], x.shape[-2]
    key = (dh, x.device, x.dtype, base)
    if torch.jit.is_tracing():  # an exported graph (ONNX) computes the angles for its own length
        inv = base ** (-torch.arange(0, dh, 2, device=x.device, dtype=torch.float32) / dh)
        ang = (torch.arange(t, device=x.device, dtype=torch.float32)[:, None] + offset) * inv
        cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    else:
        cos, sin = _rotary_table(key, offset + t)
        cos, sin = cos[offset: offset + t], sin[offset: offset + t]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


def _rotary_table(key: tuple, length: int) -> tuple[Tensor, Tensor]:
    """The cached cos, sin tables (≥ length, Dh/2) of ``key`` = (Dh, device, dtype, base)."""
    dh, device, dtype, base = key
    if key not in _ROTARY or _ROTARY[key][0].shape[0] < length:
        n = max(length, 2 * _ROTARY[key][0].shape[0] if key in _ROTARY else 1024)
        inv = base ** (-torch.arange(0, dh, 2, device=device, dtype=torch.float32) / dh)
        ang = torch.arange(n, device=device, dtype=torch.float32)[:, None] * inv  # (N, Dh/2)
        _ROTARY[key] = ang.cos().to(dtype), ang.sin().to(dtype)
    return _ROTARY[key]


class SelfAttention(nn.Module):
    """Multi-head self-attention with rotary positions and a boolean attention mask."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return q, k, v  # (B, H, T, Dh) each

    def _out(self, y: Tensor) -> Tensor:
        b, _, t, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, -1))  # (B, H, T, Dh) → (B, T, D)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x: (B, T, D), mask: (B, T or 1, T) True = query may see key → (B, T, D)."""
        q, k, v = self._qkv(x)
        y = F.scaled_dot_product_attention(rotary(q), rotary(k), v, attn_mask=mask[:, None],
                                           dropout_p=self.dropout if self.training else 0.0)
        return self._out(y)

    def forward_chunk(self, x: Tensor, keys: Tensor, values: Tensor, left: int | None, offset: int):
        """One chunk x (B, C, D) starting at frame ``offset`` of the stream, after the cached (rotated)
        keys and values (B, H, L, Dh) → (B, C, D), and the new cache: the last ``left`` frames (all
        when None)."""
        q, k, v = self._qkv(x)
        keys = torch.cat([keys, rotary(k, offset)], 2)  # (B, H, L + C, Dh)
        values = torch.cat([values, v], 2)
        y = F.scaled_dot_product_attention(rotary(q, offset), keys, values)
        if left is not None:  # the last `left` frames (all of them when fewer; an exported graph alike)
            cut = slice(-left, None) if left else slice(0, 0)
            keys, values = keys[:, :, cut], values[:, :, cut]
        return self._out(y), keys, values


class ConvModule(nn.Module):
    """Pointwise-GLU → depthwise conv (padding zeroed; causal: past frames only) → LayerNorm → SiLU
    → pointwise."""

    def __init__(self, dim: int, kernel_size: int = 15, dropout: float = 0.0, causal: bool = False):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.pad = (kernel_size - 1, 0) if causal else (kernel_size // 2, kernel_size // 2)
        self.pw1 = nn.Linear(dim, 2 * dim)
        self.dw = nn.Conv1d(dim, dim, kernel_size, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw2 = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def _post(self, y: Tensor) -> Tensor:
        """Depthwise-conv input (B, D, T + K − 1) → (B, T, D)."""
        return self.drop(self.pw2(F.silu(self.norm(self.dw(y).transpose(1, 2)))))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x: (B, T, D), mask (B, T) → (B, T, D)."""
        y = F.glu(self.pw1(x), dim=-1).masked_fill(~mask[..., None], 0.0)
        return self._post(F.pad(y.transpose(1, 2), self.pad))  # (B, D, T) padded for the conv

    def forward_chunk(self, x: Tensor, cache: Tensor) -> tuple[Tensor, Tensor]:
        """Causal only: x (B, C, D) after the cached last K−1 conv inputs (B, D, K−1) → (B, C, D), cache."""
        y = torch.cat([cache, F.glu(self.pw1(x), dim=-1).transpose(1, 2)], 2)  # (B, D, K − 1 + C)
        return self._post(y), y[:, :, y.shape[2] - self.pad[0]:]


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.SiLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, dim), nn.Dropout(dropout))


class ConformerLayer(nn.Module):
    """Macaron conformer block: ½FFN → MHSA → Conv → ½FFN → LayerNorm (pre-norm residuals)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, kernel_size: int, dropout: float,
                 causal: bool = False):
        super().__init__()
        self.ff1 = FeedForward(dim, ffn_dim, dropout)
        self.norm_att = nn.LayerNorm(dim)
        self.att = SelfAttention(dim, heads, dropout)
        self.norm_conv = nn.LayerNorm(dim)
        self.conv = ConvModule(dim, kernel_size, dropout, causal)
        self.ff2 = FeedForward(dim, ffn_dim, dropout)
        self.norm_out = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor, att_mask: Tensor) -> Tensor:
        """x (B, T, D), mask (B, T) valid frames, att_mask (B, T or 1, T) → (B, T, D)."""
        x = x + 0.5 * self.ff1(x)
        x = x + self.drop(self.att(self.norm_att(x), att_mask))
        x = x + self.conv(self.norm_conv(x), mask)
        x = x + 0.5 * self.ff2(x)
        return self.norm_out(x)

    def forward_chunk(self, x: Tensor, cache: tuple, left: int | None, offset: int) -> tuple[Tensor, tuple]:
        keys, values, conv = cache
        x = x + 0.5 * self.ff1(x)
        y, keys, values = self.att.forward_chunk(self.norm_att(x), keys, values, left, offset)
        x = x + y
        y, conv = self.conv.forward_chunk(self.norm_conv(x), conv)
        x = x + y
        x = x + 0.5 * self.ff2(x)
        return self.norm_out(x), (keys, values, conv)


@dataclass
class ConformerState:
    """Caches of a stream: per layer (rotated keys, values (B, H, ≤L, Dh), conv inputs (B, D, K−1))."""

    layers: list[tuple[Tensor, Tensor, Tensor]]
    frames: int = 0  # frames processed so far


class Conformer(Brick):
    """A stack of conformer layers. forward(x (B, T, D), lengths (B,)) → (B, T, D).

    Args:
        causal: convolutions see past frames only (needed for streaming).
        chunk_sizes: in training, each batch draws its chunk size (frames) from this list
            (dynamic chunk training); None trains with full context.
        full_context_prob: in training, the probability of a batch with full context instead.
        left_context: frames before its chunk a frame may attend to in chunked mode (None: all);
            it bounds the streaming cache.
        chunk: the chunk size outside training (None: full context); ``forward_chunk`` reproduces
            ``forward`` under it.
    """

    def __init__(self, dim: int = 256, layers: int = 12, heads: int = 4, ffn_mult: int = 4,
                 kernel_size: int = 15, dropout: float = 0.1, causal: bool = False,
                 chunk_sizes: list[int] | None = None, full_context_prob: float = 0.0,
                 left_context: int | None = None, chunk: int | None = None):
        super().__init__()
        if (chunk_sizes or chunk) and not causal:
            raise ValueError("chunked attention needs causal=True (a centred convolution would see the "
                             "next chunk)")
        if any(c < 1 for c in [*(chunk_sizes or []), chunk or 1]):
            raise ValueError(f"chunk sizes must be >= 1 frame, got chunk_sizes={chunk_sizes}, chunk={chunk}")
        self.dim, self.heads, self.causal, self.kernel_size = dim, heads, causal, kernel_size
        self.chunk_sizes, self.full_context_prob = list(chunk_sizes or []), full_context_prob
        self.left_context, self.chunk = left_context, chunk
        self.layers = nn.ModuleList(
            ConformerLayer(dim, heads, ffn_mult * dim, kernel_size, dropout, causal) for _ in range(layers))

    def _train_chunk(self) -> int | None:
        if not self.chunk_sizes or torch.rand(()) < self.full_context_prob:
            return None
        return self.chunk_sizes[int(torch.randint(len(self.chunk_sizes), ()))]

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        t = x.shape[1]
        mask = ~padding_mask(lengths, t)  # (B, T) valid frames
        chunk = self._train_chunk() if self.training else self.chunk
        att = mask[:, None, :]  # (B, 1, T) keys
        if chunk is not None:  # every row keeps its diagonal, so no query sees nothing
            seen = chunk_mask(t, chunk, self.left_context, x.device) | torch.eye(t, dtype=torch.bool,
                                                                                 device=x.device)
            att = att & seen[None]  # (B, T, T)
        for layer in self.layers:
            x = layer(x, mask, att)
        return x.masked_fill(~mask[..., None], 0.0)

    def initial_state(self, batch: int, device=None) -> ConformerState:
        if not self.causal:
            raise ValueError("this Conformer was built with causal=False: it has no streaming mode "
                             "(train a streaming model: recipes/locale/conf/stream)")
        dh = self.dim // self.heads
        kv = torch.zeros(batch, self.heads, 0, dh, device=device)
        conv = torch.zeros(batch, self.dim, self.kernel_size - 1, device=device)
        return ConformerState([(kv, kv, conv) for _ in self.layers])

    def forward_chunk(self, x: Tensor, state: ConformerState) -> tuple[Tensor, ConformerState]:
        """One chunk x (B, C, D) of a stream → (B, C, D), new state. Same as ``forward`` with
        ``chunk = C`` (the last chunk may be shorter) on the whole stream."""
        caches = []
        for layer, cache in zip(self.layers, state.layers):
            x, cache = layer.forward_chunk(x, cache, self.left_context, state.frames)
            caches.append(cache)
        return x, ConformerState(caches, state.frames + x.shape[1])
