"""N:M structured sparsity along the reduction dimension, trained with SR-STE (METHODS.md §4).

Every weight kind keeps its reduction (input) dimension at dim 1: Linear (out, in), Conv
(C_out, C_in/groups, k…), Embedding (num, dim) — its rows are what a tied or lookup-then-matmul
consumer reduces over —, LSTM/GRU gate matrices (gates·H, in) and attention in-projections
(3D, D). A group is M consecutive entries along dim 1 at each position of the other dims, which
is the layout 2:4 tensor cores need (2 of every 4 along K).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def nm_mask(w: Tensor, n: int, m: int) -> Tensor:
    """Keep the ``n`` largest |w| in every group of ``m`` along dim 1 → bool mask shaped like ``w``.

    Ties are broken by position (``topk``), so exactly ``n`` entries per group are kept.
    """
    if w.ndim < 2 or w.shape[1] % m:
        raise ValueError(f"N:M needs dim 1 divisible by M={m}, got shape {tuple(w.shape)}")
    moved = w.detach().abs().movedim(1, -1)  # (out, k…, in)
    groups = moved.reshape(-1, m)  # (out·k·in/M, M)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.topk(n, dim=1).indices, True)
    return keep.reshape(moved.shape).movedim(-1, 1)


def group_counts(mask: Tensor, m: int) -> Tensor:
    """Non-zeros per group of ``m`` along dim 1 → (number of groups,) ints (for checks and tests)."""
    return mask.movedim(1, -1).reshape(-1, m).sum(1)


class _SRSTE(torch.autograd.Function):
    """Forward ``w ⊙ mask``; backward ``g + λ·(1 − mask) ⊙ w`` into the dense ``w`` (λ = 0: STE)."""

    @staticmethod
    def forward(ctx, w: Tensor, mask: Tensor, lam: float) -> Tensor:
        ctx.save_for_backward(w, mask)
        ctx.lam = lam
        return w * mask

    @staticmethod
    def backward(ctx, g: Tensor):
        w, mask = ctx.saved_tensors
        if ctx.lam:
            g = g + ctx.lam * (~mask) * w
        return g, None, None


def srste(w: Tensor, mask: Tensor, lam: float) -> Tensor:
    """Masked weight whose gradient flows straight through to ``w`` plus SR-STE's decay of pruned entries."""
    return _SRSTE.apply(w, mask, lam)


class NMSparse(nn.Module):
    """Parametrization ``W → W ⊙ E`` with E the N:M mask of the current dense W.

    The mask is recomputed from the dense weights on every forward (train and eval) and kept in
    the ``mask`` buffer (saved with checkpoints), unless ``frozen``: then the stored mask is used.
    ``enabled = False`` (a dense warm-up) passes W through unchanged.

    Args:
        shape: the weight's shape; n, m: keep n of every m; srste_lambda: λ_W (0 = vanilla STE).
    """

    def __init__(self, shape: tuple[int, ...], n: int = 2, m: int = 4, srste_lambda: float = 2e-4):
        super().__init__()
        if not 0 < n < m:
            raise ValueError(f"N:M sparsity needs 0 < N < M, got {n}:{m}")
        self.n, self.m, self.srste_lambda = n, m, srste_lambda
        self.enabled, self.frozen = True, False
        self.register_buffer("mask", torch.ones(shape, dtype=torch.bool))

    def forward(self, w: Tensor) -> Tensor:
        if not self.enabled:
            return w
        if not self.frozen:  # a new tensor (not in place: an earlier use may still need the old one)
            self.mask = nm_mask(w, self.n, self.m)
        return srste(w, self.mask, self.srste_lambda) if torch.is_grad_enabled() else w * self.mask

    def extra_repr(self) -> str:
        return f"{self.n}:{self.m}, srste_lambda={self.srste_lambda}"
