"""Streaming recognition: audio in, partial and final results with word timestamps and confidence out.

A ``Recognizer`` serves one stream. ``accept(samples)`` takes the next 16-kHz samples (any number),
computes the fbank frames they complete (kaldi fbank frames depend on their own 25 ms window only,
so streamed features equal offline ones), runs the chunked encoder (``SpeechEncoder.forward_chunk``)
on every whole chunk, advances the stateful transducer search (greedy, or beam with LM / ILME
fusion) and returns the events: a ``partial`` whenever the best text changed, a ``final`` at an
endpoint (METHODS.md §7), after which the search restarts (the encoder keeps its caches).

Endpoint rules, in encoder frames of trailing blank on the best hypothesis (as in sherpa-onnx):
a segment with text ends after ``endpoint_trailing`` seconds without a new token; a segment without
text is dropped after ``endpoint_silence`` seconds; any segment ends at ``max_segment`` seconds.

Word times: the frame each word's first piece was emitted at (``timestamps="transducer"``), or the
first frame of its first piece in a CTC forced alignment of the marginal head over the segment
(``"ctc"``, finals only), plus a shift calibrated on dev data. Word confidence: the smallest posterior
of its pieces, mapped through a logistic calibration fitted on dev data (``calibrate``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

import torch
import torchaudio.functional as AF

from ..errors import SpeechkitError
from ..features import FbankConfig, fbank
from ..lego.interface import Encoded
from ..nn.device import model_device
from .fusion import Fusion
from .transducer import BeamSearch, GreedySearch, Hypothesis

WORD_START = "\u2581"  # sentencepiece's word-boundary mark


@dataclass(frozen=True)
class StreamOptions:
    chunk: int = 8  # encoder frames per chunk (× the front end's stack × 10 ms: 8 → 320 ms with FrameStack 4)
    beam: int = 1  # 1 = greedy, > 1 = modified beam search
    max_symbols: int = 3  # most labels per encoder frame (streaming models emit in bursts at chunk ends)
    fusion: Fusion | None = None
    endpoint_trailing: float = 1.2  # s without a new token that end a segment with text
    endpoint_silence: float = 2.4  # s after which a segment without text is dropped
    max_segment: float = 20.0  # s
    timestamps: str = "transducer"  # or "ctc"
    time_shift: float = 0.0  # s added to every word time (calibrated: emission delay)
    confidence: tuple[float, float] | None = None  # (a, b): conf = σ(a · logit(min piece posterior) + b)

    def key(self) -> str:
        """The calibration entry these options use."""
        return f"chunk{self.chunk}-beam{self.beam}-{self.timestamps}"


@dataclass
class Word:
    word: str
    start: float  # s from the start of the stream
    end: float
    confidence: float


@dataclass
class Event:
    kind: str  # "partial" or "final"
    text: str
    words: list[Word] = field(default_factory=list)
    segment: int = 0
    start: float = 0.0  # the segment's start (s)
    end: float = 0.0  # audio time when the event was emitted (s)

    def to_dict(self) -> dict:
        return asdict(self)


class CannotStream(SpeechkitError, ValueError):
    """A model that cannot stream (or take an attention chunk) was asked to."""


def set_chunk(model, chunk: int | None, stream: bool = True) -> None:
    """The one check of "can this model stream": set its encoder's attention chunk (encoder frames; a
    streaming, causal Conformer) and, with ``stream``, check that it streams chunk by chunk (``stream_state``)
    and that its joiner reads the encoder (no LegoNN ingestor); ``CannotStream`` saying why otherwise."""
    body = getattr(getattr(model, "encoder", None), "body", None)
    if chunk is not None:
        if not getattr(body, "causal", False):
            raise CannotStream("a chunk needs a streaming (causal) Conformer encoder; this "
                               f"{type(model).__name__} has a {type(body).__name__}")
        body.chunk = chunk
    if stream:
        if getattr(model, "ingestor", None) is not None:
            raise CannotStream("streaming needs a transducer whose joiner reads the encoder (no ingestor)")
        try:
            model.encoder.stream_state(1)
        except (AttributeError, ValueError) as e:
            raise CannotStream(str(e)) from None


class Recognizer:
    """One audio stream through a streaming transducer brick (see the module docstring).

    Args:
        model: a ``Transducer`` whose encoder streams (FrameStack front end, causal Conformer), eval mode.
        tokenizer: the brick's ``Tokenizer``; fbank: its feature settings.
    """

    def __init__(self, model, tokenizer, fbank_cfg: FbankConfig, opts: StreamOptions = StreamOptions()):
        if opts.timestamps not in ("transducer", "ctc"):
            raise ValueError(f"timestamps must be 'transducer' or 'ctc', got {opts.timestamps!r}")
        self.model, self.tok, self.cfg, self.opts = model, tokenizer, fbank_cfg, opts
        self.device = model_device(model)  # features go there; events come back to the host
        set_chunk(model, opts.chunk)
        self.enc_state = model.encoder.stream_state(1, self.device)
        self.win = int(fbank_cfg.sample_rate * fbank_cfg.frame_length_ms / 1000)
        self.hop = int(fbank_cfg.sample_rate * fbank_cfg.frame_shift_ms / 1000)
        self.frame_s = fbank_cfg.frame_shift_ms / 1000 * model.encoder.frontend.stack  # s per encoder frame
        self.samples = torch.zeros(0)
        self.consumed = 0  # samples before self.samples
        self.frames = 0  # encoder frames so far
        self.segment, self.seg_start, self.seg_logits = 0, 0, []
        self.search = self._new_search()
        self.last_text, self.compute_s, self.chunk_s = "", 0.0, []

    def _new_search(self):
        if self.opts.beam > 1 or self.opts.fusion is not None:
            return BeamSearch(self.model, 1, self.device, max(self.opts.beam, 1), self.opts.fusion,
                              self.opts.max_symbols)
        return GreedySearch(self.model, 1, self.device, max_symbols=self.opts.max_symbols)

    @property
    def audio_s(self) -> float:
        return (self.consumed + self.samples.numel()) / self.cfg.sample_rate

    @torch.no_grad()
    def accept(self, samples: torch.Tensor, final: bool = False) -> list[Event]:
        """The next samples (N,) in [-1, 1] at the brick's rate → events. ``final``: end of the stream."""
        t0 = time.perf_counter()
        self.samples = torch.cat([self.samples, samples.float()])
        n = 0 if self.samples.numel() < self.win else 1 + (self.samples.numel() - self.win) // self.hop
        if n:
            feats = fbank(self.samples[: (n - 1) * self.hop + self.win], self.cfg)  # (n, F)
            self.samples, self.consumed = self.samples[n * self.hop:], self.consumed + n * self.hop
        else:
            feats = torch.zeros(0, self.cfg.num_mel_bins)
        feats = feats[None].to(self.device)  # (1, n, F)
        enc, self.enc_state = self.model.encoder.forward_chunk(feats, self.enc_state, final)
        events = []
        for i in range(0, enc.hidden.shape[1], self.opts.chunk):  # chunk by chunk, for the endpoint rules
            h = enc.hidden[:, i: i + self.opts.chunk]  # (1, ≤C, D)
            part = Encoded(h, torch.tensor([h.shape[1]]),
                           None if enc.logits is None else enc.logits[:, i: i + self.opts.chunk])
            self.search.advance(part)
            self.frames += part.hidden.shape[1]
            if part.logits is not None:
                self.seg_logits.append(part.logits[0].cpu())
            events += self._check()
        if final:
            events += self._final()
        elapsed = time.perf_counter() - t0
        self.compute_s += elapsed
        if enc.hidden.shape[1]:
            self.chunk_s.append(elapsed)
        return events

    def finish(self) -> list[Event]:
        """End of the stream: the last, partial chunk and the final result."""
        return self.accept(torch.zeros(0), final=True)

    def run(self, wave: torch.Tensor, block_s: float = 0.1) -> list[Event]:
        """A whole waveform (N,) fed in ``block_s`` pieces, then finished → all its events."""
        step = max(1, int(block_s * self.cfg.sample_rate))
        events = [e for i in range(0, wave.numel(), step) for e in self.accept(wave[i: i + step])]
        return events + self.finish()

    def _best(self, final: bool = False) -> Hypothesis:
        return self.search.best(final)[0]

    def _check(self) -> list[Event]:
        hyp = self._best()
        seg_frames = self.frames - self.seg_start
        last = self.seg_start + hyp.frames[-1] + 1 if hyp.frames else self.seg_start
        trailing = (self.frames - last) * self.frame_s
        if hyp.tokens and (trailing >= self.opts.endpoint_trailing
                           or seg_frames * self.frame_s >= self.opts.max_segment):
            return self._final()
        if not hyp.tokens and trailing >= self.opts.endpoint_silence:
            self._reset()
            return []
        text = self.tok.decode(list(hyp.tokens))
        if text == self.last_text:
            return []
        self.last_text = text
        return [Event("partial", text, self.words(hyp), self.segment, self.seg_start * self.frame_s,
                      self.audio_s)]

    def _final(self) -> list[Event]:
        hyp = self._best(final=True)
        out = []
        if hyp.tokens:
            frames = self._ctc_frames(hyp) if self.opts.timestamps == "ctc" else None
            out.append(Event("final", self.tok.decode(list(hyp.tokens)), self.words(hyp, frames),
                             self.segment, self.seg_start * self.frame_s, self.audio_s))
            self.segment += 1
        self._reset()
        return out

    def _reset(self) -> None:
        self.search, self.seg_start, self.seg_logits, self.last_text = self._new_search(), self.frames, [], ""

    def _ctc_frames(self, hyp: Hypothesis) -> tuple[int, ...] | None:
        """First frame of each token in a CTC forced alignment of the segment (None if it cannot align)."""
        if not self.seg_logits:
            return None
        logp = torch.cat(self.seg_logits).float().log_softmax(-1)[None]  # (1, T, V+1)
        try:
            labels, scores = AF.forced_align(logp, torch.tensor([hyp.tokens], dtype=torch.int32),
                                             blank=logp.shape[-1] - 1)
        except RuntimeError:
            return None
        return tuple(s.start for s in AF.merge_tokens(labels[0], scores[0].exp(), blank=logp.shape[-1] - 1))

    def words(self, hyp: Hypothesis, frames: tuple[int, ...] | None = None) -> list[Word]:
        """The hypothesis as words: pieces joined at word-boundary marks, times from ``frames``
        (default: the transducer's emission frames), confidence from the pieces' posteriors."""
        frames = frames or hyp.frames
        groups: list[list[int]] = []
        for j, piece in enumerate(self.tok.pieces(list(hyp.tokens))):
            if piece.startswith(WORD_START) or not groups:
                groups.append([])
            groups[-1].append(j)
        out = []
        for g in groups:
            text = self.tok.decode([hyp.tokens[j] for j in g])
            if not text:
                continue
            start = (self.seg_start + frames[g[0]]) * self.frame_s + self.opts.time_shift
            end = (self.seg_start + frames[g[-1]] + 1) * self.frame_s + self.opts.time_shift
            out.append(Word(text, round(max(start, 0.0), 3), round(max(end, 0.0), 3),
                            round(self.confidence(min(hyp.probs[j] for j in g)), 4)))
        return out

    def confidence(self, p: float) -> float:
        if self.opts.confidence is None:
            return p
        a, b = self.opts.confidence
        return 1 / (1 + math.exp(-(a * logit(p) + b)))

    def summary(self) -> dict:
        """Real-time factor and per-chunk compute latency of the stream so far."""
        return timing([self])


MIN_TIMED_AUDIO_S = 0.1  # below this much audio the fixed cost of a stream swamps the RTF: not reported


def timing(recognizers: list[Recognizer]) -> dict:
    """Real-time factor and per-chunk compute latency (mean, 95th percentile over every chunk) of the
    streams of ``recognizers`` together. ``rtf`` is None under ``MIN_TIMED_AUDIO_S`` of audio."""
    audio, compute = sum(r.audio_s for r in recognizers), sum(r.compute_s for r in recognizers)
    lat = sorted(s for r in recognizers for s in r.chunk_s) or [0.0]
    first = recognizers[0] if recognizers else None
    return {"audio_s": round(audio, 3), "compute_s": round(compute, 3),
            "rtf": round(compute / audio, 4) if audio >= MIN_TIMED_AUDIO_S else None,
            "chunk_ms": round(first.opts.chunk * first.frame_s * 1000) if first else None,
            "latency_ms_mean": round(1000 * sum(lat) / len(lat), 2),
            "latency_ms_p95": round(1000 * lat[int(0.95 * (len(lat) - 1))], 2)}


def deploy_int8(model, tokenizer, fbank_cfg: FbankConfig, opts: StreamOptions):
    """``compress.deploy`` with fbgemm int8 (max-abs scales where the weights have none) at the shapes
    streaming uses: timed on 2 s of synthetic noise streamed through ``model`` → its ``Plan``."""
    from ..compress.deploy import deploy

    noise = torch.randn(2 * fbank_cfg.sample_rate, generator=torch.Generator().manual_seed(0)) * 0.05
    return deploy(model, lambda m: Recognizer(m, tokenizer, fbank_cfg, replace(opts, fusion=None)).run(noise),
                  ptq=True)


def logit(p: float, eps: float = 1e-6) -> float:
    p = min(max(p, eps), 1 - eps)
    return math.log(p / (1 - p))
