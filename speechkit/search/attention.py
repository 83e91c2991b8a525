"""Batched beam search for attention decoders (``speechkit.lego.decoders.AttentionDecoder``).

All hypotheses of all utterances of a batch are scored in one incremental decoder step per output
position (``AttentionDecoder.step``: one new position against the cached keys and values; the LMs of a
``Fusion`` are stepped alike). Hypotheses are ranked by ``log P / length ** length_penalty``. An ending
(end of sentence) is kept only when it is among the ``beam`` best candidates of its step; an utterance
is done when it has ``beam`` ended hypotheses or reaches its length limit: the memory length (a
CTC-trained interface has at least one position per output token) plus a small slack. Done
utterances leave the batch. The bookkeeping runs on (utterances, 2·beam) candidate tensors on the
model's device: no per-utterance Python work, one host synchronisation per position.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..lego.interface import Encoded
from .fusion import Fusion, FusionState
from .transducer import Hypothesis


def _fused(logp: Tensor, fused: FusionState | None) -> Tensor:
    """Decoder log-probs (N, V+1) of the next token → fused scores: pieces get the fusion's piece terms
    (λ_LM log P_LM − λ_ILM log P_ILM + β), the end of sentence its end terms."""
    if fused is None:
        return logp
    v = logp.shape[-1] - 1
    return torch.cat([logp[:, :v] + fused.piece_terms(), logp[:, v:] + fused.end_terms()[:, None]], -1)


@torch.no_grad()
def attention_beam_search(model, enc: Encoded, beam: int = 4, nbest: int | None = None,
                          length_penalty: float = 1.0, max_len_slack: int = 5,
                          fusion: Fusion | None = None) -> list[list[Hypothesis]]:
    """``model.decoder`` over an encoded batch → per utterance up to ``nbest`` hypotheses, best first.

    beam = 1 is greedy search. ``Hypothesis.score`` is the total log-probability including
    the end-of-sentence token (with ``fusion``: the fused score, see ``_fused``).
    """
    dec = model.decoder
    mem, mem_lens = dec.memory(enc)  # (B, K, D)
    b, dev, eos, k = mem.shape[0], mem.device, dec.eos, beam
    max_len = mem_lens + max_len_slack  # (B,)
    steps = int(max_len.max()) if b else 0
    state = dec.initial_state(b * k, dev, mem, mem_lens)  # a beam of hypotheses per utterance
    fused = fusion.start(model, b * k, dev) if fusion is not None else None
    utts = torch.arange(b, device=dev)  # (N,) the utterances still searched; rows n·K … of utts[n]
    feed = torch.full((b * k,), eos, dtype=torch.long, device=dev)
    tokens = torch.zeros(b * k, 0, dtype=torch.long, device=dev)  # (N·K, L) each row's tokens so far
    scores = torch.full((b, k), -math.inf, device=dev)
    scores[:, 0] = 0.0  # one live hypothesis, the empty one, per utterance
    # per utterance up to 2K ended hypotheses (it stops at K or more, after at most K at a time), and
    # a spare place 2K that non-endings write to (never read): the writes need no host synchronisation
    ended_s = torch.full((b, 2 * k + 1), -math.inf, device=dev)
    ended_n = torch.zeros(b, 2 * k + 1, dtype=torch.long, device=dev)  # their lengths
    ended_t = torch.zeros(b, 2 * k + 1, max(steps, 1), dtype=torch.long, device=dev)
    count = torch.zeros(b, dtype=torch.long, device=dev)
    rank = torch.arange(2 * k, device=dev)
    for step in range(steps):
        logits, state = dec.step(feed, state)
        logp = _fused(logits.float().log_softmax(-1), fused)  # (N·K, V+1)
        n, width = utts.shape[0], logp.shape[-1]
        cand = (scores.view(-1, 1) + logp).view(n, k * width)
        top_s, top_i = cand.topk(min(2 * k, cand.shape[1]), dim=-1)  # (N, C) best first
        c = top_s.shape[1]
        row, tok = top_i // width + torch.arange(n, device=dev)[:, None] * k, top_i % width  # (N, C)
        last = step + 1 >= max_len[utts]  # (N,)
        live = top_s > -math.inf
        ending = (tok == eos) | last[:, None]
        # endings among the K best of the step end their hypothesis: labels, score, length
        end = ending & live & (rank[:c] < k)
        at = (count[utts][:, None] + end.cumsum(1) - 1).clamp(max=2 * k - 1)
        where = utts[:, None].expand(-1, c), torch.where(end, at, 2 * k)  # (N, C) each: their places
        ended_s.index_put_(where, top_s)
        ended_n.index_put_(where, step + (tok != eos).long())
        ended_t[..., : step + 1].index_put_(where, torch.cat([tokens[row], tok[..., None]], -1))  # eos: cut
        count[utts] += end.sum(1)
        # the K best non-endings go on, in order
        go = ~ending & live
        slot = torch.where(go, go.cumsum(1) - 1, k).clamp(max=k)  # (N, C) their slots (K: none)
        done = (count[utts] >= k) | last | ~go.any(1)  # (N,)
        lone = done & (count[utts] == 0)  # nothing ended: the best hypothesis so far
        where = utts, torch.where(lone, 0, 2 * k)
        ended_s.index_put_(where, scores[:, 0])
        ended_n.index_put_(where, torch.full_like(utts, step))
        ended_t[..., :step].index_put_(where, tokens[::k])
        count[utts] += lone.long()
        keep = (~done).nonzero()[:, 0]  # (N',) the one host synchronisation per position
        if keep.numel() == 0:
            break
        pick = torch.zeros(n, k + 1, dtype=torch.long, device=dev).scatter_(1, slot, rank[:c].expand(n, c))
        has = torch.zeros(n, k + 1, dtype=torch.bool, device=dev).scatter_(1, slot, go)
        pick, has = pick[keep, :k], has[keep, :k]  # (N', K) which candidate fills each slot
        parents = torch.where(has, row[keep].gather(1, pick), (keep * k)[:, None]).flatten()
        feed = torch.where(has, tok[keep].gather(1, pick), eos).flatten()
        scores = torch.where(has, top_s[keep].gather(1, pick), -math.inf)
        state, utts = dec.select(state, parents), utts[keep]
        tokens = torch.cat([tokens[parents], feed[:, None]], 1)
        if fused is not None:
            fused.advance(parents, feed)
    ended_s, ended_n, ended_t = ended_s[:, : 2 * k], ended_n[:, : 2 * k], ended_t[:, : 2 * k]
    ranked = ended_s / (ended_n + 1).clamp(min=1).float() ** length_penalty
    order = ranked.sort(dim=1, descending=True, stable=True)[1][:, : nbest or k]  # (B, n)
    got = count.cpu().tolist()
    out_s, out_n = ended_s.gather(1, order).cpu(), ended_n.gather(1, order).cpu()
    out_t = ended_t.gather(1, order[..., None].expand(-1, -1, ended_t.shape[2])).cpu()
    return [[Hypothesis(tuple(out_t[i, j, : out_n[i, j]].tolist()), float(out_s[i, j]))
             for j in range(order.shape[1]) if j < got[i]] for i in range(b)]
