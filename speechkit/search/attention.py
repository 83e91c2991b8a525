"""Batched beam search for attention decoders (``speechkit.lego.decoders.AttentionDecoder``).

All hypotheses of all utterances of a batch are scored in one decoder call per step.
Hypotheses are ranked by ``log P / length ** length_penalty``. An ending (end of sentence)
is kept only when it is among the ``beam`` best candidates of its step; an utterance is done
when it has ``beam`` ended hypotheses or reaches its length limit: the memory length (a
CTC-trained interface has at least one position per output token) plus a small slack.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..lego.interface import Encoded
from .fusion import Fusion
from .transducer import Hypothesis


def _fused(logp: Tensor, prev: Tensor, dec, fusion: Fusion) -> Tensor:
    """Decoder log-probs (N, V+1) of the next token after ``prev`` (N, L) → fused scores: every token
    gets λ_LM log P_LM − λ_ILM log P_ILM (ILM: the decoder with zero attention context), pieces also
    the length reward β; the end of sentence gets the LM term only if ``fusion.lm_eos``."""
    v = dec.vocab_size
    lm = fusion.lm(prev[:, 1:])[:, -1].float().log_softmax(-1) if fusion.lm is not None else None
    ilm = dec.internal_lm_logits(prev)[:, -1].float().log_softmax(-1) if fusion.ilm_weight else None
    def cols(x, a, b):
        return None if x is None else x[:, a:b]

    tok = fusion.terms(cols(lm, 0, v), cols(ilm, 0, v))
    end = fusion.terms(cols(lm if fusion.lm_eos else None, v, v + 1), cols(ilm, v, v + 1), reward=False)
    return torch.cat([logp[:, :v] + tok, logp[:, v:] + end], -1)


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
    nbest = nbest or beam
    mem, mem_lens = dec.memory(enc)  # (B, K, D)
    b, dev = mem.shape[0], mem.device
    max_len = (mem_lens + max_len_slack).tolist()
    mem, mem_lens = mem.repeat_interleave(beam, 0), mem_lens.repeat_interleave(beam, 0)  # (B·beam, K, D)
    tokens = torch.full((b * beam, 1), dec.eos, dtype=torch.long, device=dev)
    scores = torch.full((b, beam), float("-inf"), device=dev)
    scores[:, 0] = 0.0
    finished: list[list[Hypothesis]] = [[] for _ in range(b)]
    done = [False] * b
    for step in range(max(max_len)):
        live = (~torch.tensor(done, device=dev)).repeat_interleave(beam)  # rows of unfinished utterances
        logp = torch.full((b * beam, dec.vocab_size + 1), float("-inf"), device=dev)
        logp[live] = dec(mem[live], mem_lens[live], tokens[live])[:, -1].float().log_softmax(-1)
        if fusion is not None:
            logp[live] = _fused(logp[live], tokens[live], dec, fusion)
        width = logp.shape[-1]
        cand = (scores.view(-1, 1) + logp).view(b, beam * width)
        top_s, top_i = cand.topk(min(2 * beam, cand.shape[1]), dim=-1)
        rows, new_scores = [], torch.full((b, beam), float("-inf"), device=dev)
        new_tok = torch.full((b, beam), dec.eos, dtype=torch.long, device=dev)
        for i in range(b):
            kept = 0
            for rank, (s, j) in enumerate(zip(top_s[i].tolist(), top_i[i].tolist())):
                if done[i] or kept == beam or s == float("-inf"):
                    break
                parent, tok = divmod(j, width)
                row = i * beam + parent
                if tok == dec.eos or step + 1 >= max_len[i]:
                    if rank < beam:  # an ending counts only if it is among the best `beam` candidates
                        seq = tokens[row, 1:].tolist() + ([] if tok == dec.eos else [tok])
                        finished[i].append(Hypothesis(tuple(seq), s))
                    continue
                rows.append((i, kept, row))
                new_scores[i, kept], new_tok[i, kept] = s, tok
                kept += 1
            if len(finished[i]) >= beam or step + 1 >= max_len[i]:
                done[i] = True
        if all(done):
            break
        parents = torch.arange(b * beam, device=dev).view(b, beam).clone()
        for i, k, row in rows:
            parents[i, k] = row
        tokens = torch.cat([tokens[parents.flatten()], new_tok.view(-1, 1)], 1)
        scores = new_scores.masked_fill(torch.tensor(done, device=dev)[:, None], float("-inf"))
    out = []
    for i in range(b):
        hyps = finished[i] or [Hypothesis(tuple(tokens[i * beam, 1:].tolist()), float(scores[i, 0]))]
        out.append(sorted(hyps, key=lambda h: -_rank(h, length_penalty))[:nbest])
    return out
