"""Pre-norm Transformer layers with exact padding masks and incremental (one position per call)
decoding, and sinusoidal positions.

A ``TransformerLayer`` is self-attention (optionally causal), cross-attention over a memory (decoder
layers) and a feed-forward block, each pre-norm with a residual. Its attention modules are
``nn.MultiheadAttention`` (their forward for whole sequences; their projection weights for steps) and
its parameter names are those of torch's ``TransformerEncoderLayer`` / ``TransformerDecoderLayer``
(``self_attn``, ``multihead_attn``, ``linear1``, ``linear2``, ``norm1``, ``norm2``[, ``norm3``]), which
speechkit used before: bricks saved then load and compute unchanged.

``TransformerLayers`` runs a stack of them on whole sequences (``forward``) or one new position per
sequence (``initial_state`` / ``step``, and ``KVCache.select`` / ``where``: the predictor state API of
``speechkit.lego.transducer``). In eval mode a step equals the causal forward at that position.
Steps read the attention's weights directly, so forward pre-hooks on the attention modules (compress's
input fake-quantizers) apply to ``forward`` only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .brick import Brick
from .masks import padding_mask


def sinusoids(positions: Tensor, dim: int) -> Tensor:
    """Sinusoidal encodings of (possibly fractional) positions (...,) → (..., dim)."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device) / half)
    ang = positions.float()[..., None] * freq  # (..., half)
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


def _attend(att: nn.MultiheadAttention, q: Tensor, k: Tensor, v: Tensor, allowed: Tensor) -> Tensor:
    """One query per row through ``att``'s heads and output projection: q (N, D), k and v (N, L, D)
    projected, allowed (N, L) True where a key may be seen → (N, D)."""
    n, d, h = q.shape[0], q.shape[-1], att.num_heads
    q, k, v = (t.reshape(n, -1, h, d // h).transpose(1, 2) for t in (q, k, v))  # (N, H, L, D/H)
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None, None])  # (N, H, 1, D/H)
    return F.linear(a.reshape(n, d), att.out_proj.weight, att.out_proj.bias)  # heads merged: (N, D)


def _project(att: nn.MultiheadAttention, x: Tensor, part: slice) -> Tensor:
    """``att``'s input projection rows ``part`` (of [query; key; value], D each) applied to x (..., D)."""
    return F.linear(x, att.in_proj_weight[part], att.in_proj_bias[part])


def _forbidden(pad: Tensor | None, causal: Tensor | None) -> Tensor | None:
    """Key padding (B, K) and a causal mask (L, K), True where forbidden → (B or 1, L or 1, K), or None."""
    if pad is None:
        return None if causal is None else causal[None]
    return pad[:, None] if causal is None else pad[:, None] | causal[None]


def multihead_attention(att: nn.MultiheadAttention, x: Tensor, memory: Tensor | None,
                        forbidden: Tensor | None, dropout: float) -> Tensor:
    """x (B, L, D) attending to memory (B, K, D) (None: to itself) through ``att``'s projections and heads,
    forbidden (B or 1, L or 1, K) True where a key may not be seen, dropout on the weights → (B, L, D).
    ``nn.MultiheadAttention``'s arithmetic, written with shapes the ONNX exporter keeps symbolic."""
    b, length, d = x.shape
    h = att.num_heads
    if memory is None:
        q, k, v = _project(att, x, slice(None)).chunk(3, -1)
    else:
        q, (k, v) = _project(att, x, slice(0, d)), _project(att, memory, slice(d, None)).chunk(2, -1)
    heads = lambda t: t.reshape(b, t.shape[1], h, d // h).transpose(1, 2)  # noqa: E731 (B, H, ·, D/H)
    y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), dropout_p=dropout,
                                       attn_mask=None if forbidden is None else ~forbidden[:, None])
    return F.linear(y.transpose(1, 2).reshape(b, length, d), att.out_proj.weight, att.out_proj.bias)


class TransformerLayer(nn.Module):
    """x (B, L, D) → x + SelfAttn(norm1 x) [→ + CrossAttn(norm2 x, memory)] → + FF(norm x) (B, L, D).

    ``cross``: the layer has cross-attention (``multihead_attn``; its feed-forward norm is then
    ``norm3``, as in torch's decoder layer). ReLU feed-forward of width ``ffn_dim``; dropout after each
    block, inside the feed-forward and on the attention weights.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float = 0.1, cross: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True) \
            if cross else None
        self.linear1, self.linear2 = nn.Linear(dim, ffn_dim), nn.Linear(ffn_dim, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim) if cross else None
        self.dropout = nn.Dropout(dropout)

    @property
    def ff_norm(self) -> nn.LayerNorm:
        return self.norm2 if self.norm3 is None else self.norm3

    def _ff(self, x: Tensor) -> Tensor:
        return self.dropout(self.linear2(self.dropout(F.relu(self.linear1(self.ff_norm(x))))))

    def forward(self, x: Tensor, pad: Tensor | None = None, causal: Tensor | None = None,
                memory: Tensor | None = None, memory_pad: Tensor | None = None) -> Tensor:
        """x (B, L, D), pad (B, L) True at padded positions, causal (L, L) True where attention is
        forbidden, memory (B, K, D) with memory_pad (B, K) → (B, L, D). Without ``memory`` the
        cross-attention term is left out (a decoder's internal LM)."""
        p = self.dropout.p if self.training else 0.0
        x = x + self.dropout(multihead_attention(self.self_attn, self.norm1(x), None, _forbidden(pad, causal),
                                                 p))
        if memory is not None:
            x = x + self.dropout(multihead_attention(self.multihead_attn, self.norm2(x), memory,
                                            _forbidden(memory_pad, None), p))
        return x + self._ff(x)

    def step(self, x: Tensor, kv: tuple[Tensor, Tensor], pos: Tensor, visible: Tensor,
             memory: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        """One new position per row: x (N, D) at positions pos (N,); kv the cached keys and values
        (N, C, D), into which the new position's are written in place; visible (N, W ≤ C) the positions
        each row sees (its past and itself); memory: projected keys and values (N, K, D) and the mask
        (N, K) of the positions seen, or None → (N, D)."""
        d, rows = x.shape[-1], torch.arange(x.shape[0], device=x.device)
        q, k, v = _project(self.self_attn, self.norm1(x), slice(None)).split(d, -1)
        keys, values = kv
        keys.index_put_((rows, pos), k)
        values.index_put_((rows, pos), v)
        w = visible.shape[1]
        x = x + _attend(self.self_attn, q, keys[:, :w], values[:, :w], visible)
        if memory is not None:
            q = _project(self.multihead_attn, self.norm2(x), slice(0, d))
            x = x + _attend(self.multihead_attn, q, *memory)
        return x + self._ff(x)


@dataclass
class KVCache:
    """The state of N sequences in a ``TransformerLayers`` stack.

    lengths (N,): positions fed so far. self_kv: per layer the self-attention keys and values (N, C, D)
    of those positions; C ≥ every length, and positions at or past a row's length are scratch: ``step``
    writes the new position there in place, so ``where(mask, new, old)`` for ``new = step(…, old)`` only
    has to choose the lengths, and a state is stepped from at most once. memory_kv: per layer the
    projected cross-attention keys and values (S, K, D) of S memories, memory_pad (S, K) True at padded
    positions, memory_rows (N,) the memory of each row; None: no cross-attention.
    """

    lengths: Tensor
    self_kv: list[tuple[Tensor, Tensor]]
    memory_kv: list[tuple[Tensor, Tensor]] | None = None
    memory_pad: Tensor | None = None
    memory_rows: Tensor | None = None

    def select(self, index: Tensor) -> KVCache:
        """The rows ``index`` (M,) (beam reordering); the memories are shared, not copied."""
        rows = None if self.memory_rows is None else self.memory_rows[index]
        return replace(self, lengths=self.lengths[index], memory_rows=rows,
                       self_kv=[(k[index], v[index]) for k, v in self.self_kv])

    def where(self, mask: Tensor, old: KVCache) -> KVCache:
        """Per row (mask (N,)) this state, else ``old``; this state must be a ``step`` from ``old``."""
        return replace(self, lengths=torch.where(mask, self.lengths, old.lengths))


class TransformerLayers(nn.ModuleList):
    """``layers`` ``TransformerLayer``s (with cross-attention if ``cross``), run on whole sequences or
    stepped one position at a time (see the module docstring)."""

    def __init__(self, layers: int, dim: int, heads: int, ffn_dim: int, dropout: float = 0.1,
                 cross: bool = False):
        super().__init__(TransformerLayer(dim, heads, ffn_dim, dropout, cross) for _ in range(layers))
        self.dim = dim

    def forward(self, x: Tensor, pad: Tensor | None = None, causal: Tensor | None = None,
                memory: Tensor | None = None, memory_pad: Tensor | None = None) -> Tensor:
        """x (B, L, D) → (B, L, D); the masks and memory as in ``TransformerLayer.forward``."""
        for layer in self:
            x = layer(x, pad, causal, memory, memory_pad)
        return x

    def initial_state(self, n: int, device, memory: Tensor | None = None,
                      memory_lengths: Tensor | None = None) -> KVCache:
        """The state of n empty sequences; with ``memory`` (S, K, D) and memory_lengths (S,) the
        cross-attention reads memory s for the n / S consecutive rows s·n/S … (a beam per memory)."""
        empty = torch.zeros(n, 0, self.dim, device=device)
        state = KVCache(torch.zeros(n, dtype=torch.long, device=device), [(empty, empty) for _ in self])
        if memory is None:
            return state
        s, d = memory.shape[0], memory.shape[-1]
        if s and n % s:
            raise ValueError(f"{n} sequences cannot share {s} memories in equal beams")
        rows = torch.arange(s, device=device).repeat_interleave(n // max(s, 1))  # (N,) memory of each row
        kv = [kv.split(d, -1) for kv in self.memory_kv(memory)]
        return replace(state, memory_kv=kv, memory_pad=padding_mask(memory_lengths, memory.shape[1]),
                       memory_rows=rows)

    def memory_kv(self, memory: Tensor) -> list[Tensor]:
        """Each layer's cross-attention keys and values of memory (S, K, D), concatenated: (S, K, 2D)."""
        return [_project(layer.multihead_attn, memory, slice(memory.shape[-1], None)) for layer in self]

    def step(self, x: Tensor, state: KVCache) -> tuple[Tensor, KVCache]:
        """x (N, D): the input at each row's next position ``state.lengths`` → (N, D), the new state."""
        n, lengths = x.shape[0], state.lengths
        width = int(lengths.max()) + 1 if n else 1
        visible = ~padding_mask(lengths + 1, width)  # (N, W) positions up to the new one
        rows = state.memory_rows
        cache = []
        for i, (layer, (keys, values)) in enumerate(zip(self, state.self_kv)):
            if keys.shape[1] < width:  # grow the capacity by a chunk
                keys, values = _grow(keys, width + 7), _grow(values, width + 7)
            memory = None
            if rows is not None:  # each row's memory (N, K, D), and the memory positions it sees (N, K)
                memory = (state.memory_kv[i][0][rows], state.memory_kv[i][1][rows], ~state.memory_pad[rows])
            x = layer.step(x, (keys, values), lengths, visible, memory)
            cache.append((keys, values))
        return x, replace(state, lengths=lengths + 1, self_kv=cache)


def _grow(t: Tensor, width: int) -> Tensor:
    """(N, L, D) → (N, width, D), zero-padded (width ≥ L)."""
    return torch.cat([t, t.new_zeros(t.shape[0], width - t.shape[1], t.shape[2])], dim=1)


class TransformerStack(Brick):
    """``layers`` pre-norm self-attention layers + final LayerNorm: (B, T, D), lengths (B,) → (B, T, D).

    Padded positions never influence valid ones (key padding mask), and are zeroed on output.
    """

    def __init__(self, dim: int, layers: int = 2, heads: int = 4, ffn_mult: int = 4, dropout: float = 0.1):
        super().__init__()
        self.layers = TransformerLayers(layers, dim, heads, ffn_mult * dim, dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        pad = padding_mask(lengths, x.shape[1])
        return self.norm(self.layers(x, pad)).masked_fill(pad[..., None], 0.0)


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
