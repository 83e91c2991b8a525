"""Attention encoder-decoder (AED) models: any encoder brick + ``AttentionDecoder``.

The LegoNN model of METHODS.md §1: ``loss = ce_weight · CE(decoder) + ctc_weight · Σ CTC(interfaces)``,
1.0 / 1.0 by default. Used for MT (text encoder), ASR (speech encoder) and chains.
"""

from __future__ import annotations

import warnings

from torch import Tensor, nn

from ..lego.decoders import AttentionDecoder
from ..lego.interface import Encoded, interface_ctc
from .base import EncoderDecoderModel


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
                     skip: frozenset[str] = frozenset()) -> dict[str, Tensor]:
        """Losses of an encoded batch, targets (B, U) → {'loss', 'ce', 'ctc'[, 'ilm']} (per utterance)."""
        b = targets.shape[0]
        out = {}
        if self.ce_weight and "ce" not in skip:
            out["ce"] = self.decoder.cross_entropy(enc, targets, target_lengths, self.label_smoothing) / b
        if self.ctc_weight and "ctc" not in skip:
            out["ctc"] = interface_ctc(enc, targets, target_lengths) / b
        if self.ilm_weight and "ilm" not in skip:
            out["ilm"] = self.decoder.cross_entropy(None, targets, target_lengths) / b
        out["loss"] = (self.ce_weight * out.get("ce", 0.0) + self.ctc_weight * out.get("ctc", 0.0)
                       + self.ilm_weight * out.get("ilm", 0.0))
        return out

    def internal_lm_logprobs(self, prev: Tensor) -> Tensor:
        """log P_ILM of the next token after each prefix of prev (B, L) (starting with V) → (B, L, V+1)."""
        return self.decoder.internal_lm_logits(prev).float().log_softmax(-1)
