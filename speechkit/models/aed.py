"""Attention encoder-decoder (AED) models: any encoder brick + ``AttentionDecoder``.

The LegoNN model of METHODS.md §1: ``loss = ce_weight · CE(decoder) + ctc_weight · Σ CTC(interfaces)``,
1.0 / 1.0 by default. Used for MT (text encoder), ASR (speech encoder) and chains.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..lego.decoders import AttentionDecoder
from ..lego.interface import Encoded, interface_ctc
from .base import EncoderDecoderModel, TokenLM, ilm_loss, term_scales


class DecoderILM(TokenLM):
    """The internal LM of an ``AttentionDecoder`` (METHODS.md §3): the decoder with its attention context
    set to zero (every cross-attention term left out), as a ``TokenLM`` over V pieces + end of sentence."""

    def __init__(self, decoder: AttentionDecoder):
        self.decoder, self.vocab_size = decoder, decoder.vocab_size

    def initial_state(self, n: int, device):
        return self.decoder.initial_state(n, device)

    def step(self, tokens: Tensor, state) -> tuple[Tensor, object]:
        logits, state = self.decoder.step(tokens, state)
        return logits.float().log_softmax(-1), state

    def select(self, state, index: Tensor):
        return self.decoder.select(state, index)

    def where(self, mask: Tensor, new, old):
        return self.decoder.where(mask, new, old)

    def logprobs(self, targets: Tensor) -> Tensor:
        prev = torch.cat([targets.new_full((targets.shape[0], 1), self.vocab_size), targets], 1)  # (B, U+1)
        return self.decoder.internal_lm_logits(prev).float().log_softmax(-1)


class AttentionModel(EncoderDecoderModel):
    """encoder (speech, text, middle or ``Chain``) → ``AttentionDecoder``.

    Args:
        encoder: maps (inputs, lengths) → ``Encoded`` with marginal logits over the decoder's vocabulary.
        decoder: the attention decoder (with an ingestor: LegoNN; without: classic baseline).
        ctc_weight: weight of the interface CTC (0 for a monolithic baseline without a head).
        ce_weight: weight of the decoder cross-entropy; label_smoothing: of that cross-entropy.
        ilm_weight: weight of the internal LM's cross-entropy on the targets (ILM training,
            METHODS.md §3; the ILM is the decoder with zero attention context).
    """

    def __init__(self, encoder: nn.Module, decoder: AttentionDecoder, ctc_weight: float = 1.0,
                 ce_weight: float = 1.0, label_smoothing: float = 0.1, ilm_weight: float = 0.0):
        super().__init__()
        enc_vocab = getattr(encoder, "vocab_size", None)
        if enc_vocab is not None and enc_vocab != decoder.vocab_size:
            raise ValueError(f"encoder head vocab_size={enc_vocab} != decoder "
                             f"vocab_size={decoder.vocab_size}")
        if decoder.ingestor is not None and not ctc_weight:
            warnings.warn("a LegoNN decoder trained without the interface CTC (ctc_weight=0): "
                          "its bricks will not swap (METHODS.md §1: the CTC loss is mandatory)", stacklevel=2)
        self.encoder, self.decoder = encoder, decoder
        self.ctc_weight, self.ce_weight, self.label_smoothing = ctc_weight, ce_weight, label_smoothing
        self.ilm_weight = ilm_weight

    @property
    def vocab_size(self) -> int:
        return self.decoder.vocab_size

    @property
    def blank(self) -> int:
        return self.decoder.vocab_size

    def encoded_loss(self, enc: Encoded, targets: Tensor, target_lengths: Tensor,
                     scales: Mapping[str, float] | None = None) -> dict[str, Tensor]:
        """Losses of an encoded batch, targets (B, U) → {'loss', 'ce', 'ctc'[, 'ilm']} (per utterance)."""
        b = targets.shape[0]
        w = term_scales(scales, {"ce": self.ce_weight, "ctc": self.ctc_weight, "ilm": self.ilm_weight})
        out = {}
        if w["ce"]:
            out["ce"] = self.decoder.cross_entropy(enc, targets, target_lengths, self.label_smoothing) / b
        if w["ctc"]:
            out["ctc"] = interface_ctc(enc, targets, target_lengths) / b
        if w["ilm"]:
            out["ilm"] = ilm_loss(self.internal_lm(), targets, target_lengths)["ce"].sum() / b
        out["loss"] = sum(w[k] * v for k, v in out.items())
        return out

    def internal_lm(self) -> DecoderILM:
        """The internal LM: the decoder with zero attention context (``TokenLM``)."""
        return DecoderILM(self.decoder)
