"""Transducer decoder bricks: predictors (label context) and the joiner.

Predictor API, shared by every predictor so search code works with any of them:

- ``forward(targets (B, U)) → (B, U+1, P)``: outputs for contexts ``[∅, y1, …, yU]``.
- ``initial_state(n, device)`` → a state for n hypotheses that have emitted nothing.
- ``step(tokens (N,), state) → (out (N, P), state)``: feed one token per hypothesis
  (the blank id means "start of sentence", used only as the first token).
- ``select(state, index (M,))`` → the state rows ``index`` (beam reordering).
- ``where(mask (N,), new, old)`` → per row, ``new`` where mask else ``old``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.brick import Brick
from ..nn.masks import causal_mask
from ..nn.transformer import KVCache, TransformerLayers, sinusoids


class StatelessPredictor(Brick):
    """Embedding + depthwise convolution over the last ``context`` labels (no recurrence).

    Cheap, and its state is just the last ``context - 1`` labels, which makes batched
    beam search simple. The blank id V doubles as the start-of-sentence label.
    """

    def __init__(self, vocab_size: int, dim: int = 256, context: int = 2):
        super().__init__()
        self.vocab_size, self.context, self.dim = vocab_size, context, dim
        self.embed = nn.Embedding(vocab_size + 1, dim)
        self.conv = nn.Conv1d(dim, dim, context, groups=dim, bias=False) if context > 1 else None

    def _mix(self, ctx: Tensor) -> Tensor:
        """ctx: (N, L + context - 1) label ids → (N, L, P)."""
        e = self.embed(ctx)
        if self.conv is not None:
            e = self.conv(e.transpose(1, 2)).transpose(1, 2)  # (N, P, L') conv, back to (N, L, P)
        return F.relu(e)

    def forward(self, targets: Tensor) -> Tensor:
        sos = targets.new_full((targets.shape[0], self.context), self.vocab_size)
        return self._mix(torch.cat([sos, targets], dim=1))  # (B, U+1, P)

    def initial_state(self, n: int, device) -> Tensor:
        return torch.full((n, self.context - 1), self.vocab_size, dtype=torch.long, device=device)

    def step(self, tokens: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        ctx = torch.cat([state, tokens[:, None]], dim=1)  # (N, context)
        e = self.embed(ctx)  # (N, context, P)
        if self.conv is not None:  # the convolution's one output position, without conv1d's overhead
            e = (e * self.conv.weight[:, 0].t()).sum(1, keepdim=True)  # weight (P, 1, context) → (context, P)
        return F.relu(e[:, -1]), ctx[:, 1:]

    def select(self, state: Tensor, index: Tensor) -> Tensor:
        return state[index]

    def where(self, mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
        """Rows of ``new`` where mask (N,) is True, else rows of ``old``."""
        return torch.where(mask[:, None], new, old)


class LSTMPredictor(Brick):
    """Embedding → LSTM; state is (h, c), each (layers, N, P)."""

    def __init__(self, vocab_size: int, dim: int = 256, layers: int = 1, dropout: float = 0.1):
        super().__init__()
        self.vocab_size, self.dim = vocab_size, dim
        self.embed = nn.Embedding(vocab_size + 1, dim)
        self.lstm = nn.LSTM(dim, dim, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)

    def forward(self, targets: Tensor) -> Tensor:
        sos = targets.new_full((targets.shape[0], 1), self.vocab_size)
        out, _ = self.lstm(self.drop(self.embed(torch.cat([sos, targets], dim=1))))
        return out  # (B, U+1, P)

    def initial_state(self, n: int, device) -> tuple[Tensor, Tensor]:
        z = torch.zeros(self.lstm.num_layers, n, self.dim, device=device)
        return (z, z.clone())

    def step(self, tokens: Tensor, state) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        out, state = self.lstm(self.embed(tokens)[:, None], state)
        return out[:, 0], state

    def select(self, state, index: Tensor):
        return (state[0][:, index], state[1][:, index])

    def where(self, mask: Tensor, new, old):
        return tuple(torch.where(mask[None, :, None], n, o) for n, o in zip(new, old))


class TransformerPredictor(Brick):
    """Embedding + sinusoidal positions → causal pre-norm Transformer layers → LayerNorm.

    ``step`` is incremental: a hypothesis's state is its length and each layer's cached keys and
    values (``speechkit.nn.transformer.KVCache``), so a step costs one position (it matches ``forward``
    in eval mode).
    """

    def __init__(self, vocab_size: int, dim: int = 256, layers: int = 2, heads: int = 4, ffn_mult: int = 4,
                 dropout: float = 0.1):
        super().__init__()
        self.vocab_size, self.dim = vocab_size, dim
        self.embed = nn.Embedding(vocab_size + 1, dim)
        nn.init.normal_(self.embed.weight, std=dim**-0.5)  # × sqrt(D) below: unit scale
        self.layers = TransformerLayers(layers, dim, heads, ffn_mult * dim, dropout)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def _inputs(self, ids: Tensor, positions: Tensor) -> Tensor:
        return self.drop(self.embed(ids) * self.dim**0.5 + sinusoids(positions, self.dim))

    def forward(self, targets: Tensor) -> Tensor:
        ids = torch.cat([targets.new_full((targets.shape[0], 1), self.vocab_size), targets], dim=1)
        length = ids.shape[1]
        x = self._inputs(ids, torch.arange(length, device=ids.device))
        return self.norm(self.layers(x, causal=causal_mask(length, ids.device)))  # (B, U+1, P)

    def initial_state(self, n: int, device) -> KVCache:
        return self.layers.initial_state(n, device)

    def step(self, tokens: Tensor, state: KVCache) -> tuple[Tensor, KVCache]:
        x, state = self.layers.step(self._inputs(tokens, state.lengths), state)  # rows at their own positions
        return self.norm(x), state

    def select(self, state: KVCache, index: Tensor) -> KVCache:
        return state.select(index)

    def where(self, mask: Tensor, new: KVCache, old: KVCache) -> KVCache:
        """``new`` must be a ``step`` from ``old`` (as in search): their caches agree below each length."""
        return new.where(mask, old)


class Joiner(Brick):
    """logits = W_out · tanh(W_enc · enc + W_pred · pred) over V+1 outputs (blank = V).

    ``forward`` broadcasts: enc (..., E) and pred (..., P) → (..., V+1). With the
    encoder term removed it gives the internal LM (``internal_lm_logits``).
    """

    def __init__(self, enc_dim: int, pred_dim: int, vocab_size: int, dim: int = 256):
        super().__init__()
        self.vocab_size = vocab_size
        self.enc_proj = nn.Linear(enc_dim, dim)
        self.pred_proj = nn.Linear(pred_dim, dim)
        self.out = nn.Linear(dim, vocab_size + 1)

    def forward(self, enc: Tensor, pred: Tensor) -> Tensor:
        return self.out(torch.tanh(self.enc_proj(enc) + self.pred_proj(pred)))

    def joint(self, enc_proj: Tensor, pred_proj: Tensor) -> Tensor:
        """Same as forward on already projected inputs (search projects once per frame)."""
        return self.out(torch.tanh(enc_proj + pred_proj))

    def internal_lm_logits(self, pred: Tensor) -> Tensor:
        """Joiner with a zero encoder term: (..., P) → (..., V+1); ILME uses the non-blank part."""
        return self.joint(0.0, self.pred_proj(pred))
