"""Transducer search: greedy and modified beam search with N-best output, both batched over utterances
and both stateful (``GreedySearch`` / ``BeamSearch`` consume frames chunk by chunk, for streaming).

They take a model with ``predictor`` and ``joiner`` (see ``speechkit.lego.transducer``) and
``Encoded`` frames; hypotheses are token id lists (interface vocabulary, blank excluded) with the
frame and posterior of every token (timestamps, confidence).
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
    score: float | None  # total log-probability of the alignment-marginalised hypothesis (None: greedy)
    frames: tuple[int, ...] = ()  # per token, the encoder frame it was emitted at (from the stream start)
    probs: tuple[float, ...] = ()  # per token, its posterior P(token | frame, context) from the transducer


class GreedySearch:
    """Batched greedy transducer search that keeps its state between calls (streaming).

    ``advance(enc)`` consumes the next frames of B utterances (or streams); ``best()`` gives the
    hypotheses so far. Up to ``max_symbols`` labels per frame; a frame ends at the first blank.
    Each row evolves independently of the others, so batched = one-by-one, and feeding the frames
    in pieces = feeding them at once.
    """

    def __init__(self, model, batch: int, device=None, max_symbols: int = 3):
        self.model, self.max_symbols = model, max_symbols
        pred, blank = model.predictor, model.blank
        out, self.state = pred.step(torch.full((batch,), blank, dtype=torch.long, device=device),
                                    pred.initial_state(batch, device))
        self.pred_proj = model.joiner.pred_proj(out)  # (B, J)
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.frames: list[list[int]] = [[] for _ in range(batch)]
        self.probs: list[list[float]] = [[] for _ in range(batch)]
        self.frame = 0  # frames consumed so far

    @torch.no_grad()
    def advance(self, enc: Encoded) -> None:
        pred, join, blank = self.model.predictor, self.model.joiner, self.model.blank
        enc = self.model.decoder_input(enc)
        enc_proj = join.enc_proj(enc.hidden)  # (B, T, J)
        for t in range(enc_proj.shape[1]):
            active = enc.lengths > t
            for _ in range(self.max_symbols):
                prob, tok = join.joint(enc_proj[:, t], self.pred_proj).softmax(-1).max(-1)  # (B,) each
                emit = active & (tok != blank)
                if not emit.any():
                    break
                for i in emit.nonzero()[:, 0].tolist():
                    self.tokens[i].append(int(tok[i]))
                    self.frames[i].append(self.frame + t)
                    self.probs[i].append(float(prob[i]))
                new_out, new_state = pred.step(torch.where(emit, tok, blank), self.state)
                self.state = pred.where(emit, new_state, self.state)
                self.pred_proj = torch.where(emit[:, None], join.pred_proj(new_out), self.pred_proj)
                active = emit
        self.frame += enc_proj.shape[1]

    def best(self, final: bool = False) -> list[Hypothesis]:
        return [Hypothesis(tuple(t), None, tuple(f), tuple(p))
                for t, f, p in zip(self.tokens, self.frames, self.probs)]


@torch.no_grad()
def greedy_search(model, enc: Encoded, max_symbols: int = 3) -> list[list[int]]:
    """Batched greedy transducer decoding of a whole batch → B token lists."""
    s = GreedySearch(model, enc.hidden.shape[0], enc.hidden.device, max_symbols)
    s.advance(enc)
    return [list(h.tokens) for h in s.best()]


class BeamSearch:
    """Modified beam search, batched over utterances, with its state kept between calls (streaming):
    ``advance(enc)`` consumes the next frames, ``nbest()`` ranks.

    Up to ``max_symbols`` labels per frame: each frame is expanded up to that many times, a hypothesis
    leaving the frame by its blank (or by its last allowed label: with ``max_symbols=1`` this is
    modified beam search proper, a label consumes its frame); the K best of the hypotheses that left and
    those still in the frame go on. Streaming models emit in bursts at chunk ends, where one label per
    frame is too few (recipes/locale/RESULTS.md "Streaming").

    Every utterance keeps ``beam`` hypothesis slots (B, K); the joiner and the predictor run on all
    B·K slots at once, each utterance's candidates are ranked and merged on their own (hypotheses
    reaching the same label sequence are merged, log-sum-exp of scores, keeping the better one's
    frames), and an utterance past its last frame is left as it is, so the result does not depend on
    the batch or on how the frames are split into calls.

    ``fusion`` adds external-LM, internal-LM (ILME) and length-reward terms to every non-blank
    emission (blank steps keep the transducer score; the LMs advance only on labels; ``FusionState``)
    and the LM's end-of-sentence score in ``nbest(final=True)``; scores are then fused scores.
    """

    def __init__(self, model, batch: int, device=None, beam: int = 4, fusion: Fusion | None = None,
                 max_symbols: int = 1):
        self.model, self.k, self.b, self.max_symbols = model, beam, batch, max_symbols
        pred, blank = model.predictor, model.blank
        self.pred, self.joiner, self.blank = pred, model.joiner, blank  # looked up once: search is per op
        self.offsets = torch.arange(batch, device=device)[:, None] * beam  # (B, 1) first slot of each row
        self.stay = torch.full((model.vocab_size + 1,), -math.inf, device=device)
        self.stay[blank] = 0.0  # a hypothesis done with the frame: its one candidate is itself
        out, self.state = pred.step(torch.full((batch * beam,), blank, dtype=torch.long, device=device),
                                    pred.initial_state(batch * beam, device))
        self.pred_proj = model.joiner.pred_proj(out).view(batch, beam, -1)  # (B, K, J)
        self.fused = fusion.start(model, batch * beam, device) if fusion is not None else None
        # per utterance and live slot: (tokens, frames, probs)
        self.hyps: list[list[tuple[tuple, tuple, tuple]]] = [[((), (), ())] for _ in range(batch)]
        self.scores = torch.full((batch, beam), -math.inf, device=device)
        self.scores[:, 0] = 0.0  # one live hypothesis, the empty one, per utterance
        self.frame = 0

    def _logp(self, enc_proj_t):
        """(B, J) frame → fused and transducer-only log-probs (B, K, V+1)."""
        blank = self.blank
        am = self.joiner.joint(enc_proj_t[:, None], self.pred_proj).log_softmax(-1)  # (B, K, V+1)
        if self.fused is None:
            return am, am
        terms = self.fused.piece_terms().view(self.b, self.k, -1)  # (B, K, V)
        return torch.cat([am[..., :blank] + terms, am[..., blank:]], -1), am

    @torch.no_grad()
    def advance(self, enc: Encoded) -> None:
        enc = self.model.decoder_input(enc)
        enc_proj, lengths = self.model.joiner.enc_proj(enc.hidden), enc.lengths.tolist()  # (B, T, J)
        for t in range(enc_proj.shape[1]):
            done, past = None, enc.lengths <= t  # (B,) rows past their last frame
            for _ in range(self.max_symbols):  # a hypothesis leaves the frame with its blank
                done = self._expand(enc_proj[:, t], t, lengths, done, past)
                if done.all():
                    break
        self.frame += enc_proj.shape[1]

    def _expand(self, enc_t, t: int, lengths: list[int], done, past):
        """One expansion at frame ``t`` (enc_t (B, J)): every slot not ``done`` (B, K) with this frame
        extends by each label (staying in the frame) or by blank (leaving it); ``done`` slots can only stay
        as they are. The K best candidates per utterance are merged (same labels: log-sum-exp) and kept
        → which slots are now done (B, K)."""
        b, k, blank, pred, dev = self.b, self.k, self.blank, self.pred, enc_t.device
        logp, am = self._logp(enc_t)
        if done is not None:  # finished with this frame: one candidate, themselves, score unchanged
            logp = torch.where(done[..., None], self.stay, logp)
        cand = self.scores[..., None] + logp  # (B, K, V+1)
        leave = cand[..., blank]  # (B, K)
        live = self.scores > -math.inf
        worst = torch.where(live, leave, math.inf).amin(1)  # (B,) the worst slot leaving by blank
        if bool((past | live.all(1) & (cand[..., :blank].amax((1, 2)) < worst)).all()):
            # no label reaches the K best anywhere: every slot leaves by blank (the common frame)
            self.scores = torch.where(past[:, None], self.scores, leave)
            return torch.ones_like(live)
        width = logp.shape[-1]
        top_s, top_i = cand.flatten(1).topk(k, dim=1)
        top_p = am.flatten(1).gather(1, top_i).exp().tolist()  # (B, 2K) transducer posteriors
        rows = self.scores.tolist()  # (B, K) per utterance: kept scores, parent slots, labels
        parents, toks = [list(range(k)) for _ in range(b)], [[blank] * k for _ in range(b)]
        for i in range(b):
            if t >= lengths[i]:  # finished rows stay put
                continue
            merged: dict[tuple[int, ...], list] = {}
            for sc, j, p in zip(top_s[i].tolist(), top_i[i].tolist(), top_p[i]):
                if sc == -math.inf:
                    break
                parent, tok = divmod(j, width)
                seq, fr, pr = self.hyps[i][parent]
                if tok != blank:
                    seq, fr, pr = seq + (tok,), fr + (self.frame + t,), pr + (p,)
                if seq in merged:
                    hi, lo = max(merged[seq][0], sc), min(merged[seq][0], sc)
                    merged[seq][0] = hi + math.log1p(math.exp(lo - hi))
                else:
                    merged[seq] = [sc, parent, tok, (seq, fr, pr)]
            kept = sorted(merged.values(), key=lambda v: -v[0])[:k]
            self.hyps[i] = [v[3] for v in kept]
            n = len(kept)
            rows[i] = [v[0] for v in kept] + [-math.inf] * (k - n)
            parents[i][:n] = [v[1] for v in kept]
            toks[i][:n] = [v[2] for v in kept]
        self.scores = torch.tensor(rows, device=dev)
        parents, toks = torch.tensor([parents, toks], device=dev)  # (B, K) each
        flat = (parents + self.offsets).flatten()
        self.state, pred_proj = pred.select(self.state, flat), self.pred_proj.flatten(0, 1)[flat]
        emit = toks.flatten() != blank
        if self.fused is not None:
            self.fused.advance(flat, toks.flatten(), emit)
        if emit.any():
            new_out, new_state = pred.step(torch.where(emit, toks.flatten(), blank), self.state)
            self.state = pred.where(emit, new_state, self.state)
            pred_proj = torch.where(emit[:, None], self.joiner.pred_proj(new_out), pred_proj)
        self.pred_proj = pred_proj.view(b, k, -1)
        return toks == blank

    def nbest(self, n: int | None = None, final: bool = True) -> list[list[Hypothesis]]:
        """Per utterance up to ``n`` (default: beam) hypotheses, best first; ``final`` adds the fusion's
        end-of-sentence terms (the LM's, when fusing with ``lm_eos``)."""
        scores = self.scores
        if final and self.fused is not None:
            scores = scores + self.fused.end_terms().view(self.b, self.k)
        out = []
        for i in range(self.b):
            order = scores[i, : len(self.hyps[i])].argsort(descending=True)[: n or self.k].tolist()
            out.append([Hypothesis(*self.hyps[i][j][:1], float(scores[i, j]), *self.hyps[i][j][1:])
                        for j in order])
        return out

    def best(self, final: bool = False) -> list[Hypothesis]:
        return [nb[0] for nb in self.nbest(1, final)]


def beam_search(model, enc: Encoded, beam: int = 4, nbest: int | None = None,
                fusion: Fusion | None = None, max_symbols: int = 1) -> list[list[Hypothesis]]:
    """``BeamSearch`` over a whole batch → per utterance up to ``nbest`` (default ``beam``)
    hypotheses, best first."""
    s = BeamSearch(model, enc.hidden.shape[0], enc.hidden.device, beam, fusion, max_symbols)
    s.advance(enc)
    return s.nbest(nbest)


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
