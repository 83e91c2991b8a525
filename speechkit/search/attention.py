"""Batched beam search for attention decoders (``speechkit.lego.decoders.AttentionDecoder``).

All hypotheses of all utterances of a batch are scored in one incremental decoder step per output
position (``AttentionDecoder.step``: one new position against the cached keys and values; the LMs of a
``Fusion`` are stepped alike). Hypotheses are ranked by ``log P / length ** length_penalty``. An ending
(end of sentence) is kept only when it is among the ``beam`` best candidates of its step; an utterance
is done when it has ``beam`` ended hypotheses or reaches its length limit: the memory length (a
CTC-trained interface has at least one position per output token) plus a small slack. Done
utterances leave the batch.
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


def _extend(top_s: list[float], top_i: list[int], first: int, beam: int, width: int, last: bool,
            tokens: Tensor, finished: list[Hypothesis]) -> list[tuple[int, int, float]]:
    """One utterance's best candidates (scores, indices into its beam × (V+1) extensions; its hypotheses
    are rows ``first …`` of tokens (N, L)) → (row, token, score) of the (at most ``beam``) that go on.
    Endings (end of sentence; every candidate when ``last``) join ``finished`` if among the best ``beam``."""
    kept = []
    for rank, (s, j) in enumerate(zip(top_s, top_i)):
        if len(kept) == beam or s == -math.inf:
            break
        row, tok = first + j // width, j % width
        if tok == width - 1 or last:
            if rank < beam:
                seq = tokens[row].tolist() + ([] if tok == width - 1 else [tok])
                finished.append(Hypothesis(tuple(seq), s))
            continue
        kept.append((row, tok, s))
    return kept


def _rank(h: Hypothesis, length_penalty: float) -> float:
    return h.score / max(len(h.tokens) + 1, 1) ** length_penalty


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
    b, dev, eos = mem.shape[0], mem.device, dec.eos
    max_len = (mem_lens + max_len_slack).tolist()
    state = dec.initial_state(b * beam, dev, mem, mem_lens)  # a beam of hypotheses per utterance
    fused = fusion.start(model, b * beam, dev) if fusion is not None else None
    utts = list(range(b))  # the utterances still searched; hypothesis rows i·beam … of utts[i]
    feed = torch.full((b * beam,), eos, dtype=torch.long, device=dev)
    tokens = torch.zeros(b * beam, 0, dtype=torch.long, device=dev)  # (N, L) each row's tokens so far
    scores = torch.full((b, beam), -math.inf, device=dev)
    scores[:, 0] = 0.0  # one live hypothesis, the empty one, per utterance
    finished: list[list[Hypothesis]] = [[] for _ in range(b)]
    for step in range(max(max_len, default=0)):
        logits, state = dec.step(feed, state)
        logp = _fused(logits.float().log_softmax(-1), fused)  # (N, V+1)
        width = logp.shape[-1]
        cand = (scores.view(-1, 1) + logp).view(len(utts), beam * width)
        top_s, top_i = (t.tolist() for t in cand.topk(min(2 * beam, cand.shape[1]), dim=-1))
        parents, new_tok, new_scores, kept_utts = [], [], [], []
        for i, u in enumerate(utts):
            last = step + 1 >= max_len[u]
            kept = _extend(top_s[i], top_i[i], i * beam, beam, width, last, tokens, finished[u])
            if len(finished[u]) >= beam or last or not kept:
                if not finished[u]:  # nothing ended: the best hypothesis so far
                    finished[u].append(Hypothesis(tuple(tokens[i * beam].tolist()), float(scores[i, 0])))
                continue
            kept += [(i * beam, eos, -math.inf)] * (beam - len(kept))  # empty slots
            kept_utts.append(u)
            parents += [r for r, _, _ in kept]
            new_tok += [t for _, t, _ in kept]
            new_scores.append([s for _, _, s in kept])
        if not kept_utts:
            break
        parents = torch.tensor(parents, device=dev)
        feed = torch.tensor(new_tok, device=dev)
        state, utts = dec.select(state, parents), kept_utts
        tokens = torch.cat([tokens[parents], feed[:, None]], 1)
        scores = torch.tensor(new_scores, device=dev)
        if fused is not None:
            fused.advance(parents, feed)
    return [sorted(hyps, key=lambda h: -_rank(h, length_penalty))[:nbest or beam] for hyps in finished]
