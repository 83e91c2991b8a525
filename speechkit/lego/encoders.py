"""Encoder bricks. Speech encoders map features (B, T, F) to ``Encoded``."""

from __future__ import annotations

from torch import Tensor, nn

from ..features import GlobalCMVN
from .brick import Brick
from .interface import Encoded, MarginalHead


class SpeechEncoder(Brick):
    """CMVN → [SpecAugment] → front end → body → marginal head.

    Args:
        frontend: a subsampling module, ``(x (B, T, F), lengths) → (B, T', D), lengths'``.
        body: a sequence model, ``(x (B, T', D), lengths') → (B, T', D)`` (e.g. Conformer).
        head: the marginal head over the interface vocabulary (LegoNN), or None.
        input_dim: feature dimension F (CMVN statistics live here, saved with the brick).
        specaugment: masking applied in training mode only, after CMVN.
    """

    def __init__(self, frontend: nn.Module, body: nn.Module, head: MarginalHead | None = None,
                 input_dim: int = 80, specaugment: nn.Module | None = None):
        super().__init__()
        self.cmvn = GlobalCMVN(input_dim)
        self.specaugment = specaugment
        self.frontend, self.body, self.head = frontend, body, head
        self.input_dim = input_dim

    @property
    def vocab_size(self) -> int | None:
        return None if self.head is None else self.head.vocab_size

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Frames out for ``lengths`` feature frames in (B,) → (B,)."""
        return self.frontend.output_lengths(lengths)

    def forward(self, feats: Tensor, lengths: Tensor) -> Encoded:
        if feats.shape[-1] != self.input_dim:
            raise ValueError(f"expected features with {self.input_dim} dims, got {feats.shape[-1]}")
        x = self.cmvn(feats)
        if self.specaugment is not None:
            x = self.specaugment(x)
        x, lengths = self.frontend(x, lengths)
        h = self.body(x, lengths)
        return Encoded(h, lengths, None if self.head is None else self.head(h))
