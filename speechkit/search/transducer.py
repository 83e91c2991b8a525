"""Transducer search: greedy and modified beam search with N-best output, both batched over utterances.

Both take a model with ``predictor`` and ``joiner`` (see ``speechkit.lego.transducer``)
and an ``Encoded`` batch; they return token id lists (interface vocabulary, blank
excluded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..lego.interface import Encoded
from .fusion import Fusion


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
def beam_search(model, enc: Encoded, beam: int = 4, nbest: int | None = None,
                fusion: Fusion | None = None) -> list[list[Hypothesis]]:
    """Modified beam search (at most one label per frame), batched over utterances → N-best lists.

    Every utterance keeps ``beam`` hypothesis slots (B, K); the joiner and the predictor run on all
    B·K slots at once, each utterance's candidates are ranked and merged on their own (hypotheses
    reaching the same label sequence are merged, log-sum-exp of scores), and an utterance past its
    last frame is left as it is, so the result does not depend on the batch. Returns, per
    utterance, up to ``nbest`` (default ``beam``) hypotheses, best first.

    ``fusion`` adds external-LM, internal-LM (ILME) and length-reward terms to every non-blank
    emission (blank steps keep the transducer score; the LM state advances only on labels) and
    the LM's end-of-sentence score at the end; ``Hypothesis.score`` is then the fused score.
    """
    pred, join, blank = model.predictor, model.joiner, model.blank
    enc = model.decoder_input(enc)
    b, t_max, _ = enc.hidden.shape
    k, dev, lengths = beam, enc.hidden.device, enc.lengths.tolist()
    enc_proj = join.enc_proj(enc.hidden)  # (B, T, J)
    out, state = pred.step(torch.full((b * k,), blank, device=dev), pred.initial_state(b * k, dev))
    pred_proj = join.pred_proj(out).view(b, k, -1)  # (B, K, J)
    lm = fusion.lm_scorer(b * k, dev) if fusion is not None else None
    seqs: list[list[tuple[int, ...]]] = [[()] for _ in range(b)]
    scores = torch.full((b, k), -math.inf, device=dev)
    scores[:, 0] = 0.0  # one live hypothesis, the empty one, per utterance
    for t in range(t_max):
        logp = join.joint(enc_proj[:, t, None], pred_proj).log_softmax(-1)  # (B, K, V+1)
        if fusion is not None:  # LM, ILM and length reward on the non-blank outputs only
            ilm = model.internal_lm_logprobs(pred_proj, projected=True) if fusion.ilm_weight else None
            lm_logp = lm.logp.view(b, k, -1)[..., :blank] if lm is not None else None
            logp = torch.cat([logp[..., :blank] + fusion.terms(lm_logp, ilm), logp[..., blank:]], -1)
        width = logp.shape[-1]
        top_s, top_i = (scores[..., None] + logp).flatten(1).topk(min(2 * k, k * width), dim=1)
        rows = scores.tolist()  # (B, K) per utterance: kept scores, parent slots, labels
        parents, toks = [list(range(k)) for _ in range(b)], [[blank] * k for _ in range(b)]
        for i in range(b):
            if t >= lengths[i]:  # finished rows stay put
                continue
            merged: dict[tuple[int, ...], list] = {}
            for sc, j in zip(top_s[i].tolist(), top_i[i].tolist()):
                if sc == -math.inf:
                    break
                parent, tok = divmod(j, width)
                seq = seqs[i][parent] if tok == blank else seqs[i][parent] + (tok,)
                if seq in merged:
                    hi, lo = max(merged[seq][0], sc), min(merged[seq][0], sc)
                    merged[seq][0] = hi + math.log1p(math.exp(lo - hi))
                else:
                    merged[seq] = [sc, parent, tok]
            kept = sorted(merged.items(), key=lambda kv: -kv[1][0])[:k]
            seqs[i] = [q for q, _ in kept]
            n = len(kept)
            rows[i] = [v[0] for _, v in kept] + [-math.inf] * (k - n)
            parents[i][:n] = [v[1] for _, v in kept]
            toks[i][:n] = [v[2] for _, v in kept]
        scores = torch.tensor(rows, device=dev)
        parents, toks = torch.tensor(parents, device=dev), torch.tensor(toks, device=dev)
        flat = (parents + torch.arange(b, device=dev)[:, None] * k).flatten()
        state, pred_proj = pred.select(state, flat), pred_proj.flatten(0, 1)[flat]
        emit = toks.flatten() != blank
        if lm is not None:
            lm.advance(flat, toks.flatten(), emit)
        if emit.any():
            new_out, new_state = pred.step(torch.where(emit, toks.flatten(), blank), state)
            state = pred.where(emit, new_state, state)
            pred_proj = torch.where(emit[:, None], join.pred_proj(new_out), pred_proj)
        pred_proj = pred_proj.view(b, k, -1)
    if lm is not None and fusion.lm_eos:
        scores = scores + fusion.lm_weight * lm.logp[:, lm.lm.eos].view(b, k)
    out = []
    for i in range(b):
        order = scores[i, : len(seqs[i])].argsort(descending=True)[: nbest or k].tolist()
        out.append([Hypothesis(seqs[i][j], float(scores[i, j])) for j in order])
    return out


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
