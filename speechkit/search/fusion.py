"""Shallow fusion with an external LM and internal-LM estimation (ILME), METHODS.md §3.

    score(Y) = log P_E2E(Y|X) + λ_LM log P_LM(Y) − λ_ILM log P_ILM(Y) + β |Y|

The searches (``transducer.beam_search``, ``attention.attention_beam_search``) add these terms per
emitted token; a transducer's blank steps get none of them and the LM advances on labels only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Fusion:
    """Fusion weights and the external LM (a ``speechkit.models.lm.LanguageModel`` or None).

    lm_weight: λ_LM; ilm_weight: λ_ILM (the model's internal LM is subtracted: ILME; without an
    external LM this is ILM subtraction alone); length_reward: β per emitted token; lm_eos: add
    λ_LM log P_LM(end of sentence | Y) at the end of each hypothesis.
    """

    lm: torch.nn.Module | None = None
    lm_weight: float = 0.0
    ilm_weight: float = 0.0
    length_reward: float = 0.0
    lm_eos: bool = True

    def __post_init__(self):
        if self.lm_weight and self.lm is None:
            raise ValueError(f"lm_weight={self.lm_weight} but no external LM was given")
        if self.lm_weight < 0 or self.ilm_weight < 0:
            raise ValueError(f"fusion weights must be >= 0 (lm_weight={self.lm_weight}, "
                             f"ilm_weight={self.ilm_weight}); λ_ILM is subtracted by the search")

    def terms(self, lm_logp: Tensor | None, ilm_logp: Tensor | None, reward: bool = True):
        """λ_LM · lm_logp − λ_ILM · ilm_logp (+ β if ``reward``), for log-probs (..., V) of the same
        shape; a missing term counts 0. Returns a tensor or the float β."""
        out = self.length_reward if reward else 0.0
        if lm_logp is not None and self.lm is not None:
            out = out + self.lm_weight * lm_logp
        if ilm_logp is not None:
            out = out - self.ilm_weight * ilm_logp
        return out

    def lm_scorer(self, n: int, device) -> LMState | None:
        return LMState(self.lm, n, device) if self.lm is not None else None


class LMState:
    """The external LM's state and next-token log-probs (N, V+1) for N hypothesis slots."""

    def __init__(self, lm, n: int, device):
        self.lm = lm
        self.logp, self.state = lm.start(n, device)

    def advance(self, parents: Tensor, tokens: Tensor, emit: Tensor) -> None:
        """Reorder the slots (parents (N,)), then feed ``tokens`` (N,) to the rows where ``emit``."""
        self.state, self.logp = self.lm.select(self.state, parents), self.logp[parents]
        if emit.any():
            logp, state = self.lm.step(torch.where(emit, tokens, self.lm.eos), self.state)
            self.state = self.lm.where(emit, state, self.state)
            self.logp = torch.where(emit[:, None], logp, self.logp)
