"""Transducer search: batched greedy and modified beam search with N-best output.

Both take a model with ``predictor`` and ``joiner`` (see ``speechkit.lego.transducer``)
and an ``Encoded`` batch; they return token id lists (interface vocabulary, blank
excluded).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..lego.interface import Encoded


@dataclass(frozen=True)
class Hypothesis:
    tokens: tuple[int, ...]
    score: float  # total log-probability of the alignment-marginalised hypothesis in the beam


@torch.no_grad()
def greedy_search(model, enc: Encoded, max_symbols: int = 3) -> list[list[int]]:
    """Batched greedy transducer decoding → B token lists.

    Up to ``max_symbols`` labels per frame; a frame ends at the first blank. Each row
    evolves independently of the others, so batched = one-by-one.
    """
    pred, join, blank = model.predictor, model.joiner, model.blank
    enc = model.decoder_input(enc)
    b, t_max, _ = enc.hidden.shape
    enc_proj = join.enc_proj(enc.hidden)  # (B, T, J)
    start = torch.full((b,), blank, dtype=torch.long, device=enc.hidden.device)
    out, state = pred.step(start, pred.initial_state(b, enc.hidden.device))
    pred_proj = join.pred_proj(out)  # (B, J)
    hyps: list[list[int]] = [[] for _ in range(b)]
    for t in range(t_max):
        active = enc.lengths > t
        for _ in range(max_symbols):
            tok = join.joint(enc_proj[:, t], pred_proj).argmax(-1)  # (B,)
            emit = active & (tok != blank)
            if not emit.any():
                break
            for i in emit.nonzero()[:, 0].tolist():
                hyps[i].append(int(tok[i]))
            new_out, new_state = pred.step(torch.where(emit, tok, blank), state)
            state = pred.where(emit, new_state, state)
            pred_proj = torch.where(emit[:, None], join.pred_proj(new_out), pred_proj)
            active = emit
    return hyps


@torch.no_grad()
def beam_search(model, enc: Encoded, beam: int = 4, nbest: int | None = None) -> list[list[Hypothesis]]:
    """Modified beam search (at most one label per frame), per utterance → N-best lists.

    Hypotheses reaching the same label sequence are merged (log-sum-exp of scores).
    Returns, per utterance, up to ``nbest`` (default ``beam``) hypotheses, best first.
    """
    enc = model.decoder_input(enc)
    return [_beam_one(model, enc.hidden[i, : int(enc.lengths[i])], beam, nbest or beam)
            for i in range(enc.hidden.shape[0])]


def _beam_one(model, hidden: Tensor, beam: int, nbest: int) -> list[Hypothesis]:
    """hidden: (T, D) for one utterance."""
    pred, join, blank = model.predictor, model.joiner, model.blank
    dev = hidden.device
    enc_proj = join.enc_proj(hidden)  # (T, J)
    out, state = pred.step(torch.tensor([blank], device=dev), pred.initial_state(1, dev))
    pred_proj = join.pred_proj(out)  # (K, J), K hypotheses
    seqs: list[tuple[int, ...]] = [()]
    scores = torch.zeros(1, device=dev)
    for t in range(enc_proj.shape[0]):
        logp = join.joint(enc_proj[t][None], pred_proj).log_softmax(-1)  # (K, V+1)
        cand = (scores[:, None] + logp).flatten()
        top_s, top_i = cand.topk(min(2 * beam, cand.numel()))
        width = logp.shape[1]
        merged: dict[tuple[int, ...], list] = {}
        for s, i in zip(top_s.tolist(), top_i.tolist()):
            parent, tok = divmod(i, width)
            seq = seqs[parent] if tok == blank else seqs[parent] + (tok,)
            if seq in merged:
                merged[seq][0] = float(torch.logaddexp(torch.tensor(merged[seq][0]), torch.tensor(s)))
            else:
                merged[seq] = [s, parent, tok]
        kept = sorted(merged.items(), key=lambda kv: -kv[1][0])[:beam]
        seqs = [k for k, _ in kept]
        scores = torch.tensor([v[0] for _, v in kept], device=dev)
        parents = torch.tensor([v[1] for _, v in kept], device=dev)
        toks = torch.tensor([v[2] for _, v in kept], device=dev)
        emit = toks != blank
        state, pred_proj = pred.select(state, parents), pred_proj[parents]
        if emit.any():
            new_out, new_state = pred.step(torch.where(emit, toks, blank), state)
            state = pred.where(emit, new_state, state)
            pred_proj = torch.where(emit[:, None], join.pred_proj(new_out), pred_proj)
    order = scores.argsort(descending=True)[:nbest].tolist()
    return [Hypothesis(seqs[i], float(scores[i])) for i in order]


def ctc_greedy(enc: Encoded) -> list[list[int]]:
    """Greedy CTC on the marginal head: best path, merge repeats, drop blanks (blank = V)."""
    if enc.logits is None:
        raise ValueError("this encoder has no marginal head")
    best = enc.logits.argmax(-1)  # (B, T)
    blank = enc.logits.shape[-1] - 1
    hyps = []
    for row, n in zip(best.tolist(), enc.lengths.tolist()):
        seq, prev = [], None
        for tok in row[:n]:
            if tok != prev and tok != blank:
                seq.append(tok)
            prev = tok
        hyps.append(seq)
    return hyps
