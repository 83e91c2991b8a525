"""Pruned RNN-T loss in pure PyTorch (METHODS.md §6): nothing to compile.

torchaudio's ``rnnt_loss`` needs the joiner on the whole (B, T, U+1, V+1) lattice. The pruned loss:

1. **simple loss**: a transducer whose joiner is additive, ``am (B, T, V+1) + lm (B, U+1, V+1)``
   (separate linear projections of the encoder and predictor outputs). Its per-node normaliser
   ``log Σ_v exp(am[t, v] + lm[u, v])`` is one batched matrix product, so the lattice costs
   (B, T, U+1) scalars, not V of them per node.
2. **pruning bounds**: the gradient of the simple loss's log-likelihood with respect to the
   lattice's arcs is the occupancy of each node; each frame keeps the window of ``s`` label
   positions with the most occupancy, made monotone and connected (``prune_ranges``).
3. **pruned loss**: the real joiner only inside the windows (B, T, s, V+1), and the same
   forward algorithm on the lattice with every node outside the windows removed.

The recursion is ``rnnt_lattice.lattice_logprob`` (Triton kernels on CUDA, PyTorch elsewhere); on
CUDA the windows' arcs come from ``fused_rnnt.joint_arcs`` (a tile of frames at a time: the
(B, T, s, V+1) logits never exist at once either), on a CPU from one joiner call (no recomputation).
With ``s ≥ U+1`` the pruned loss is exactly the full RNN-T loss (tested against torchaudio, values and
gradients).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..lego.transducer import Joiner
from .fused_rnnt import joint_arcs
from .rnnt_lattice import NEG, lattice_logprob, use_triton


def simple_lattice(am: Tensor, lm: Tensor, targets: Tensor, blank: int, lm_only_scale: float = 0.0,
                   am_only_scale: float = 0.0) -> tuple[Tensor, Tensor]:
    """The additive joiner's lattice: am (B, T, V+1), lm (B, U+1, V+1), targets (B, U) →
    px, py (B, T, U+1) (px at u = U is padding).

    Smoothing (k2's ``rnnt_loss_smoothed``): each arc's log-prob is interpolated with weights
    ``1 − lm_only_scale − am_only_scale``, ``lm_only_scale`` and ``am_only_scale`` between the joint one,
    the predictor's projection alone as a language model (normalised over its own V+1 outputs) and the
    encoder's projection with a unigram label prior (the batch's mean ``softmax(lm)``) in place of the
    label context. The LM-only term keeps the simple predictor a real language model, which sharpens
    the occupancies the pruning bounds come from.
    """
    am_max, lm_max = am.amax(-1, keepdim=True), lm.amax(-1, keepdim=True)  # (B, T, 1), (B, U+1, 1)
    am_e, lm_e = (am - am_max).exp(), (lm - lm_max).exp()
    norm = torch.bmm(am_e, lm_e.transpose(1, 2)).clamp_min(1e-30).log() \
        + am_max + lm_max.transpose(1, 2)  # (B, T, U+1) = log Σ_v exp(am + lm)
    y = torch.cat([targets, targets.new_zeros(targets.shape[0], 1)], 1)  # (B, U+1), last is padding
    px_am = am.gather(2, y[:, None].expand(-1, am.shape[1], -1))  # (B, T, U+1)
    px_lm = lm.gather(2, y[..., None]).transpose(1, 2)  # (B, 1, U+1)
    py_am, py_lm = am[..., blank, None], lm[..., blank].unsqueeze(1)  # (B, T, 1), (B, 1, U+1)
    joint = 1.0 - lm_only_scale - am_only_scale
    if joint < 0 or lm_only_scale < 0 or am_only_scale < 0:
        raise ValueError(f"simple-loss smoothing scales must be >= 0 with a sum <= 1, got lm_only_scale="
                         f"{lm_only_scale}, am_only_scale={am_only_scale}")
    px, py = joint * (px_am + px_lm - norm), joint * (py_am + py_lm - norm)
    if lm_only_scale:
        lm_norm = lm.logsumexp(-1).unsqueeze(1)  # (B, 1, U+1)
        px, py = px + lm_only_scale * (px_lm - lm_norm), py + lm_only_scale * (py_lm - lm_norm)
    if am_only_scale:
        unigram = (lm_e / lm_e.sum(-1, keepdim=True)).mean((0, 1)).clamp_min(1e-30)  # (V+1,)
        am_norm = (am_e @ unigram).log()[..., None] + am_max  # (B, T, 1) = log Σ_v exp(am_v) unigram_v
        log_uni = unigram.log()
        px = px + am_only_scale * (px_am + log_uni[y][:, None] - am_norm)
        py = py + am_only_scale * (py_am + log_uni[blank] - am_norm)
    return px, py


def prune_ranges(px_grad: Tensor, py_grad: Tensor, frames: Tensor, labels: Tensor, s: int) -> Tensor:
    """Per frame, the first label position of a window of ``s`` (B, T): the window with the most
    occupancy (px_grad + py_grad, each (B, T, U+1)), then made feasible: 0 at the first frame, the last
    label inside the window at each utterance's last frame, non-decreasing, rising by ≤ s − 1 per frame
    (so ≤ s − 1 labels per frame: an utterance with more labels than (s − 1)·T cannot be covered)."""
    occ = (px_grad + py_grad).float()  # (B, T, U+1)
    b, t_max, u1 = occ.shape
    if s >= u1:
        return occ.new_zeros(b, t_max, dtype=torch.long)
    sums = occ.unfold(2, s, 1).sum(-1)  # (B, T, U+2−s) occupancy of each window
    start = sums.argmax(-1)  # (B, T)
    top = (labels + 1 - s).clamp_min(0)[:, None]  # (B, 1) the highest useful start
    t_idx = torch.arange(t_max, device=occ.device)
    start = torch.where(t_idx == frames[:, None] - 1, top, torch.minimum(start, top))  # reach (T−1, U)
    start = start.cummax(1).values  # non-decreasing
    slope = (s - 1) * t_idx
    later = (start - slope).flip(1).cummax(1).values.flip(1) + slope  # max over t' ≥ t of s_t' − (s−1)(t'−t)
    start = torch.maximum(start, later)  # connected to every later window
    start[:, 0] = 0  # the path starts at (0, 0) …
    start = (start - slope).cummin(1).values + slope  # … and rises by at most s − 1 per frame
    return torch.minimum(start, top)


def pruned_rnnt_loss(joiner: Joiner, enc: Tensor, pred: Tensor, am: Tensor, lm: Tensor, targets: Tensor,
                     frames: Tensor, labels: Tensor, blank: int, s: int = 5, lm_only_scale: float = 0.0,
                     am_only_scale: float = 0.0, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """(simple loss, pruned loss), each −log P(y|x) per utterance (B,).

    joiner: speechkit's ``Joiner``; enc (B, T, E), pred (B, U+1, P) its inputs; am (B, T, V+1), lm
    (B, U+1, V+1) the simple projections; targets (B, U); frames, labels (B,) the lengths; ``s`` the
    window width in label positions; ``lm_only_scale``, ``am_only_scale`` the simple loss's smoothing
    (``simple_lattice``); ``backend`` the recursion's (``lattice_logprob``).
    """
    px, py = simple_lattice(am.float(), lm.float(), targets, blank, lm_only_scale, am_only_scale)
    simple = lattice_logprob(px, py, frames, labels, backend)
    if px.requires_grad:  # training: the occupancies are the simple loss's own gradients
        px_grad, py_grad = torch.autograd.grad(simple.sum(), (px, py), retain_graph=True)
    else:  # no_grad (validation): a separate forward on detached copies
        with torch.enable_grad():
            pxd, pyd = px.detach().requires_grad_(), py.detach().requires_grad_()
            occupancy = lattice_logprob(pxd, pyd, frames, labels, backend).sum()
            px_grad, py_grad = torch.autograd.grad(occupancy, (pxd, pyd))
    start = prune_ranges(px_grad, py_grad, frames, labels, s)  # (B, T)
    b, t_max = start.shape
    u1 = pred.shape[1]
    u_win = start[..., None] + torch.arange(s, device=start.device)  # (B, T, s) label positions
    pred_pad = torch.cat([pred, pred.new_zeros(b, s, pred.shape[-1])], 1)  # (B, U+1+s, P)
    pred_win = pred_pad.gather(1, u_win.flatten(1)[..., None].expand(-1, -1, pred.shape[-1]))
    y_pad = torch.cat([targets, targets.new_zeros(b, s + 1)], 1)  # (B, U+1+s)
    y_win = y_pad.gather(1, u_win.flatten(1)).view(b, t_max, s)
    pred_win = pred_win.view(b, t_max, s, -1)
    if use_triton(backend, enc):  # GPU: tiles, the (B, T, s, V+1) logits never exist at once
        px_win, py_win = joint_arcs(joiner, enc, pred_win, y_win, blank, backend=backend)
    else:  # CPU: the joiner once (a tile's recomputation in the backward pass costs a CPU 1/3 more time)
        logits = joiner(enc[:, :, None], pred_win).float().log_softmax(-1)
        px_win, py_win = logits.gather(3, y_win[..., None])[..., 0], logits[..., blank]  # (B, T, s)
    px_p = px.new_full((b, t_max, u1 + s), NEG).scatter(2, u_win, px_win)[..., :u1]
    py_p = px.new_full((b, t_max, u1 + s), NEG).scatter(2, u_win, py_win)[..., :u1]
    return -simple, -lattice_logprob(px_p, py_p, frames, labels, backend)
