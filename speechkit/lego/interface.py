"""The LegoNN interface: the ``Encoded`` contract, the marginal head, the ingestors
(WEmb, BeamConv) and the output length controller. Method: METHODS.md §1.

An encoder brick ends in a marginal head: logits (B, T, V+1) over the shared interface
vocabulary plus blank (index V), trained with CTC. A decoder brick begins with an
ingestor that turns marginals back into vectors, so any encoder speaking the same
vocabulary can feed any decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.brick import Brick
from ..nn.masks import padding_mask
from ..nn.transformer import TransformerStack, multihead_attention, sinusoids


@dataclass
class Encoded:
    """What every encoder brick returns.

    hidden: (B, T, D); lengths: (B,); logits: (B, T, V+1) marginal logits over the
    interface vocabulary plus blank (index V), or None for a brick without a head.
    previous: the outputs of the earlier bricks of a chain, first to last (each
    interface of a chain gets its own CTC loss).
    """

    hidden: Tensor
    lengths: Tensor
    logits: Tensor | None = None
    previous: tuple[Encoded, ...] = ()


class MarginalHead(Brick):
    """Projection to the interface vocabulary + blank: (B, T, D) → (B, T, V+1), blank = V."""

    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.proj = nn.Linear(dim, vocab_size + 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


def ctc_loss(enc: Encoded, targets: Tensor, target_lengths: Tensor) -> Tensor:
    """CTC of the marginal head against targets (B, U); summed over the batch.

    The blank is the last logit (index V). Utterances too short for their targets
    contribute zero (``zero_infinity``) instead of NaN.
    """
    if enc.logits is None:
        raise ValueError("this encoder has no marginal head; CTC needs one")
    logp = F.log_softmax(enc.logits.float(), dim=-1).transpose(0, 1)  # (T, B, V+1)
    return F.ctc_loss(logp, targets, enc.lengths, target_lengths, blank=logp.shape[-1] - 1,
                      reduction="sum", zero_infinity=True)


def interface_ctc(enc: Encoded, targets: Tensor, target_lengths: Tensor) -> Tensor:
    """Sum of the CTC losses of every interface of a (chain of) encoder(s); summed over the batch."""
    return sum(ctc_loss(e, targets, target_lengths) for e in (*enc.previous, enc))


def interface_logits(enc: Encoded) -> Tensor:
    """The marginal logits (B, T, V+1) an ingestor reads; refuses an encoder without a head."""
    if enc.logits is None:
        raise ValueError("a LegoNN decoder ingests marginals, but this encoder has no marginal head "
                         "(compose a brick trained with one, or use the classic path: ingestor=None)")
    return enc.logits


class _Ingestor(Brick):
    """Shared tail of the ingestors: + positions, dropout, Transformer layers."""

    input_kind = "marginals"

    def _setup(self, vocab_size: int, dim: int, layers: int, heads: int, ffn_mult: int, dropout: float):
        self.vocab_size, self.dim = vocab_size, dim
        self.dropout = nn.Dropout(dropout)
        self.body = TransformerStack(dim, layers, heads, ffn_mult, dropout) if layers else None

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return lengths

    def _finish(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = self.dropout(x + sinusoids(torch.arange(x.shape[1], device=x.device), self.dim))
        if self.body is not None:
            x = self.body(x, lengths)
        return x, lengths

    def _conv(self, conv: nn.Conv1d, x: Tensor, lengths: Tensor) -> Tensor:
        """Conv1d along K with padded positions zeroed first: (B, K, C) → (B, K, D)."""
        x = x.masked_fill(padding_mask(lengths, x.shape[1])[..., None], 0.0)
        return conv(x.transpose(1, 2)).transpose(1, 2)  # conv over (B, C, K), back to (B, K, D)


class WEmb(_Ingestor):
    """Differentiable ingestor: marginals P (B, K, V+1) → P @ E + positions → Transformer → (B, K, D).

    ``kernel_size`` > 1 widens the receptive field to neighbouring positions (a Conv1d over
    the marginals, of which E is the kernel-1 case) (choice). Gradients flow into the encoder.
    """

    def __init__(self, vocab_size: int, dim: int, layers: int = 2, heads: int = 4, ffn_mult: int = 4,
                 kernel_size: int = 1, dropout: float = 0.1):
        super().__init__()
        self._setup(vocab_size, dim, layers, heads, ffn_mult, dropout)
        self.embed = nn.Conv1d(vocab_size + 1, dim, kernel_size, padding=kernel_size // 2, bias=False)
        # P @ E with unit-scale rows of E, so content is as loud as the positions added to it
        nn.init.normal_(self.embed.weight, std=kernel_size**-0.5)

    def forward(self, logits: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """logits (B, K, V+1) of the previous brick, lengths (B,) → memory (B, K, D), lengths."""
        if logits.shape[-1] != self.vocab_size + 1:
            raise ValueError(f"WEmb expects {self.vocab_size + 1} marginals, got {logits.shape[-1]}")
        p = logits.float().softmax(-1)  # (B, K, V+1)
        return self._finish(self._conv(self.embed, p, lengths), lengths)


class BeamConv(_Ingestor):
    """Gradient-isolating ingestor: the top-``k`` token ids per position, embedded, concatenated
    (k·D) and mixed by a Conv1d of width ``kernel_size`` along K (choice) → + positions → Transformer.

    Only ids cross the interface, so no gradient reaches the encoder. ``k`` is fixed when the
    decoder is trained.
    """

    def __init__(self, vocab_size: int, dim: int, k: int = 4, layers: int = 2, heads: int = 4,
                 ffn_mult: int = 4, kernel_size: int = 3, dropout: float = 0.1):
        super().__init__()
        self._setup(vocab_size, dim, layers, heads, ffn_mult, dropout)
        self.k = k
        self.embed = nn.Embedding(vocab_size + 1, dim)
        self.mix = nn.Conv1d(k * dim, dim, kernel_size, padding=kernel_size // 2)

    def forward(self, logits: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """logits (B, K, V+1), lengths (B,) → memory (B, K, D), lengths."""
        if logits.shape[-1] != self.vocab_size + 1:
            raise ValueError(f"BeamConv expects {self.vocab_size + 1} marginals, got {logits.shape[-1]}")
        ids = logits.detach().topk(self.k, dim=-1).indices  # (B, K, k)
        e = self.embed(ids).flatten(2)  # (B, K, k, D) → (B, K, k·D)
        return self._finish(self._conv(self.mix, e, lengths), lengths)


class LengthController(Brick):
    """Output length controller: (B, T, D), lengths → exactly K = ceil(alpha·T) outputs per row.

    K learned positional queries cross-attend to the (position-encoded) inputs. Query k
    is encoded at the fractional input position k / alpha and passed through a learned
    projection (choice), so queries and keys share one position scale and the same
    weights work for any alpha (``compose`` may adjust alpha for a new encoder).
    alpha > 1 upsamples (text → CTC targets), alpha < 1 downsamples (speech).
    """

    def __init__(self, dim: int, alpha: float = 2.0, heads: int = 4, dropout: float = 0.1):
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.dim, self.alpha = dim, alpha
        self.query = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.norm_in = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_out = nn.LayerNorm(dim)

    def set_alpha(self, alpha: float) -> None:
        """Change alpha (also in the recorded config, so a saved brick keeps it)."""
        self.alpha = float(alpha)
        self.config["init_args"]["alpha"] = float(alpha)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """(B,) input lengths → (B,) K = ceil(alpha·T), at least 1."""
        return torch.ceil(lengths.float() * self.alpha - 1e-6).long().clamp(min=1)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        out_lengths = self.output_lengths(lengths)
        k_max = out_lengths.max() if out_lengths.numel() else 1  # a tensor: ONNX export keeps it symbolic
        pos = torch.arange(k_max, device=x.device) / self.alpha
        q = self.query(sinusoids(pos, self.dim))[None].expand(x.shape[0], -1, -1)  # (B, K, D)
        kv = self.norm_in(x) + sinusoids(torch.arange(x.shape[1], device=x.device), self.dim)
        drop = self.attn.dropout if self.training else 0.0
        y = multihead_attention(self.attn, q, kv, padding_mask(lengths, x.shape[1])[:, None], drop)
        y = self.norm_out(q + y).masked_fill(padding_mask(out_lengths, k_max)[..., None], 0.0)
        return y, out_lengths


class Shrink(Brick):
    """STAST's shrink (METHODS.md §2): frames → one vector per CTC segment.

    Take the greedy CTC path ``a_t = argmax P_t``, drop blank frames and padding, and
    merge each run of consecutive frames with the same label into one vector: the mean
    (``weighting="mean"``) or the mean weighted by ``P_t(a_t)`` (``"posterior"``, choice).
    A label repeated across a blank starts a new segment, exactly as in CTC collapsing, so
    the output length is the length of the greedy CTC hypothesis. A row where nothing
    survives becomes a single mean-pooled vector (choice). Gradients flow through the
    averaged vectors (and the posterior weights), not through the argmax.
    """

    def __init__(self, weighting: str = "mean"):
        super().__init__()
        if weighting not in ("mean", "posterior"):
            raise ValueError(f"Shrink weighting must be 'mean' or 'posterior', got {weighting!r}")
        self.weighting = weighting

    def segments(self, logits: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """logits (B, T, V+1), lengths (B,) → segment index per frame (B, T) (-1: dropped frame)
        and segment counts (B,)."""
        ids = logits.argmax(-1)  # (B, T)
        keep = ~padding_mask(lengths, ids.shape[1]) & (ids != logits.shape[-1] - 1)
        prev = F.pad(ids, (1, 0), value=-1)[:, :-1]
        start = keep & (ids != prev)  # a new label, or the same label after a blank
        seg = start.long().cumsum(1) - 1
        return seg.masked_fill(~keep, -1), start.sum(1)

    def forward(self, hidden: Tensor, logits: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """hidden (B, T, D), CTC logits (B, T, V+1), lengths (B,) → (B, S, D), lengths (B,) ≥ 1."""
        seg, counts = self.segments(logits.detach(), lengths)
        b, t, d = hidden.shape
        # no branch on the data (ONNX export keeps the shapes symbolic): rows without a segment fall back to
        # mean pooling, every valid frame joining segment 0
        empty = counts == 0
        seg = torch.where(empty[:, None] & ~padding_mask(lengths, t), torch.zeros_like(seg), seg)
        counts = counts.masked_fill(empty, 1)
        w = (seg >= 0).to(hidden.dtype)
        if self.weighting == "posterior":
            w = w * logits.float().softmax(-1).amax(-1).to(hidden.dtype)
        s = counts.max() if b else 1  # S ≤ T segments: sums over T places, the first S kept
        index = seg.clamp(min=0)  # dropped frames add 0 to segment 0
        total = torch.zeros_like(hidden).scatter_add(1, index[..., None].expand(-1, -1, d),
                                                     hidden * w[..., None])[:, :s]
        weight = torch.zeros_like(w).scatter_add(1, index, w)[:, :s]
        out = total / weight.clamp(min=torch.finfo(hidden.dtype).tiny)[..., None]
        return out.masked_fill(padding_mask(counts, s)[..., None], 0.0), counts
