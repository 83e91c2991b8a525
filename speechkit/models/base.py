"""What every model brick shares: encode with ``encoder``, lose via ``encoded_loss``; and the one protocol
of language models (``TokenLM``: external LMs and every model's internal LM) with its training loss."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ..lego.interface import Encoded
from ..nn.brick import Brick
from ..nn.masks import padding_mask


class EncoderDecoderModel(Brick):
    """Base of the model bricks (``Transducer``, ``AttentionModel``, ``STAST``): an ``encoder`` attribute
    and an ``encoded_loss(enc, targets, target_lengths, scales)`` method, which ``SpeechTask`` and the
    searches rely on, and ``internal_lm()`` → the model's internal LM as a ``TokenLM`` (fusion, ILM
    training, ILMA, MWER). ``forward`` encodes; ``loss`` encodes then scores."""

    def forward(self, inputs: Tensor, lengths: Tensor) -> Encoded:
        """inputs (B, T, F) features or (B, T) token ids, lengths (B,) → ``Encoded``; search runs on it."""
        return self.encoder(inputs, lengths)

    def loss(self, inputs: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor,
             scales: Mapping[str, float] | None = None, **extras: Tensor) -> dict[str, Tensor]:
        """targets (B, U) padded with anything → {'loss', <term>: ...} per utterance; ``scales``: per loss
        term a multiplier of its weight (missing: 1; 0: the term is not computed; SpeechTask's
        ``loss_start_steps`` / ``loss_ramp_steps``); ``extras`` (e.g. STAST's transcripts) go to
        ``encoded_loss``."""
        return self.encoded_loss(self(inputs, lengths), targets, target_lengths, scales, **extras)


def scale_of(scales: Mapping[str, float] | None, term: str) -> float:
    """A loss term's scale at this step (missing: 1)."""
    return 1.0 if scales is None else float(scales.get(term, 1.0))


def term_scales(scales: Mapping[str, float] | None, weights: Mapping[str, float]) -> dict[str, float]:
    """The effective weight of each loss term: its weight times its scale; a term with effective weight 0
    is not computed."""
    return {k: w * scale_of(scales, k) for k, w in weights.items()}


class TokenLM:
    """The one protocol of a left-to-right language model over the interface vocabulary: the external
    ``LanguageModel`` and every model's internal LM (``model.internal_lm()``, METHODS.md §3), so that
    search, fusion, ILM training, ILMA and MWER treat them alike.

    Log-probabilities have V+1 columns: pieces ``0 .. V-1`` and column ``V`` = end of sentence. An LM
    without an end of sentence (the transducer's internal LM, normalised over the V labels) puts 0 there
    (log 1: ending costs nothing) and has ``has_eos = False``. ``V`` is also the start label fed first.

    A subclass defines ``vocab_size`` (V) and
      - ``initial_state(n, device)`` → the state of n empty histories (nothing fed);
      - ``step(tokens (N,), state) → (logp (N, V+1), state)``: feed one token per history, get the
        next token's log-probs (search; no gradient; a state is stepped from at most once);
      - ``select(state, index (M,))`` → the histories ``index`` (beam reordering);
      - ``where(mask (N,), new, old)`` → per history ``new`` where mask else ``old``, for ``new`` a step
        from ``old``;
      - ``logprobs(targets (B, U)) → (B, U+1, V+1)``: the next token's log-probs after each prefix
        ``[start, y1, …, yU]`` of whole sequences (training, rescoring; differentiable).
    and gets ``start``, ``token_logprobs`` and ``score`` from them.
    """

    has_eos = True
    vocab_size: int

    def start(self, n: int, device) -> tuple[Tensor, object]:
        """The first token's log-probs (N, V+1) and the state after the start label."""
        return self.step(torch.full((n,), self.vocab_size, dtype=torch.long, device=device),
                         self.initial_state(n, device))

    def token_logprobs(self, targets: Tensor, target_lengths: Tensor, eos: bool = True) -> Tensor:
        """log P(y_u | y<u) of targets (B, U), lengths (B,), and at u = U_b of the end of sentence (if
        ``eos``) → (B, U+1), 0 after the end."""
        return gather_tokens(self.logprobs(targets), targets, target_lengths, eos)

    def score(self, targets: Tensor, target_lengths: Tensor, eos: bool = True) -> Tensor:
        """log P(Y) of each sequence of targets (B, U), lengths (B,) → (B,)."""
        return self.token_logprobs(targets, target_lengths, eos).sum(1)


def gather_tokens(logp: Tensor, targets: Tensor, target_lengths: Tensor, eos: bool = True) -> Tensor:
    """Log-probs (B, U+1, V+1) after each prefix of targets (B, U) → those of the targets and, at U_b,
    of the end of sentence (column V; if ``eos``) (B, U+1), 0 after the end."""
    v = logp.shape[-1] - 1
    nxt = F.pad(targets, (0, 1)).scatter(1, target_lengths[:, None], v).clamp(0, v)  # (B, U+1) [y1 … end …]
    out = logp.gather(-1, nxt[..., None])[..., 0]
    return out.masked_fill(padding_mask(target_lengths + int(eos), nxt.shape[1]), 0.0)


def ilm_loss(ilm: TokenLM, targets: Tensor, target_lengths: Tensor,
             reference: TokenLM | None = None) -> dict[str, Tensor]:
    """The internal-LM training terms of targets (B, U), lengths (B,), each summed over a sequence (B,):
    'ce' = −log P_ILM(Y) (ILM training, METHODS.md §3; the end of sentence included where the ILM has
    one); with ``reference`` (the unadapted ILM: ILMA) also 'kl' = Σ_u KL(P_ref(·|y<u) ‖ P_ILM(·|y<u))
    over the same positions, the reference without gradient."""
    logp = ilm.logprobs(targets).float()  # (B, U+1, V+1)
    out = {"ce": -gather_tokens(logp, targets, target_lengths).sum(1)}
    if reference is not None:
        with torch.no_grad():
            ref = reference.logprobs(targets).float()
        kl = (ref.exp() * (ref - logp)).sum(-1)  # (B, U+1)
        out["kl"] = kl.masked_fill(padding_mask(target_lengths + int(ilm.has_eos), kl.shape[1]), 0.0).sum(1)
    return out
