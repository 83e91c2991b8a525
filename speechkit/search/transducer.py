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
from torch import Tensor

from ..lego.interface import Encoded
from ..nn.device import may_any
from .fusion import Fusion


@dataclass(frozen=True)
class Hypothesis:
    tokens: tuple[int, ...]
    score: float | None  # total log-probability of the alignment-marginalised hypothesis (None: greedy)
    frames: tuple[int, ...] = ()  # per token, the encoder frame it was emitted at (from the stream start)
    probs: tuple[float, ...] = ()  # per token, its posterior P(token | frame, context) from the transducer


class GreedySearch:
    """Batched greedy transducer search by label looping, keeping its state between calls (streaming).

    ``advance(enc)`` consumes the next frames of B utterances (or streams); ``best()`` gives the
    hypotheses so far. Up to ``max_symbols`` labels per frame; a frame ends at its first blank.

    Label looping (as NeMo's batched greedy decoders do): every utterance keeps its own frame index,
    and each loop finds, for all utterances at once, the next label: the joiner runs with each
    utterance's current predictor output over a ``window`` of frames from its index, the first non-blank
    frame in it is the next emission (no emission in the window: the index moves past it). So a loop
    costs one predictor step, one joiner call over (B, window) and one host synchronisation (is any
    utterance left?), whatever the number of blank frames; the emissions stay on the device until the
    call ends. The result equals the frame-by-frame definition: each row evolves independently of the
    others (batched = one by one), and feeding the frames in pieces = feeding them at once.
    """

    @torch.inference_mode()
    def __init__(self, model, batch: int, device=None, max_symbols: int = 3, window: int | None = None):
        self.model, self.max_symbols, self.b = model, max_symbols, batch
        pred, blank = model.predictor, model.blank
        out, self.state = pred.step(torch.full((batch,), blank, dtype=torch.long, device=device),
                                    pred.initial_state(batch, device))
        self.pred_proj = model.joiner.pred_proj(out)  # (B, J)
        # frames looked at per loop: a few on the CPU (each joiner row costs time there, and so does each
        # loop), more on an accelerator (a loop costs launches and a synchronisation, a joiner row ~nothing)
        self.window = window or (4 if torch.device(device or "cpu").type == "cpu" else 8)
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.frames: list[list[int]] = [[] for _ in range(batch)]
        self.probs: list[list[float]] = [[] for _ in range(batch)]
        self.frame = 0  # frames consumed so far

    @torch.inference_mode()
    def advance(self, enc: Encoded) -> None:
        pred, join, blank, b = self.model.predictor, self.model.joiner, self.model.blank, self.b
        enc = self.model.decoder_input(enc)
        enc_proj = join.enc_proj(enc.hidden)  # (B, T, J)
        dev, t_max, w = enc_proj.device, enc_proj.shape[1], self.window
        lengths = enc.lengths.to(dev)
        rows, ahead = torch.arange(b, device=dev), torch.arange(w, device=dev)
        t = torch.zeros(b, dtype=torch.long, device=dev)  # (B,) each utterance's frame
        used = torch.zeros(b, dtype=torch.long, device=dev)  # (B,) labels emitted at that frame
        found: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []  # per loop: emitted?, token, frame, prob
        while bool((t < lengths).any()):
            frames = t[:, None] + ahead  # (B, W)
            valid = frames < lengths[:, None]
            logits = join.joint(enc_proj[rows[:, None], frames.clamp(max=t_max - 1)],
                                self.pred_proj[:, None]).float()  # (B, W, V+1)
            best, tok = logits.max(-1)  # (B, W)
            hit = valid & (tok != blank)
            if not may_any(hit):  # blank windows everywhere (known for free on the CPU): move on
                t, used = t + w, torch.zeros_like(used)
                continue
            k = hit.int().argmax(1)  # (B,) first label in the window (0 when none)
            emit = hit[rows, k]
            tok, at = tok[rows, k], t + k
            prob = (best[rows, k] - logits[rows, k].logsumexp(-1)).exp()
            found.append((emit, tok, at, prob))
            used = torch.where(emit, torch.where(k > 0, 1, used + 1), 0)  # (a new frame starts at 0)
            full = emit & (used >= self.max_symbols)  # the frame's label budget is spent: move on
            t = torch.where(emit, torch.where(full, at + 1, at), t + w)
            used = torch.where(full, 0, used)
            new_out, new_state = pred.step(torch.where(emit, tok, blank), self.state)
            self.state = pred.where(emit, new_state, self.state)
            self.pred_proj = torch.where(emit[:, None], join.pred_proj(new_out), self.pred_proj)
        if found:  # one transfer for the whole call
            emit, tok, at, prob = (torch.stack(x, 1).cpu() for x in zip(*found))  # (B, loops) each
            for i in range(b):
                keep = emit[i]
                self.tokens[i] += tok[i][keep].tolist()
                self.frames[i] += (at[i][keep] + self.frame).tolist()
                self.probs[i] += prob[i][keep].tolist()
        self.frame += t_max

    def best(self, final: bool = False) -> list[Hypothesis]:
        return [Hypothesis(tuple(t), None, tuple(f), tuple(p))
                for t, f, p in zip(self.tokens, self.frames, self.probs)]


@torch.no_grad()
def greedy_search(model, enc: Encoded, max_symbols: int = 3) -> list[list[int]]:
    """Batched greedy transducer decoding of a whole batch → B token lists."""
    s = GreedySearch(model, enc.hidden.shape[0], enc.hidden.device, max_symbols)
    s.advance(enc)
    return [list(h.tokens) for h in s.best()]


_HASH = 1_000_003  # label sequences are told apart by a rolling hash h' = h·_HASH + label + 1 (mod 2^64)


class BeamSearch:
    """Modified beam search, batched over utterances on their device, with its state kept between calls
    (streaming): ``advance(enc)`` consumes the next frames, ``nbest()`` ranks.

    Up to ``max_symbols`` labels per frame: each frame is expanded up to that many times, a hypothesis
    leaving the frame by its blank (or by its last allowed label: with ``max_symbols=1`` this is
    modified beam search proper, a label consumes its frame); the K best of the hypotheses that left and
    those still in the frame go on. Streaming models emit in bursts at chunk ends, where one label per
    frame is too few (recipes/locale/RESULTS.md "Streaming").

    Every utterance keeps ``beam`` hypothesis slots (B, K) and everything runs on tensors of that shape:
    the joiner and the predictor on all B·K slots at once, the K best candidates of each utterance
    chosen by one top-k, candidates reaching the same label sequence (same length and rolling hash)
    merged (log-sum-exp of their scores, keeping the better one's frames), the slots re-sorted by score,
    and each step's parent slots and new labels kept, to be traced back into (B, K, L) labels, frames
    and posteriors when hypotheses are asked for. No
    per-utterance Python work and, on an accelerator, no host synchronisation inside a frame: the
    tensors come to the host in ``nbest``. An utterance past its last frame is left as it is, so the
    result does not depend on the batch or on how the frames are split into calls.

    ``fusion`` adds external-LM, internal-LM (ILME) and length-reward terms to every non-blank
    emission (blank steps keep the transducer score; the LMs advance only on labels; ``FusionState``)
    and the LM's end-of-sentence score in ``nbest(final=True)``; scores are then fused scores.
    """

    @torch.inference_mode()  # (search state is never differentiated; inference mode saves time per op)
    def __init__(self, model, batch: int, device=None, beam: int = 4, fusion: Fusion | None = None,
                 max_symbols: int = 1):
        self.model, self.k, self.b, self.max_symbols = model, beam, batch, max_symbols
        pred, blank = model.predictor, model.blank
        self.pred, self.joiner, self.blank = pred, model.joiner, blank  # looked up once: search is per op
        self.cpu = torch.device(device or "cpu").type == "cpu"
        self.offsets = torch.arange(batch, device=device)[:, None] * beam  # (B, 1) first slot of each row
        self.stay = torch.full((model.vocab_size + 1,), -math.inf, device=device)
        self.stay[blank] = 0.0  # a hypothesis done with the frame: its one candidate is itself
        out, self.state = pred.step(torch.full((batch * beam,), blank, dtype=torch.long, device=device),
                                    pred.initial_state(batch * beam, device))
        self.pred_proj = model.joiner.pred_proj(out).view(batch, beam, -1)  # (B, K, J)
        self.fused = fusion.start(model, batch * beam, device) if fusion is not None else None
        self.scores = torch.full((batch, beam), -math.inf, device=device)
        self.scores[:, 0] = 0.0  # one live hypothesis, the empty one, per utterance
        self.hash = torch.zeros(batch, beam, dtype=torch.long, device=device)  # (B, K) of the labels
        # (B, K, L, 3) per slot and label: the label, its frame, its posterior, as of ``traced`` (B, K)
        # labels; the expansions since then wait in ``steps`` (parent slots, emitted?, label, frame,
        # log-posterior)
        self.trace = torch.zeros(batch, beam, 0, 3, dtype=torch.float64, device=device)
        self.traced = torch.zeros(batch, beam, dtype=torch.long, device=device)
        self.steps: list[tuple[Tensor, Tensor, Tensor, int, Tensor]] = []
        self.later = torch.ones(beam, beam, dtype=torch.bool, device=device).tril(-1)  # [j, i]: i < j
        self.identity = torch.arange(beam, device=device).expand(batch, beam)  # (B, K) slots unmoved
        self.frame = 0

    def _logp(self, enc_proj_t):
        """(B, J) frame → fused and transducer-only log-probs (B, K, V+1)."""
        blank = self.blank
        am = self.joiner.joint(enc_proj_t[:, None], self.pred_proj).float().log_softmax(-1)  # (B, K, V+1)
        if self.fused is None:
            return am, am
        terms = self.fused.piece_terms().view(self.b, self.k, -1)  # (B, K, V)
        return torch.cat([am[..., :blank] + terms, am[..., blank:]], -1), am

    @torch.inference_mode()
    def advance(self, enc: Encoded) -> None:
        enc = self.model.decoder_input(enc)
        enc_proj = self.model.joiner.enc_proj(enc.hidden)  # (B, T, J)
        lengths = enc.lengths.to(enc_proj.device)
        ends = int(lengths.min()) if self.cpu else 0  # on the CPU: no row ends before this frame
        for t in range(enc_proj.shape[1]):
            done, past = None, lengths <= t if t >= ends else None  # (B,) rows past their last frame
            for _ in range(self.max_symbols):  # a hypothesis leaves the frame with its blank
                done = self._expand(enc_proj[:, t], t, done, past)
                if self.cpu and bool(done.all()):  # (on a device the remaining expansions run masked)
                    break
        self.frame += enc_proj.shape[1]

    def _expand(self, enc_t, t: int, done, past):
        """One expansion at frame ``t`` (enc_t (B, J)): every slot not ``done`` (B, K) with this frame
        extends by each label (staying in the frame) or by blank (leaving it); ``done`` slots can only stay
        as they are. The K best candidates per utterance are merged (same labels: log-sum-exp), sorted
        and kept → which slots are now done (B, K)."""
        k, blank, pred = self.k, self.blank, self.pred
        logp, am = self._logp(enc_t)
        if done is not None:  # finished with this frame: one candidate, themselves, score unchanged
            logp = torch.where(done[..., None], self.stay, logp)
        cand = self.scores[..., None] + logp  # (B, K, V+1)
        width = logp.shape[-1]
        top_s, top_i = cand.flatten(1).topk(k, dim=1)  # (B, K) each, best first
        parent, tok = top_i // width, top_i % width
        if self.cpu and bool((tok == blank).all() if past is None else ((tok == blank).all(1) | past).all()):
            # the common frame: the K best are blanks, so every slot leaves by its blank, in place (a check
            # free on the CPU only)
            self.scores = cand[..., blank] if past is None else torch.where(past[:, None], self.scores,
                                                                            cand[..., blank])
            return torch.ones_like(tok, dtype=torch.bool)
        emit = tok != blank
        h = self.hash.gather(1, parent)
        h = torch.where(emit, h * _HASH + tok + 1, h)
        # merge candidates with the same labels: the first (best) of a group keeps the group's log-sum-exp
        # (candidates at -inf rank after every finite one, so they never take a finite one's place)
        same = h[:, :, None] == h[:, None]  # (B, K, K)
        first = ~(same & self.later).any(-1)  # (B, K)
        if self.cpu and bool(first.all()):  # nothing to merge (known for free on the CPU): top-k is sorted
            score = top_s
        else:
            merged = torch.where(same, top_s[:, None], -math.inf).logsumexp(-1)
            score, order = torch.where(first, merged, -math.inf).sort(dim=1, descending=True, stable=True)
            parent, tok, emit, h, top_i = (x.gather(1, order) for x in (parent, tok, emit, h, top_i))
        logprob = am.flatten(1).gather(1, top_i)  # (B, K) transducer log-posteriors
        if past is not None and may_any(past):  # rows past their last frame keep everything
            stay = past[:, None]
            parent, tok = torch.where(stay, self.identity, parent), torch.where(stay, blank, tok)
            emit = emit & ~stay
            score, h = torch.where(stay, self.scores, score), torch.where(stay, self.hash, h)
        self.scores, self.hash = score, h
        self.steps.append((parent, emit, tok, self.frame + t, logprob))
        flat = (parent + self.offsets).flatten()
        self.state, pred_proj = pred.select(self.state, flat), self.pred_proj.flatten(0, 1)[flat]
        emit = emit.flatten()
        if self.fused is not None:
            self.fused.advance(flat, tok.flatten(), emit)
        if may_any(emit):
            new_out, new_state = pred.step(torch.where(emit, tok.flatten(), blank), self.state)
            self.state = pred.where(emit, new_state, self.state)
            pred_proj = torch.where(emit[:, None], self.joiner.pred_proj(new_out), pred_proj)
        self.pred_proj = pred_proj.view(self.b, k, -1)
        return tok == blank

    def _trace(self) -> None:
        """Bring ``trace`` up to date with the waiting ``steps``: follow each slot's ancestry back through
        them (one (B, K) gather per step), reorder the trace after the ancestors, and write the labels
        emitted along the way after each ancestor's ``traced`` ones (non-emitting steps write to a spare
        last column, never read)."""
        if not self.steps:
            return
        parent, emit, tok, frame, prob = zip(*self.steps)
        slot, anc = self.identity, []
        for p in reversed(parent):  # slot, at each step, of every current slot's ancestor
            anc.append(slot)
            slot = p.gather(1, slot)
        anc = torch.stack(anc[::-1])  # (S, B, K); ``slot``: the ancestors in the trace
        emit, tok, prob = (torch.stack(x).gather(2, anc) for x in (emit, tok, prob))  # (S, B, K)
        base = self.traced.gather(1, slot)  # (B, K) labels traced before
        length = base + emit.sum(0)  # (B, K) labels per slot
        cap = int(length.max()) + 1  # every label, and the spare column
        trace = self.trace.gather(1, slot[..., None, None].expand(-1, -1, *self.trace.shape[2:]))
        self.trace = torch.cat([trace, trace.new_zeros(self.b, self.k, max(cap - trace.shape[2], 0), 3)], 2)
        pos = base + emit.cumsum(0) - 1  # (S, B, K)
        pos = torch.where(emit, pos, self.trace.shape[2] - 1).permute(1, 2, 0)  # (B, K, S)
        frames = torch.tensor(frame, dtype=torch.float64, device=pos.device)[:, None, None].expand_as(prob)
        new = torch.stack([tok.double(), frames, prob.double().exp()], -1).permute(1, 2, 0, 3)  # (B, K, S, 3)
        self.trace.scatter_(2, pos[..., None].expand(-1, -1, -1, 3), new)
        self.traced, self.steps = length, []

    @torch.inference_mode()
    def nbest(self, n: int | None = None, final: bool = True) -> list[list[Hypothesis]]:
        """Per utterance up to ``n`` (default: beam) hypotheses, best first; ``final`` adds the fusion's
        end-of-sentence terms (the LM's, when fusing with ``lm_eos``)."""
        scores = self.scores
        if final and self.fused is not None:
            scores = scores + self.fused.end_terms().view(self.b, self.k)
        scores, order = scores.sort(dim=1, descending=True, stable=True)
        order = order[:, : n or self.k]
        self._trace()
        trace = self.trace.gather(1, order[..., None, None].expand(-1, -1, *self.trace.shape[2:])).cpu()
        lengths, scores = self.traced.gather(1, order).cpu().tolist(), scores.cpu().tolist()
        out = []
        for i in range(self.b):
            out.append([Hypothesis(tuple(trace[i, j, :m, 0].long().tolist()), scores[i][j],
                                   tuple(trace[i, j, :m, 1].long().tolist()),
                                   tuple(trace[i, j, :m, 2].tolist()))
                        for j, m in enumerate(lengths[i]) if scores[i][j] > -math.inf])
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
