"""The exact RNN-T loss without the (B, T, U+1, V+1) lattice (METHODS.md §8).

Per lattice node (t, u) the loss needs two log-probabilities only, blank and the next label:
``log p(k | t, u) = z_k − logsumexp_v z_v`` with ``z = W · tanh(e_t + p_u) + b`` the joiner's logits
(``Joiner``: ``e = enc_proj(enc)``, ``p = pred_proj(pred)``). ``joint_arcs`` computes them a tile of
frames at a time, keeping only px, py and the normaliser (each (B, T, U+1)); the backward pass
recomputes each tile's logits and turns the arcs' gradients g_label, g_blank (the node occupancies
from the lattice's β) into the logits' gradient in place,

    ∂L/∂z_v = −p_v · (g_blank + g_label) + g_blank · [v = blank] + g_label · [v = y_{u+1}],

then into ∂W, ∂b and, through tanh, ∂e and ∂p. Peak memory is O(B·T·U) scalars plus one tile
(``tile_elems`` logits), not O(B·T·U·V); the price is the tile's joiner once more in the backward.
The recursion is ``rnnt_lattice.lattice_logprob`` (Triton kernels on CUDA). Values and gradients
equal torchaudio's ``rnnt_loss`` (tests/models/test_rnnt_kernels.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..lego.transducer import Joiner
from .rnnt_lattice import lattice_logprob, use_triton

TILE_ELEMS = 1 << 24  # logits per tile: 64 MB in float32


def _frame_chunks(b: int, t_max: int, s: int, width: int, tile_elems: int) -> list[tuple[int, int]]:
    """[t0, t1) frame ranges whose (B, t1 − t0, S, width) tiles hold about ``tile_elems`` values."""
    step = max(1, tile_elems // max(1, b * s * width))
    return [(t0, min(t0 + step, t_max)) for t0 in range(0, t_max, step)]


def _rows(x: Tensor, t0: int, t1: int) -> Tensor:
    """Frames [t0, t1) of x (B, T or 1, ...): a shared (size-1) frame axis is kept for broadcasting."""
    return x if x.shape[1] == 1 else x[:, t0:t1]


def _tile(e: Tensor, p: Tensor, w: Tensor, bias: Tensor, t0: int, t1: int) -> tuple[Tensor, Tensor]:
    """Hidden h (B, t1−t0, S, H) and logits z (N, V+1) of the nodes of frames [t0, t1), N = B·(t1−t0)·S,
    in e's dtype (a bf16 joiner's matmuls stay in bf16)."""
    h = torch.tanh(e[:, t0:t1, None] + _rows(p, t0, t1))
    return h, torch.addmm(bias.to(h.dtype), h.flatten(0, 2), w.to(h.dtype).t())


def _arcs(z: Tensor, y: Tensor, blank: int, triton: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Logits z (N, V+1) → (logsumexp, label log-prob, blank log-prob), each (N,) float32; z is
    overwritten (PyTorch: in place; Triton: one pass, ``rnnt_triton.joint_arcs_rows``)."""
    if triton:
        from .rnnt_triton import joint_arcs_rows

        return joint_arcs_rows(z, y, blank)
    z = z.float()
    label, blank_z = z.gather(1, y[:, None])[:, 0], z[:, blank].clone()
    m = z.amax(1)
    norm = z.sub_(m[:, None]).exp_().sum(1).log_().add_(m)
    return norm, label - norm, blank_z - norm


def _arcs_grad_(z: Tensor, y: Tensor, lse: Tensor, g_label: Tensor, g_blank: Tensor, blank: int,
                triton: bool) -> Tensor:
    """Logits z (N, V+1) → ∂L/∂z in z's dtype, in place: −p_v (g_label + g_blank) + g_label·[v = y]
    + g_blank·[v = blank]; lse, g_label, g_blank (N,)."""
    if triton:
        from .rnnt_triton import joint_arcs_grad_

        return joint_arcs_grad_(z, y, lse, g_label, g_blank, blank)
    dz = z.float().sub_(lse[:, None]).exp_().mul_(-(g_label + g_blank)[:, None])
    dz.scatter_add_(1, y[:, None], g_label[:, None])
    dz[:, blank] += g_blank
    return dz.to(z.dtype)


class _JointArcs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, e: Tensor, p: Tensor, w: Tensor, bias: Tensor, y: Tensor, blank: int,
                tile_elems: int, triton: bool) -> tuple[Tensor, Tensor]:
        b, t_max, s = e.shape[0], e.shape[1], p.shape[2]
        px, py, lse = (e.new_empty(b, t_max, s, dtype=torch.float32) for _ in range(3))
        with torch.autocast(e.device.type, enabled=False):
            for t0, t1 in _frame_chunks(b, t_max, s, w.shape[0], tile_elems):
                _, z = _tile(e, p, w, bias, t0, t1)
                shape = (b, t1 - t0, s)
                norm, label, blank_lp = _arcs(z, _rows(y, t0, t1).expand(shape).reshape(-1), blank, triton)
                lse[:, t0:t1], px[:, t0:t1], py[:, t0:t1] = (x.view(shape) for x in (norm, label, blank_lp))
        ctx.save_for_backward(e, p, w, bias, y, lse)
        ctx.blank, ctx.tile_elems, ctx.triton = blank, tile_elems, triton
        return px, py

    @staticmethod
    def backward(ctx, g_px: Tensor, g_py: Tensor):
        e, p, w, bias, y, lse = ctx.saved_tensors
        g_e, g_p = torch.zeros_like(e, dtype=torch.float32), torch.zeros_like(p, dtype=torch.float32)
        g_w, g_b = torch.zeros_like(w, dtype=torch.float32), torch.zeros_like(bias, dtype=torch.float32)
        b, t_max, s = e.shape[0], e.shape[1], p.shape[2]
        with torch.autocast(e.device.type, enabled=False):
            for t0, t1 in _frame_chunks(b, t_max, s, w.shape[0], ctx.tile_elems):
                h, z = _tile(e, p, w, bias, t0, t1)
                shape = (b, t1 - t0, s)
                gl, gb = g_px[:, t0:t1].reshape(-1).float(), g_py[:, t0:t1].reshape(-1).float()
                y_t = _rows(y, t0, t1).expand(shape).reshape(-1)
                dz = _arcs_grad_(z, y_t, lse[:, t0:t1].reshape(-1), gl, gb, ctx.blank, ctx.triton)
                h = h.flatten(0, 2)
                g_w += (dz.t() @ h).float()
                g_b += dz.sum(0, dtype=torch.float32)
                g_pre = (dz @ w.to(h.dtype)).float().mul_(1 - h.float().square()).view(*shape, -1)  # tanh'
                g_e[:, t0:t1] += g_pre.sum(2)
                if p.shape[1] == 1:
                    g_p += g_pre.sum(1, keepdim=True)
                else:
                    g_p[:, t0:t1] += g_pre
        return g_e.to(e.dtype), g_p.to(p.dtype), g_w.to(w.dtype), g_b.to(bias.dtype), None, None, None, None


def joint_arcs(joiner: Joiner, enc: Tensor, pred: Tensor, y: Tensor, blank: int,
               tile_elems: int = TILE_ELEMS, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Arc log-probs px (label y), py (blank), each (B, T, S) float32, of the joiner on every pair of an
    encoder frame enc (B, T, E) and a predictor output pred: (B, S, P), the same S outputs for every
    frame (the full lattice, S = U+1), or (B, T, S, P), S outputs per frame (the pruned loss's windows);
    y the label at each of them ((B, S) or (B, T, S)). Differentiable in enc, pred and the joiner's
    parameters; no more than about ``tile_elems`` logits exist at once. ``backend``: the per-row
    normaliser and gradient as Triton kernels ("triton"; "auto": on CUDA) or PyTorch ops ("torch")."""
    if not isinstance(joiner, Joiner):
        raise TypeError(f"the fused RNN-T loss needs speechkit's Joiner (W·tanh(enc_proj + pred_proj) + b), "
                        f"got {type(joiner).__name__}")
    e, p = joiner.enc_proj(enc), joiner.pred_proj(pred)  # (B, T, H), (B, [T,] S, H)
    if p.dim() == 3:
        p, y = p[:, None], y[:, None]  # one frame axis, shared
    return _JointArcs.apply(e, p.to(e.dtype), joiner.out.weight, joiner.out.bias, y.long().contiguous(),
                            blank, tile_elems, use_triton(backend, e))


def fused_rnnt_loss(joiner: Joiner, enc: Tensor, pred: Tensor, targets: Tensor, frames: Tensor,
                    labels: Tensor, blank: int, tile_elems: int = TILE_ELEMS,
                    backend: str = "auto") -> Tensor:
    """−log P(y | x) per utterance (B,): the full RNN-T loss, exact, with no (B, T, U+1, V+1) lattice.

    enc (B, T, E), pred (B, U+1, P) the joiner's inputs, targets (B, U), frames / labels (B,) the lengths;
    ``tile_elems`` logits per tile and ``backend`` (Triton kernels or PyTorch) as in ``joint_arcs`` and
    ``lattice_logprob``."""
    y = torch.cat([targets, targets.new_zeros(targets.shape[0], 1)], 1)  # (B, U+1), last is padding
    px, py = joint_arcs(joiner, enc, pred, y, blank, tile_elems, backend)
    return -lattice_logprob(px, py, frames, labels, backend)
