"""What every trainable model brick shares: encode with ``encoder``, lose via ``encoded_loss``."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from ..lego.interface import Encoded
from ..nn.brick import Brick


class EncoderDecoderModel(Brick):
    """Base of the model bricks (``Transducer``, ``AttentionModel``): an ``encoder`` attribute and
    an ``encoded_loss(enc, targets, target_lengths, scales)`` method, which ``SpeechTask`` and the
    searches rely on. ``forward`` encodes; ``loss`` encodes then scores."""

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
