"""Shallow fusion with an external LM and internal-LM estimation (ILME), METHODS.md §3.

    score(Y) = log P_E2E(Y|X) + λ_LM log P_LM(Y) − λ_ILM log P_ILM(Y) + β |Y|

``Fusion`` owns the LM side of that score for every search and for MWER. The external LM and the
model's internal LM (``model.internal_lm()``) are both ``TokenLM``s (``speechkit.models.base``: V+1
log-probs, column V the end of sentence), so they are handled alike: ``Fusion.start`` steps them over
N hypothesis slots (``FusionState``: what each next piece or the end would add, ``advance`` to reorder
and feed), ``Fusion.sequence_score`` scores whole sequences. The searches add the piece terms per
emitted token (a transducer's blank steps get none, and the LMs advance on labels only) and the end
terms when a hypothesis ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..nn.device import may_any


@dataclass(frozen=True)
class Fusion:
    """Fusion weights and the external LM (a ``speechkit.models.lm.LanguageModel`` or None).

    lm_weight: λ_LM; ilm_weight: λ_ILM (the model's internal LM is subtracted: ILME; without an
    external LM this is ILM subtraction alone); length_reward: β per emitted token; lm_eos: add
    λ_LM log P_LM(end of sentence | Y) at the end of each hypothesis (the internal LM's end of
    sentence, where it has one, is always subtracted).
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

    def terms(self, model) -> list[tuple[object, float, bool]]:
        """The LM terms in use: (``TokenLM``, signed weight, whether its end of sentence counts)."""
        out = []
        if self.lm is not None and self.lm_weight:
            out.append((self.lm, self.lm_weight, self.lm_eos))
        if self.ilm_weight:
            out.append((model.internal_lm(), -self.ilm_weight, True))
        return out

    def start(self, model, n: int, device) -> FusionState:
        """The LMs of ``model``'s fusion over n empty hypothesis slots."""
        return FusionState(self, model, n, device)

    def sequence_score(self, model, e2e: Tensor, targets: Tensor, target_lengths: Tensor) -> Tensor:
        """Fused scores of whole sequences: e2e = log P_E2E(Y|X) (B,), targets (B, U), lengths (B,) → (B,).
        The internal-LM term carries gradient (MWER-ILME); the external LM is fixed (no gradient)."""
        score = e2e + self.length_reward * target_lengths
        for lm, w, eos in self.terms(model):
            with torch.set_grad_enabled(torch.is_grad_enabled() and lm is not self.lm):
                lm_score = lm.score(targets, target_lengths, eos)
            score = score + w * lm_score
        return score


class FusionState:
    """The fusion's LMs stepped over N hypothesis slots: per LM its state and next-token log-probs
    (N, V+1)."""

    def __init__(self, fusion: Fusion, model, n: int, device):
        self.reward, self.v, self.n, self.device = fusion.length_reward, model.vocab_size, n, device
        self.lms = fusion.terms(model)
        started = [lm.start(n, device) for lm, _, _ in self.lms]
        self.logp, self.state = [s[0] for s in started], [s[1] for s in started]

    def piece_terms(self) -> Tensor:
        """(N, V): what emitting each piece adds, β + λ_LM log P_LM(piece) − λ_ILM log P_ILM(piece)."""
        out = torch.full((self.n, self.v), self.reward, device=self.device)
        for (_, w, _), logp in zip(self.lms, self.logp):
            out = out + w * logp[:, : self.v]
        return out

    def end_terms(self) -> Tensor:
        """(N,): what ending adds, λ_LM log P_LM(end) (if ``lm_eos``) − λ_ILM log P_ILM(end)."""
        out = torch.zeros(self.n, device=self.device)
        for (_, w, eos), logp in zip(self.lms, self.logp):
            if eos:
                out = out + w * logp[:, self.v]
        return out

    def advance(self, parents: Tensor, tokens: Tensor, emit: Tensor | None = None) -> None:
        """Reorder the slots (parents (N',) of the old slots), then feed ``tokens`` (N',) to the slots
        where ``emit`` (N',) (None: all)."""
        self.n = parents.shape[0]
        for i, (lm, _, _) in enumerate(self.lms):
            state, logp = lm.select(self.state[i], parents), self.logp[i][parents]
            if emit is None:
                logp, state = lm.step(tokens, state)
            elif may_any(emit):
                new_logp, new_state = lm.step(torch.where(emit, tokens, lm.vocab_size), state)
                state = lm.where(emit, new_state, state)
                logp = torch.where(emit[:, None], new_logp, logp)
            self.state[i], self.logp[i] = state, logp
