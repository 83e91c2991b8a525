"""Decoder bricks that read an ``Encoded``: the Transformer attention decoder.

A LegoNN decoder starts with an ingestor (``WEmb``/``BeamConv``) over the encoder's
marginals, so it can be reused with any encoder speaking its vocabulary. With
``ingestor=None`` it reads the encoder's hidden states (the classic, non-swappable
path kept as the baseline).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.brick import Brick
from ..nn.masks import causal_mask, padding_mask
from ..nn.transformer import KVCache, TransformerLayers, sinusoids
from .interface import Encoded, interface_logits


class AttentionDecoder(Brick):
    """Autoregressive Transformer decoder over the interface vocabulary.

    Output ids: ``0 .. V-1`` pieces and ``V`` = end of sentence; ``V`` is also the
    start symbol fed first (the same id as the CTC blank, which never appears in text).

    Args:
        vocab_size: V; dim: D; layers, heads, ffn_mult, dropout: the Transformer.
        ingestor: reads marginals (B, K, V+1) → memory (B, K, D); None = classic path.
        memory_dim: width of ``Encoded.hidden`` on the classic path (projected to D if different).
    """

    def __init__(self, vocab_size: int, dim: int = 256, layers: int = 3, heads: int = 4, ffn_mult: int = 4,
                 dropout: float = 0.1, ingestor: nn.Module | None = None, memory_dim: int | None = None):
        super().__init__()
        self.vocab_size, self.dim = vocab_size, dim
        if ingestor is not None and getattr(ingestor, "vocab_size", vocab_size) != vocab_size:
            raise ValueError(f"ingestor vocab_size={ingestor.vocab_size} != decoder vocab_size={vocab_size}")
        self.ingestor = ingestor
        self.memory_proj = nn.Linear(memory_dim, dim) if memory_dim and memory_dim != dim else None
        self.embed = nn.Embedding(vocab_size + 1, dim)
        nn.init.normal_(self.embed.weight, std=dim**-0.5)  # × sqrt(D) in forward: unit scale
        self.layers = TransformerLayers(layers, dim, heads, ffn_mult * dim, dropout, cross=True)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab_size + 1)
        self.dropout = nn.Dropout(dropout)

    @property
    def eos(self) -> int:
        return self.vocab_size

    def memory(self, enc: Encoded) -> tuple[Tensor, Tensor]:
        """The sequence cross-attention reads: (B, K, D), lengths (B,)."""
        if self.ingestor is not None:
            return self.ingestor(interface_logits(enc), enc.lengths)
        h = enc.hidden if self.memory_proj is None else self.memory_proj(enc.hidden)
        if h.shape[-1] != self.dim:
            raise ValueError(f"encoder width {h.shape[-1]} != decoder width {self.dim} (set memory_dim)")
        return h, enc.lengths

    def _embed(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """tokens (...,) at positions (...,) → scaled embeddings + sinusoids (..., D), dropout."""
        return self.dropout(self.embed(tokens) * self.dim**0.5 + sinusoids(positions, self.dim))

    def forward(self, memory: Tensor | None, memory_lengths: Tensor | None, prev: Tensor) -> Tensor:
        """memory (B, K, D), memory_lengths (B,), prev tokens (B, L) starting with V → logits (B, L, V+1).
        ``memory`` None: the internal LM (ILME, METHODS.md §3), the decoder with its attention context
        set to zero, i.e. every cross-attention term left out."""
        length = prev.shape[1]
        x = self._embed(prev, torch.arange(length, device=prev.device))
        mem_pad = None if memory is None else padding_mask(memory_lengths, memory.shape[1])
        x = self.layers(x, causal=causal_mask(length, prev.device), memory=memory, memory_pad=mem_pad)
        return self.out(self.norm(x))

    def internal_lm_logits(self, prev: Tensor) -> Tensor:
        """The internal LM: prev (B, L) starting with V → logits (B, L, V+1) (``forward`` without memory)."""
        return self(None, None, prev)

    def initial_state(self, n: int, device, memory: Tensor | None = None,
                      memory_lengths: Tensor | None = None) -> KVCache:
        """The state of n empty hypotheses; memory (S, K, D) with lengths (S,) (``memory()``) is read by the
        n / S consecutive hypotheses of each source (a beam); without it the steps are the internal LM's."""
        return self.layers.initial_state(n, device, memory, memory_lengths)

    def step(self, tokens: Tensor, state: KVCache) -> tuple[Tensor, KVCache]:
        """Feed one token per hypothesis (N,) (V first: the start) → logits of the next (N, V+1), new state.
        Equals ``forward`` on the whole prefix in eval mode, at the cost of one position."""
        x, state = self.layers.step(self._embed(tokens, state.lengths), state)
        return self.out(self.norm(x)), state

    def select(self, state: KVCache, index: Tensor) -> KVCache:
        """The hypotheses ``index`` (M,) of ``state`` (beam reordering)."""
        return state.select(index)

    def where(self, mask: Tensor, new: KVCache, old: KVCache) -> KVCache:
        """Per hypothesis ``new`` where mask (N,) else ``old``; ``new`` must be a ``step`` from ``old``."""
        return new.where(mask, old)

    def teacher_forcing(self, targets: Tensor, target_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """targets (B, U) → decoder inputs ``[V, y1..yU]`` (B, U+1) and outputs ``[y1..yU, V]``
        (B, U+1) with -100 (ignored) after the end of each row."""
        b, u = targets.shape
        start = torch.full((b, 1), self.eos, dtype=targets.dtype, device=targets.device)
        inp = torch.cat([start, targets], 1)
        out = torch.cat([targets, start], 1).masked_fill(padding_mask(target_lengths + 1, u + 1), -100)
        return inp, out.scatter(1, target_lengths[:, None], self.eos)

    def cross_entropy(self, enc: Encoded, targets: Tensor, target_lengths: Tensor,
                      label_smoothing: float = 0.0) -> Tensor:
        """Teacher-forced cross-entropy of targets (B, U) given an encoded batch, summed over tokens
        (end of sentence included) and the batch."""
        inp, tgt = self.teacher_forcing(targets, target_lengths)
        logits = self(*self.memory(enc), inp)  # (B, U+1, V+1)
        return F.cross_entropy(logits.flatten(0, 1).float(), tgt.flatten(), ignore_index=-100,
                               label_smoothing=label_smoothing, reduction="sum")
