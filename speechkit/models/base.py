"""What every trainable model brick shares: encode with ``encoder``, lose via ``encoded_loss``."""

from __future__ import annotations

from torch import Tensor

from ..lego.brick import Brick
from ..lego.interface import Encoded


class EncoderDecoderModel(Brick):
    """Base of the model bricks (``Transducer``, ``AttentionModel``): an ``encoder`` attribute and
    an ``encoded_loss(enc, targets, target_lengths, skip)`` method, which ``SpeechTask`` and the
    searches rely on. ``forward`` encodes; ``loss`` encodes then scores."""

    def forward(self, inputs: Tensor, lengths: Tensor) -> Encoded:
        """inputs (B, T, F) features or (B, T) token ids, lengths (B,) → ``Encoded``; search runs on it."""
        return self.encoder(inputs, lengths)

    def loss(self, inputs: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor,
             skip: frozenset[str] = frozenset(), **extras: Tensor) -> dict[str, Tensor]:
        """targets (B, U) padded with anything → {'loss', <term>: ...} per utterance; terms named in
        ``skip`` are not computed; ``extras`` (e.g. STAST's transcripts) go to ``encoded_loss``."""
        return self.encoded_loss(self(inputs, lengths), targets, target_lengths, skip, **extras)
