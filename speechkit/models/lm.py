"""Token-level language models over the interface vocabulary (external LMs for fusion, METHODS.md §3).

A ``LanguageModel`` is a label-context body with the predictor API of
``speechkit.lego.transducer`` (``LSTMPredictor``, ``TransformerPredictor``, ``StatelessPredictor``)
plus an output layer over ``V + 1`` ids: pieces ``0 .. V-1`` and ``V`` = end of sentence, which is
also the start label the body is fed first (the id of the CTC/transducer blank, never in text).
It is a ``TokenLM`` (``speechkit.models.base``), like every model's internal LM.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.brick import Brick
from .base import TokenLM


class LanguageModel(Brick, TokenLM):
    """body (predictor API, output width ``dim``) → dropout → Linear(dim, V + 1).

    Training: ``loss(inputs, lengths, targets, target_lengths)`` → summed token NLL per sentence
    (end of sentence included); the inputs are ignored (the targets are the text).
    Search and scoring: the ``TokenLM`` protocol (``start``, ``step``, ``select``, ``where``,
    ``logprobs``, ``token_logprobs``, ``score``).
    """

    def __init__(self, body: nn.Module, dim: int, dropout: float = 0.1):
        super().__init__()
        self.body, self.vocab_size = body, body.vocab_size
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(dim, self.vocab_size + 1)

    @property
    def eos(self) -> int:
        return self.vocab_size

    def forward(self, targets: Tensor) -> Tensor:
        """targets (B, U) → logits (B, U+1, V+1) for the contexts [start, y1, …, yU]."""
        return self.out(self.drop(self.body(targets)))

    def logprobs(self, targets: Tensor) -> Tensor:
        return self(targets).float().log_softmax(-1)

    def loss(self, inputs: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor,
             scales: Mapping[str, float] | None = None) -> dict[str, Tensor]:
        """{'loss': summed NLL per sentence, 'tokens': mean tokens per sentence (end included)}."""
        nll = -self.score(targets, target_lengths).sum()
        b = targets.shape[0]
        return {"loss": nll / b, "tokens": (target_lengths.sum() + b).float() / b}

    def initial_state(self, n: int, device):
        return self.body.initial_state(n, device)

    def step(self, tokens: Tensor, state) -> tuple[Tensor, object]:
        out, state = self.body.step(tokens, state)
        return F.log_softmax(self.out(out).float(), -1), state

    def select(self, state, index: Tensor):
        return self.body.select(state, index)

    def where(self, mask: Tensor, new, old):
        return self.body.where(mask, new, old)
