"""Fake quantization for quantization-aware training (METHODS.md §5).

LSQ (learned step size): ``v̂ = round(clip(v/s, −Q_N, Q_P))·s`` with a straight-through
gradient for v inside the range, ``∂v̂/∂s = −v/s + round(v/s)`` inside and ``−Q_N`` / ``Q_P`` at
the clips, the step's gradient scaled by ``g = 1/sqrt(N·Q_P)`` and ``s`` initialised to
``2·mean|v|/sqrt(Q_P)`` on the first quantized forward. Weights use one step per output channel
(dim 0), activations one per tensor; both are signed (``Q_N = 2^(b−1)``, ``Q_P = 2^(b−1) − 1``),
so an 8-bit weight or activation is exactly an int8 value times its step.

Noise tempering (arXiv 2212.05603; reconstruction in METHODS.md §5): during training,
``ŵ = Q_s(w) + γ(t)·ξ ⊙ (Q_s(w) − w).detach()`` with ``ξ ~ U(−1, 1)``; the schedule
(``speechkit.train.callbacks.CompressionSchedule``) sets ``γ(t) = γ0·exp(−t/τ)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def qrange(bits: int) -> tuple[int, int]:
    """Signed integer range (Q_N, Q_P) of ``bits`` bits: 8 → (128, 127)."""
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be in [2, 16], got {bits}")
    return 2 ** (bits - 1), 2 ** (bits - 1) - 1


def _grad_scale(x: Tensor, g: float) -> Tensor:
    """Identity forward, gradient multiplied by g."""
    return (x - x * g).detach() + x * g


def _round_ste(x: Tensor) -> Tensor:
    """round() forward, identity gradient."""
    return (x.round() - x).detach() + x


def lsq(v: Tensor, step: Tensor, qn: int, qp: int, grad_scale: float) -> Tensor:
    """LSQ fake quantization of ``v`` with step ``step`` (broadcastable to v) → same shape as v."""
    s = _grad_scale(step, grad_scale)
    return _round_ste(torch.clamp(v / s, -qn, qp)) * s


def integer_codes(v: Tensor, step: Tensor, bits: int) -> Tensor:
    """The integers LSQ maps ``v`` to: ``round(clip(v/s, −Q_N, Q_P))`` (no gradient)."""
    qn, qp = qrange(bits)
    return torch.clamp(v / step, -qn, qp).round()


class _LSQBase(nn.Module):
    def __init__(self, bits: int, channels: int):
        super().__init__()
        self.bits = bits
        self.qn, self.qp = qrange(bits)
        self.enabled = True
        self.noise = 0.0  # γ(t) of noise tempering, set by the schedule
        self.step = nn.Parameter(torch.ones(channels))
        self.register_buffer("initialized", torch.tensor(False))

    def _quantize(self, v: Tensor, step: Tensor, n: int) -> Tensor:
        q = lsq(v, step, self.qn, self.qp, 1.0 / math.sqrt(n * self.qp))
        if self.noise and self.training:
            q = q + self.noise * (torch.rand_like(v) * 2 - 1) * (q - v).detach()
        return q

    def extra_repr(self) -> str:
        return f"bits={self.bits}, steps={self.step.numel()}"


class WeightLSQ(_LSQBase):
    """Parametrization ``W → Q_s(W)``, one learned step per output channel (dim 0).

    Args:
        shape: the weight's shape; bits: 8 or 4 (any 2–16); per_channel: False = one step.
    """

    def __init__(self, shape: tuple[int, ...], bits: int = 8, per_channel: bool = True):
        super().__init__(bits, shape[0] if per_channel else 1)

    def forward(self, w: Tensor) -> Tensor:
        if not self.enabled:
            return w
        dims = tuple(range(1, w.ndim))
        if not bool(self.initialized):
            with torch.no_grad():
                mean_abs = w.abs().mean(dims) if self.step.numel() > 1 else w.abs().mean().reshape(1)
                self.step.copy_((2 * mean_abs / math.sqrt(self.qp)).clamp_min(1e-8))
                self.initialized.fill_(True)
        step = self.step.view(-1, *[1] * (w.ndim - 1))
        return self._quantize(w, step, w[0].numel() if self.step.numel() > 1 else w.numel())


class ActLSQ(_LSQBase):
    """Per-tensor LSQ fake quantization of a layer's input activation (one learned step)."""

    def __init__(self, bits: int = 8):
        super().__init__(bits, 1)

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled or not x.is_floating_point():
            return x
        if not bool(self.initialized):
            with torch.no_grad():
                self.step.fill_(max(2 * x.abs().mean().item() / math.sqrt(self.qp), 1e-8))
                self.initialized.fill_(True)
        return self._quantize(x, self.step, x[0].numel() if x.ndim > 1 else x.numel())


def maxabs_step(w: Tensor, bits: int, per_channel: bool = True) -> Tensor:
    """Post-training step of a weight: ``max|w| / Q_P`` per output channel (dim 0) or per tensor."""
    amax = w.abs().amax(tuple(range(1, w.ndim))) if per_channel else w.abs().amax().reshape(1)
    return (amax / qrange(bits)[1]).clamp_min(1e-12)


def step_sizes(model: nn.Module) -> list[nn.Parameter]:
    """The learned LSQ steps of ``model`` (weights' and inputs')."""
    return [m.step for m in model.modules() if isinstance(m, _LSQBase)]


def squat_step(model: nn.Module, optimizer, closure, rho: float, step: int) -> None:
    """One SQuAT-style step (METHODS.md §5; arXiv 2210.07171), alternating by ``step`` parity.

    Even steps: a sharpness-aware (SAM) step on the weights — gradient at ``w + ρ·g/‖g‖`` (g from
    ``closure()`` at w, ‖·‖ over all weights), applied at w; step sizes stay. Odd steps: an LSQ
    step on the step sizes only, weights stay. ``closure()`` zeroes the gradients, computes the loss
    and backpropagates (Lightning's optimizer closure); ``optimizer.step()`` then applies the update.
    """
    steps = {id(p) for p in step_sizes(model)}
    weights = [p for p in model.parameters() if p.requires_grad and id(p) not in steps]
    closure()
    if step % 2:  # the step-size step
        for p in weights:
            p.grad = None
        optimizer.step()
        return
    with torch.no_grad():
        grads = [p.grad for p in weights if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        eps = [None if p.grad is None else rho * p.grad / (norm + 1e-12) for p in weights]
        for p, e in zip(weights, eps):
            if e is not None:
                p.add_(e)
    closure()  # the gradient at the perturbed weights
    with torch.no_grad():
        for p, e in zip(weights, eps):
            if e is not None:
                p.sub_(e)
    for p in step_sizes(model):
        p.grad = None
    optimizer.step()
