"""The transducer ASR model: encoder brick + predictor + joiner, RNN-T loss + CTC on the interface."""

from __future__ import annotations

import torchaudio.functional as AF
from torch import Tensor, nn

from ..lego.brick import Brick
from ..lego.encoders import SpeechEncoder
from ..lego.interface import Encoded, ctc_loss
from ..lego.transducer import Joiner


class Transducer(Brick):
    """RNN-T over the interface vocabulary, with the LegoNN marginal head trained by CTC.

    loss = rnnt_weight · RNNT (torchaudio) + ctc_weight · CTC(marginal head), both summed
    over the batch and divided by the batch size.
    """

    def __init__(self, encoder: SpeechEncoder, predictor: nn.Module, joiner: Joiner,
                 ctc_weight: float = 0.3, rnnt_weight: float = 1.0):
        super().__init__()
        vocabs = {"encoder head": encoder.vocab_size, "predictor": predictor.vocab_size,
                  "joiner": joiner.vocab_size}
        if len({v for v in vocabs.values() if v is not None}) != 1:
            raise ValueError(f"vocabulary sizes of the parts disagree: {vocabs}")
        self.encoder, self.predictor, self.joiner = encoder, predictor, joiner
        self.ctc_weight, self.rnnt_weight = ctc_weight, rnnt_weight

    @property
    def vocab_size(self) -> int:
        return self.joiner.vocab_size

    @property
    def blank(self) -> int:
        return self.joiner.vocab_size

    def forward(self, feats: Tensor, lengths: Tensor) -> Encoded:
        """Encode features (B, T, F) → Encoded; search runs on the result."""
        return self.encoder(feats, lengths)

    def loss(self, feats: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor,
             skip: frozenset[str] = frozenset()) -> dict[str, Tensor]:
        """feats (B, T, F), targets (B, U) padded with anything → {'loss', 'rnnt', 'ctc'}.

        Terms named in ``skip`` are not computed (a CTC-only warm-up skips the costly
        (B, T, U+1, V+1) transducer lattice).
        """
        return self.encoded_loss(self.encoder(feats, lengths), targets, target_lengths, skip)

    def encoded_loss(self, enc: Encoded, targets: Tensor, target_lengths: Tensor,
                     skip: frozenset[str] = frozenset()) -> dict[str, Tensor]:
        """``loss`` from an already computed encoder output (evaluation reuses it for search)."""
        b = targets.shape[0]
        out = {}
        if self.rnnt_weight and "rnnt" not in skip:
            pred = self.predictor(targets)  # (B, U+1, P)
            logits = self.joiner(enc.hidden[:, :, None], pred[:, None])  # (B, T, U+1, V+1)
            out["rnnt"] = AF.rnnt_loss(logits.float(), targets.int(), enc.lengths.int(),
                                       target_lengths.int(), blank=self.blank, reduction="sum") / b
        if self.ctc_weight and "ctc" not in skip:
            out["ctc"] = ctc_loss(enc, targets, target_lengths) / b
        out["loss"] = (self.rnnt_weight * out.get("rnnt", 0.0)
                       + self.ctc_weight * out.get("ctc", 0.0))
        return out

    def internal_lm_logprobs(self, pred_out: Tensor) -> Tensor:
        """log P_ILM over non-blank labels from predictor outputs (..., P) → (..., V)."""
        return self.joiner.internal_lm_logits(pred_out)[..., : self.vocab_size].log_softmax(-1)
