"""The LegoNN interface: the ``Encoded`` contract and the marginal head."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from .brick import Brick


@dataclass
class Encoded:
    """What every encoder brick returns.

    hidden: (B, T, D); lengths: (B,); logits: (B, T, V+1) marginal logits over the
    interface vocabulary plus blank (index V), or None for a brick without a head.
    """

    hidden: Tensor
    lengths: Tensor
    logits: Tensor | None = None


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
