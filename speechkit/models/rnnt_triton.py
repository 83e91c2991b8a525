"""The transducer losses' Triton kernels (METHODS.md §6, §8): the RNN-T lattice's forward-backward
recursion, and the per-row normaliser / gradient of the fused loss's logit tiles.

The PyTorch recursion (``rnnt_lattice._torch_lattice_logprob``) loops over frames in Python: on a GPU
that is thousands of tiny kernel launches per step, forward and backward. Here one Triton program
sweeps one utterance's lattice frame by frame with its label positions across the program's lanes:
inside a frame the label steps form a linear recursion in the log semiring,

    α[t, u] = logaddexp(α[t−1, u] + py[t−1, u],  α[t, u−1] + px[t, u−1]),

which is an associative scan over u (``tl.associative_scan``: the element ``(A, B)`` is the map
``x ↦ logaddexp(B, A + x)``, and maps compose), so a frame costs one load and one log-depth scan.
β runs the same scan over the reversed label positions, from the last frame back. The arcs'
gradients are the node occupancies ``exp(α + arc + β_next − log Z)`` (a few elementwise PyTorch ops).

``fused_rnnt`` computes each tile's logits z (N, V+1) with one matmul; ``joint_arcs_rows`` then reads
each row once for its log-sum-exp and the blank and label entries (a running max and sum per lane),
and ``joint_arcs_grad_`` overwrites each row with the logits' gradient in one pass, in z's dtype (a
bf16 tile stays bf16), where the PyTorch ops take four passes and a float32 copy.

Triton kernels are JIT-compiled Python that ships with torch: nothing to build. On CUDA they are
picked automatically (``rnnt_lattice.lattice_logprob``, ``fused_rnnt.joint_arcs``); on a CPU they run
only under Triton's interpreter (``TRITON_INTERPRET=1`` set before this module is imported), which the
tests use, and they are compiled for sm_80 / sm_90 by a test without a GPU. Module-level constants a
kernel reads must be ``tl.constexpr`` (a compiled kernel may not read a plain global).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

NEG = tl.constexpr(-1.0e30)  # log 0 inside the kernels: finite, so log-add-exp never meets inf − inf


@triton.jit
def _compose(a1, b1, a2, b2):
    """(A1, B1) then (A2, B2), each ``x ↦ logaddexp(B, A + x)`` → (A1 + A2, logaddexp(B2, A2 + B1))."""
    c = b1 + a2
    m = tl.maximum(c, b2)
    return a1 + a2, m + tl.log(1.0 + tl.exp(-tl.abs(c - b2)))


@triton.jit
def _alpha_kernel(px, py, frames, labels, alpha, logz, T, U1, BLOCK: tl.constexpr):
    """One program per utterance b: α (B, T, U+1) over its T_b frames and U_b + 1 label positions, and
    log Z = α[T_b − 1, U_b] + py[T_b − 1, U_b] (B,)."""
    b = tl.program_id(0).to(tl.int64)
    t_b = tl.load(frames + b).to(tl.int32)
    u_b = tl.load(labels + b).to(tl.int32)
    u = tl.arange(0, BLOCK)
    row = b * T * U1
    inside = u <= u_b
    into = (u >= 1) & inside  # a label arc enters (t, u) from (t, u − 1)
    a = tl.load(px + row + u - 1, mask=into, other=NEG)
    enter = tl.where(u == 0, 0.0, NEG).to(a.dtype)  # frame 0: the path starts at (0, 0)
    # the next frame's arcs are loaded one frame ahead: their latency hides behind this frame's scan
    next_blank = tl.load(py + row + u, mask=inside, other=NEG)
    next_label = tl.load(px + row + U1 + u - 1, mask=into & (t_b > 1), other=NEG)
    _, x = tl.associative_scan((a, enter), 0, _compose)
    tl.store(alpha + row + u, x, mask=inside)
    for t in range(1, t_b):
        enter = x + next_blank  # blank from frame t − 1
        a = next_label
        next_blank = tl.load(py + row + t * U1 + u, mask=inside, other=NEG)
        next_label = tl.load(px + row + (t + 1) * U1 + u - 1, mask=into & (t + 1 < t_b), other=NEG)
        _, x = tl.associative_scan((a, enter), 0, _compose)
        tl.store(alpha + row + t * U1 + u, x, mask=inside)
    last = tl.sum(tl.where(u == u_b, x, 0.0), 0)
    tl.store(logz + b, last + tl.load(py + row + (t_b - 1) * U1 + u_b))


@triton.jit
def _beta_kernel(px, py, frames, labels, beta, T, U1, BLOCK: tl.constexpr):
    """One program per utterance b: β (B, T, U+1), log P of finishing from node (t, u), swept from the
    last frame back; lane i holds label position U_b − i, so the scan runs the same way as α's."""
    b = tl.program_id(0).to(tl.int64)
    t_b = tl.load(frames + b).to(tl.int32)
    u_b = tl.load(labels + b).to(tl.int32)
    i = tl.arange(0, BLOCK)
    u = u_b - i
    row = b * T * U1
    inside = i <= u_b
    out = (i >= 1) & inside  # a label arc leaves (t, u) to (t, u + 1) below the last label
    t = t_b - 1
    a = tl.load(px + row + t * U1 + u, mask=out, other=NEG)
    enter = tl.load(py + row + t * U1 + u, mask=i == 0, other=NEG)  # the final blank from (T_b − 1, U_b)
    next_blank = tl.load(py + row + (t - 1) * U1 + u, mask=inside & (t > 0), other=NEG)  # one frame ahead
    next_label = tl.load(px + row + (t - 1) * U1 + u, mask=out & (t > 0), other=NEG)
    _, x = tl.associative_scan((a, enter), 0, _compose)
    tl.store(beta + row + t * U1 + u, x, mask=inside)
    for k in range(1, t_b):
        t = t_b - 1 - k
        enter = x + next_blank  # blank to frame t + 1
        a = next_label
        next_blank = tl.load(py + row + (t - 1) * U1 + u, mask=inside & (t > 0), other=NEG)
        next_label = tl.load(px + row + (t - 1) * U1 + u, mask=out & (t > 0), other=NEG)
        _, x = tl.associative_scan((a, enter), 0, _compose)
        tl.store(beta + row + t * U1 + u, x, mask=inside)


def _launch(kernel, px: Tensor, *args) -> None:
    u1 = px.shape[2]
    block = triton.next_power_of_2(u1)
    kernel[(px.shape[0],)](px, *args, px.shape[1], u1, BLOCK=block, num_warps=max(1, min(8, block // 64)))


def occupancies(px: Tensor, py: Tensor, frames: Tensor, labels: Tensor, alpha: Tensor, beta: Tensor,
                logz: Tensor) -> tuple[Tensor, Tensor]:
    """∂ log Z / ∂px, ∂ log Z / ∂py (each (B, T, U+1)): the posterior probability of each arc,
    ``exp(α[t, u] + arc + β[next node] − log Z)``; 0 outside the lattice and at px[·, U_b]."""
    b, t_max, u1 = px.shape
    t_idx = torch.arange(t_max, device=px.device)[:, None]
    u_idx = torch.arange(u1, device=px.device)
    t_b, u_b = frames[:, None, None], labels[:, None, None]
    end = (t_idx == t_b - 1) & (u_idx == u_b)  # the final blank leaves the lattice: β after it is 0
    after_blank = torch.cat([beta[:, 1:], beta.new_full((b, 1, u1), NEG.value)], 1).masked_fill(end, 0.0)
    after_label = torch.cat([beta[..., 1:], beta.new_full((b, t_max, 1), NEG.value)], 2)
    rest = alpha - logz[:, None, None]
    g_py = torch.where((t_idx < t_b) & (u_idx <= u_b), (rest + py + after_blank).exp(), 0.0)
    g_px = torch.where((t_idx < t_b) & (u_idx < u_b), (rest + px + after_label).exp(), 0.0)
    return g_px, g_py


class _Lattice(torch.autograd.Function):
    @staticmethod
    def forward(ctx, px: Tensor, py: Tensor, frames: Tensor, labels: Tensor) -> Tensor:
        alpha = torch.full_like(px, NEG.value)
        logz = px.new_empty(px.shape[0])
        _launch(_alpha_kernel, px, py, frames, labels, alpha, logz)
        ctx.save_for_backward(px, py, frames, labels, alpha, logz)
        return logz

    @staticmethod
    def backward(ctx, grad: Tensor):
        px, py, frames, labels, alpha, logz = ctx.saved_tensors
        beta = torch.full_like(px, NEG.value)
        _launch(_beta_kernel, px, py, frames, labels, beta)
        g_px, g_py = occupancies(px, py, frames.long(), labels.long(), alpha, beta, logz)
        g = grad[:, None, None].to(px.dtype)
        return g_px * g, g_py * g, None, None


def triton_lattice_logprob(px: Tensor, py: Tensor, frames: Tensor, labels: Tensor) -> Tensor:
    """log P(y | x) over all alignments (B,) for the arcs px (labels), py (blanks), each (B, T, U+1),
    and the lengths frames, labels (B,); differentiable in px and py. Computes in px's dtype (float32
    or float64; half precisions are promoted to float32)."""
    dtype = px.dtype if px.dtype in (torch.float32, torch.float64) else torch.float32
    px, py = px.to(dtype).contiguous(), py.to(dtype).contiguous()
    return _Lattice.apply(px, py, frames.to(device=px.device, dtype=torch.int32).contiguous(),
                          labels.to(device=px.device, dtype=torch.int32).contiguous())


# ---------------------------------------------------------------- the joiner's arcs (fused_rnnt's tiles)
@triton.jit
def _arcs_kernel(z, y, lse, px, py, V1, blank, BLOCK_V: tl.constexpr):
    """Row n of the logits z (N, V+1): lse[n] = logsumexp_v z[n, v], px[n] = z[n, y[n]] − lse[n],
    py[n] = z[n, blank] − lse[n] (float32), one pass over the row (running max and sum per lane)."""
    n = tl.program_id(0).to(tl.int64)
    row = z + n * V1
    m = tl.full([BLOCK_V], NEG, tl.float32)
    s = tl.zeros([BLOCK_V], tl.float32)
    for v0 in range(0, V1, BLOCK_V):
        v = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(row + v, mask=v < V1, other=NEG).to(tl.float32)
        m_new = tl.maximum(m, x)
        s = s * tl.exp(m - m_new) + tl.where(v < V1, tl.exp(x - m_new), 0.0)
        m = m_new
    top = tl.max(m, 0)
    norm = top + tl.log(tl.sum(s * tl.exp(m - top), 0))
    tl.store(lse + n, norm)
    tl.store(px + n, tl.load(row + tl.load(y + n)).to(tl.float32) - norm)
    tl.store(py + n, tl.load(row + blank).to(tl.float32) - norm)


@triton.jit
def _arcs_grad_kernel(z, y, lse, g_label, g_blank, V1, blank, BLOCK_V: tl.constexpr):
    """Row n of z (N, V+1) overwritten with ∂L/∂z = −softmax(z)·(g_label + g_blank) + g_label·[v = y[n]]
    + g_blank·[v = blank], in z's dtype, one pass."""
    n = tl.program_id(0).to(tl.int64)
    row = z + n * V1
    norm = tl.load(lse + n)
    gl = tl.load(g_label + n)
    gb = tl.load(g_blank + n)
    label = tl.load(y + n)
    for v0 in range(0, V1, BLOCK_V):
        v = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(row + v, mask=v < V1, other=0.0).to(tl.float32)
        d = -tl.exp(x - norm) * (gl + gb) + tl.where(v == label, gl, 0.0) + tl.where(v == blank, gb, 0.0)
        tl.store(row + v, d.to(z.dtype.element_ty), mask=v < V1)


def _block_v(v1: int) -> int:
    return min(triton.next_power_of_2(v1), 4096)


def joint_arcs_rows(z: Tensor, y: Tensor, blank: int) -> tuple[Tensor, Tensor, Tensor]:
    """Logits z (N, V+1), contiguous, any float dtype; y (N,) → (lse, px, py), each (N,) float32."""
    n, v1 = z.shape
    lse, px, py = (z.new_empty(n, dtype=torch.float32) for _ in range(3))
    block = _block_v(v1)
    _arcs_kernel[(n,)](z, y, lse, px, py, v1, blank, BLOCK_V=block, num_warps=max(1, min(8, block // 256)))
    return lse, px, py


def joint_arcs_grad_(z: Tensor, y: Tensor, lse: Tensor, g_label: Tensor, g_blank: Tensor,
                     blank: int) -> Tensor:
    """z (N, V+1) → ∂L/∂z in place (see ``_arcs_grad_kernel``); y, lse, g_label, g_blank (N,)."""
    n, v1 = z.shape
    block = _block_v(v1)
    _arcs_grad_kernel[(n,)](z, y, lse, g_label.contiguous(), g_blank.contiguous(), v1, blank, BLOCK_V=block,
                            num_warps=max(1, min(8, block // 256)))
    return z
