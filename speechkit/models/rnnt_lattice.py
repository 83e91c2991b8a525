"""The RNN-T lattice's forward algorithm: log P(y | x) from the arcs' log-probs (METHODS.md §6, §8).

Both transducer losses of speechkit end here: the pruned loss (``pruned_rnnt``) on its simple and
pruned lattices, the fused exact loss (``fused_rnnt``) on the full one. On CUDA the recursion runs as
Triton kernels (``rnnt_triton``: one program per utterance, a log-semiring scan per frame, β for the
backward pass); elsewhere in PyTorch, one ``logcumsumexp`` per frame (the label steps inside a frame
form a linear recursion in log space), in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

NEG = -1.0e4  # log-probability of a removed arc: finite, so cumulative sums stay exact in float64
BACKENDS = ("auto", "triton", "torch")


def use_triton(backend: str, x: Tensor) -> bool:
    """Whether ``backend`` ("auto", "triton" or "torch") means the Triton kernels for tensors like x:
    "auto" picks them on CUDA."""
    if backend not in BACKENDS:
        raise ValueError(f"transducer loss backend must be one of {BACKENDS}, got {backend!r}")
    return backend == "triton" or (backend == "auto" and x.is_cuda)


def lattice_logprob(px: Tensor, py: Tensor, frames: Tensor, labels: Tensor, backend: str = "auto") -> Tensor:
    """log P(y | x) summed over all alignments of the RNN-T lattice.

    px: (B, T, U+1) log-prob of emitting label y_{u+1} at node (t, u) (ignored at u ≥ U_b);
    py: (B, T, U+1) log-prob of blank at node (t, u); frames (B,) = T_b; labels (B,) = U_b → (B,).
    ``backend``: "triton" (``rnnt_triton``; on a CPU only under ``TRITON_INTERPRET=1``), "torch", or
    "auto" (Triton for CUDA tensors, PyTorch otherwise).
    """
    if use_triton(backend, px):
        from .rnnt_triton import triton_lattice_logprob

        return triton_lattice_logprob(px, py, frames, labels)
    return _torch_lattice_logprob(px, py, frames, labels)


def _torch_lattice_logprob(px: Tensor, py: Tensor, frames: Tensor, labels: Tensor) -> Tensor:
    """``lattice_logprob`` in PyTorch, a ``logcumsumexp`` per frame in float64 (returned in px's dtype)."""
    b, t_max, u1 = px.shape
    dtype = px.dtype
    px, py = px.double(), py.double()
    u_idx = torch.arange(u1, device=px.device)
    px = px.masked_fill(u_idx >= labels[:, None, None], NEG)  # no label after the last one
    alpha = torch.full((b, u1), float("-inf"), dtype=torch.float64, device=px.device)
    alpha[:, 0] = 0.0
    final = torch.zeros(b, dtype=torch.float64, device=px.device)
    rows = torch.arange(b, device=px.device)
    for t in range(t_max):
        enter = alpha if t == 0 else alpha + py[:, t - 1]  # (B, U+1): arrive at frame t by blank
        c = torch.cat([px.new_zeros(b, 1), px[:, t, :-1].cumsum(-1)], -1)  # Σ_{j<u} px[t, j]
        alpha = torch.logcumsumexp(enter - c, -1) + c  # label steps within frame t
        last = frames - 1 == t
        final = torch.where(last, alpha[rows, labels] + py[rows, t, labels], final)
    return final.to(dtype)
