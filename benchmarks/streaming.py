"""speechkit's transducer beam search vs torchaudio's ``RNNTBeamSearch``, same model, side by side.

    python benchmarks/streaming.py BRICK MANIFEST [--max-utts N] [--beam 4] [--threads 1] [--chunk C]
                                   [--stream] [--int8] [--ta-rank norm|score] [--step-max-tokens 100]
                                   [--json OUT]

Both searches run in one process, on one thread by default, on THE SAME encoder output of the same
model with the same beam, timed with ``time.perf_counter`` in alternating order from one utterance to
the next, so machine load affects both alike. Two modes:

Whole-utterance mode (default). Each utterance is encoded once (batch 1; features and encoder outside
the timing); then both searches are timed on the whole encoder output. Each timed region holds
everything from the encoder output to the hypotheses: ``model.decoder_input`` (identity unless the
brick has a LegoNN ingestor), the joiner's encoder projection and the search. ``--chunk C`` sets
``model.encoder.body.chunk = C`` before encoding (a streaming model's chunked-attention output).
Reported: search seconds, ms per utterance and per encoder frame, search RTF (search s / audio s),
``ratio_total`` = torchaudio / speechkit search time.

Streaming mode (``--stream``, needs ``--chunk C`` and a streaming brick: FrameStack front end, causal
Conformer, no ingestor). Per utterance: the audio is read (untimed) and its kaldi fbank computed once
(timed: ``features``, shared by both sides); the features go to ``model.encoder.forward_chunk`` in
pieces of C·stack feature frames (one encoder chunk each, the last one ``final``; timed: ``encoder``,
shared), and every chunk of encoder output is handed, in turn, to (a) speechkit's stateful
``BeamSearch(model, 1, beam=K)`` (``GreedySearch`` when K = 1) via ``advance`` and (b) torchaudio's
streaming ``RNNTBeamSearch.infer(chunk, length, K, state, hypotheses)``, which is given back the
hypotheses it returned for the previous chunk (each side timed on its own, its construction and its
final ``best`` included; the side that goes first alternates per utterance). Per side:
RTF total = (features + encoder + its search) / audio s, search RTF, WER / CER of the final best
hypotheses, and the ratios torchaudio / speechkit of search time (``ratio_search``) and of total time
(``ratio_total``). A third timing, ``recognizer``, is speechkit's whole streaming pipeline on the same
audio: ``speechkit.search.stream.Recognizer`` (incremental fbank, chunked encoder, the same search,
partial-result bookkeeping; endpointing off) fed 0.1-s blocks, its own ``compute_s / audio_s``; its
text is checked against (a)'s (``recognizer.same_text``: how many are equal).

``--int8``: before anything is timed, ``speechkit.compress.deploy.deploy(model, run, ptq=True)`` swaps
each linear layer for an fbgemm int8 kernel where that is faster and within tolerance at the shapes
``run`` uses (streaming mode: ``speechkit.search.stream.deploy_int8``, as ``speechkit stream --int8`` does;
whole mode: the first utterance encoded and beam-searched). Both searches then run on
the same deployed model; its choices are printed and stored.

The torchaudio side. ``TorchaudioRNNT`` adapts a speechkit ``Transducer`` to the methods that
``RNNTBeamSearch`` calls on its model (torchaudio ``RNNT``'s interface):

- ``transcribe(sources (1, T, E), lengths)`` → the joiner's encoder projection (1, T, J). The search
  is run through the public ``RNNTBeamSearch.forward(input, length, beam_width)``, which calls
  ``transcribe`` and then ``_search``; ``input`` is the speechkit encoder output (what the joiner
  reads), so that the only model work is the projection speechkit's search does too, and the timed
  call is the search alone.
- ``transcribe_streaming(sources (1, T, E), lengths, state)`` → (the same projection of this chunk,
  lengths, ``[]``): what ``RNNTBeamSearch.infer`` calls. Its ``state`` is torchaudio's transcription
  network state, which ``infer`` passes in and hands back untouched; here the encoder (with its
  caches) runs outside, so there is none. ``infer`` then runs ``_search`` seeded with the given
  hypotheses (``None``: the start hypothesis) and returns the top K, best first. ``_search`` carries
  nothing but those K hypotheses from one frame to the next, so ``infer`` over consecutive chunks
  gives what ``forward`` gives over their concatenation (tested).
- ``predict(targets (N, U), lengths, state)`` → (joiner-projected predictor outputs (N, U, J),
  lengths, state): one speechkit predictor ``step`` per target column. torchaudio starts every search
  with ``predict([[blank]], [1], None)``; speechkit's predictors use the blank id as start of
  sentence too, so ``state=None`` is ``predictor.initial_state`` and the first output is the one
  speechkit's search starts from.
- ``join(src (1, 1, J), ·, tgt (N, 1, J), ·)`` → logits (N, 1, 1, V+1) =
  ``joiner.joint(src, tgt)``, i.e. ``joiner.forward(enc, pred)`` with both projections cached, as
  speechkit's search caches them. torchaudio applies ``log_softmax`` (temperature 1) itself, and
  takes the LAST output as blank: speechkit's blank is V, the last of V+1. Logits are returned.

States: torchaudio keeps one state per hypothesis, a ``List[List[Tensor]]`` whose tensors have the
hypothesis on dim 0; it batches hypotheses with ``torch.cat`` on dim 0 (``_batch_state``) and splits
them with ``index_select(0, ·)`` (``_slice_state``). The stateless predictor's state (N, context-1)
label ids is kept as ``[[ids]]``; the LSTM predictor's (h, c), each (layers, N, P), as
``[[h (N, layers, P), c (N, layers, P)]]``. (The Transformer predictor's growing KV cache has a
per-hypothesis capacity that ``torch.cat`` cannot batch: not supported.)

The two searches are DIFFERENT ALGORITHMS, so their hypotheses may differ:

- speechkit (``speechkit.search.transducer.BeamSearch``): modified beam search, at most one label
  per frame, B·K hypotheses batched, hypotheses reaching the same labels merged (log-sum-exp),
  ranked by total log-probability. A label there consumes its frame (no blank follows it), so its
  scores sum paths of a different lattice than the RNN-T loss's and may even exceed log P(y|x).
- torchaudio: "standard" RNN-T beam search (Graves 2012, Algorithm 1): within a frame it keeps
  expanding (up to ``step_max_tokens`` labels per frame, default 100) while a non-blank extension
  beats the K-th best hypothesis that has already emitted blank, merges hypotheses with the same
  labels, and after each frame keeps the top K by its ``hypo_sort_key`` — by default the score
  divided by (labels + 2), a length normalisation (``--ta-rank score`` ranks by the raw score
  instead). Its hypotheses start with the blank it seeded the search with (stripped here; it is
  the "+ 2"'s second 1). With K = 1 it is still this search (not speechkit's greedy one).

Both WERs are reported, with how many utterances get the identical best label sequence (and, where
they differ, which search's best hypothesis is more probable under the model: log P(y|x) summed
over all alignments, i.e. −RNN-T loss, computed outside the timing on the encoder output the
searches saw; the two searches' own scores sum different, pruned sets of alignments and are not
comparable), and the speed ratios (torchaudio time / speechkit time; > 1: speechkit is faster).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import Counter
from pathlib import Path

import torch
import torchaudio
from torch import Tensor, nn
from torchaudio.models import RNNTBeamSearch

from speechkit.audio import read_audio
from speechkit.compress.deploy import deploy
from speechkit.data.dataset import collate, target_texts
from speechkit.data.manifest import load_manifest
from speechkit.features import FbankConfig, fbank
from speechkit.lego.interface import Encoded
from speechkit.lego.transducer import LSTMPredictor, StatelessPredictor
from speechkit.metrics import score
from speechkit.pipelines.bricks import load_brick
from speechkit.pipelines.decode import brick_dataset
from speechkit.search.stream import CannotStream, Recognizer, StreamOptions, deploy_int8, set_chunk
from speechkit.search.transducer import BeamSearch, GreedySearch, beam_search
from speechkit.tokenizer import Tokenizer

SIDES = ("speechkit", "torchaudio")


class TorchaudioRNNT(nn.Module):
    """A speechkit ``Transducer`` behind torchaudio ``RNNT``'s ``transcribe`` / ``transcribe_streaming`` /
    ``predict`` / ``join`` (what ``RNNTBeamSearch`` calls). ``transcribe`` reads the speechkit encoder
    output (after ``decoder_input``), not features. Stateless and LSTM predictors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if not isinstance(model.predictor, (StatelessPredictor, LSTMPredictor)):
            raise TypeError(f"{type(model.predictor).__name__}: only stateless and LSTM predictors have "
                            "a state torchaudio can batch")
        self.model = model
        self.blank = model.blank

    def transcribe(self, sources: Tensor, source_lengths: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.joiner.enc_proj(sources), source_lengths

    def transcribe_streaming(self, sources: Tensor, source_lengths: Tensor,
                             state: list[list[Tensor]] | None) -> tuple[Tensor, Tensor, list[list[Tensor]]]:
        """One chunk of encoder output → its projection; no transcription state (the encoder ran)."""
        return self.model.joiner.enc_proj(sources), source_lengths, []

    def _to_torchaudio(self, state) -> list[list[Tensor]]:
        if isinstance(self.model.predictor, LSTMPredictor):
            return [[s.transpose(0, 1) for s in state]]  # (layers, N, P) → (N, layers, P)
        return [[state]]

    def _from_torchaudio(self, state: list[list[Tensor]]):
        if isinstance(self.model.predictor, LSTMPredictor):
            return tuple(s.transpose(0, 1).contiguous() for s in state[0])
        return state[0][0]

    def predict(self, targets: Tensor, target_lengths: Tensor,
                state: list[list[Tensor]] | None) -> tuple[Tensor, Tensor, list[list[Tensor]]]:
        pred = self.model.predictor
        st = (pred.initial_state(targets.shape[0], targets.device) if state is None
              else self._from_torchaudio(state))
        outs = []
        for u in range(targets.shape[1]):  # the search feeds one label per hypothesis (U = 1)
            out, st = pred.step(targets[:, u], st)
            outs.append(out)
        return self.model.joiner.pred_proj(torch.stack(outs, 1)), target_lengths, self._to_torchaudio(st)

    def join(self, source_encodings: Tensor, source_lengths: Tensor, target_encodings: Tensor,
             target_lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits = self.model.joiner.joint(source_encodings[:, :, None], target_encodings[:, None])
        return logits, source_lengths, target_lengths  # (B, T, U, V+1), log_softmax is torchaudio's


def torchaudio_searcher(model: nn.Module, rank: str = "norm", step_max_tokens: int = 100) -> RNNTBeamSearch:
    """``RNNTBeamSearch`` over ``TorchaudioRNNT(model)``; ``rank``: 'norm' (torchaudio's default,
    score / (labels + 2)) or 'score' (raw log-probability, as speechkit ranks)."""
    key = None if rank == "norm" else (lambda h: h[3])
    return RNNTBeamSearch(TorchaudioRNNT(model), model.blank, hypo_sort_key=key,
                          step_max_tokens=step_max_tokens)


@torch.no_grad()
def torchaudio_beam_search(searcher: RNNTBeamSearch, model: nn.Module, enc,
                           beam: int) -> tuple[list[int], float]:
    """One utterance's ``Encoded`` (batch 1) → (best labels, its torchaudio score)."""
    dec = model.decoder_input(enc)
    n = int(dec.lengths[0])
    hyps = searcher(dec.hidden[:, :n], dec.lengths[:1], beam)
    tokens, _, _, sc = hyps[0]
    return list(tokens[1:]), float(sc)  # tokens[0]: the blank the search was seeded with


@torch.no_grad()
def speechkit_beam_search(model: nn.Module, enc, beam: int, max_symbols: int) -> tuple[list[int], float]:
    h = beam_search(model, enc, beam, 1, max_symbols=max_symbols)[0][0]
    return list(h.tokens), float(h.score)


class SpeechkitStream:
    """speechkit's stateful search of one stream: ``advance(chunk)``, then ``best()`` → (labels, score)."""

    def __init__(self, model: nn.Module, beam: int, max_symbols: int):
        self.search = BeamSearch(model, 1, beam=beam, max_symbols=max_symbols) if beam > 1 else \
            GreedySearch(model, 1, max_symbols=max_symbols)

    def advance(self, enc: Encoded) -> None:
        self.search.advance(enc)

    def best(self) -> tuple[list[int], float]:
        h = self.search.best(final=True)[0]
        return list(h.tokens), float(h.score or 0.0)  # greedy: no score


class TorchaudioStream:
    """torchaudio's ``infer`` over one stream, each call seeded with the previous call's hypotheses."""

    def __init__(self, searcher: RNNTBeamSearch, model: nn.Module, beam: int):
        self.searcher, self.model, self.beam = searcher, model, beam
        self.hyps, self.state = None, None

    @torch.no_grad()
    def advance(self, enc: Encoded) -> None:
        dec = self.model.decoder_input(enc)
        self.hyps, self.state = self.searcher.infer(dec.hidden, dec.lengths[:1], self.beam, self.state,
                                                    self.hyps)

    def best(self) -> tuple[list[int], float]:
        tokens, _, _, sc = self.hyps[0]  # infer's hypotheses come best first
        return list(tokens[1:]), float(sc)


@torch.no_grad()
def model_logprob(model: nn.Module, enc, ids: list[int]) -> float:
    """log P(labels | utterance) under the transducer, summed over ALL alignments (−RNN-T loss): the
    score both searches approximate, to tell which found the more probable hypothesis."""
    dec = model.decoder_input(enc)
    y = torch.tensor([ids], dtype=torch.long)
    if not ids:  # all blanks: Σ_t log P(blank | ∅, t)
        start = model.predictor(y)[:, :1]  # (1, 1, P)
        logp = model.joiner(dec.hidden[:, : int(dec.lengths[0])], start).log_softmax(-1)
        return float(logp[0, :, model.blank].sum())
    return -float(model.rnnt_loss(dec, y, torch.tensor([len(ids)]))[0])


def load(brick: str, chunk: int | None, stream: bool):
    """The brick in eval mode, its encoder chunk set; in streaming mode checked to stream."""
    b = load_brick(brick)
    try:
        set_chunk(b.module, chunk, stream)
    except CannotStream as e:
        raise SystemExit(f"{brick} cannot stream: {e}") from None
    return b


def plan_choices(plan) -> dict:
    """A deploy ``Plan`` → its choices: per kernel the layer count, per layer the kernel."""
    return {"choices": dict(Counter(r["choice"] for r in plan.rows)),
            "layers": {r["layer"]: r["choice"] for r in plan.rows}, "inputs_off": plan.inputs_off}


def error_rates(refs: list[str], hyps: list[str]) -> dict:
    sc = score(refs, hyps)
    return {"wer": round(100 * sc.wer, 2), "cer": round(100 * sc.cer, 2)}


def compare(rows: list[dict]) -> dict:
    """WER / CER per side, identical best hypotheses, and where they differ whose is more probable."""
    refs = [r["ref"] for r in rows]
    out = {name: error_rates(refs, [r[name]["hyp"] for r in rows]) for name in SIDES}
    out["identical_best"] = sum(r["speechkit"]["ids"] == r["torchaudio"]["ids"] for r in rows)
    diff = [r for r in rows if r["speechkit"]["ids"] != r["torchaudio"]["ids"]]
    out["more_probable_best"] = {a: sum(r[a]["logp"] > r[b]["logp"] for r in diff)
                                 for a, b in (SIDES, SIDES[::-1])}
    return out


def _median(xs: list[float]) -> float | None:
    return round(sorted(xs)[len(xs) // 2], 3) if xs else None


def _whole_row(model, searcher, tok, batch, utt, ref: str, beam: int, first: int, max_symbols: int) -> dict:
    enc = model(batch["inputs"], batch["input_lens"])
    row = {"id": utt.id, "audio_s": utt.duration or batch["input_lens"].item() * 0.01,
           "frames": int(enc.lengths[0]), "ref": ref}
    runs = {"speechkit": lambda: speechkit_beam_search(model, enc, beam, max_symbols),
            "torchaudio": lambda: torchaudio_beam_search(searcher, model, enc, beam)}
    for name in (SIDES if first == 0 else SIDES[::-1]):
        t0 = time.perf_counter()
        ids, sc = runs[name]()
        row[f"{name}_s"] = time.perf_counter() - t0
        row[name] = {"ids": ids, "hyp": tok.decode(ids), "score": round(sc, 4)}
    for name in SIDES:  # outside the timing
        row[name]["logp"] = round(model_logprob(model, enc, row[name]["ids"]), 4)
    return row


@torch.no_grad()
def bench(brick: str, manifest: str, max_utts: int | None = None, beam: int = 4, chunk: int | None = None,
          rank: str = "norm", step_max_tokens: int = 100, progress: bool = True, int8: bool = False,
          max_symbols: int = 3) -> dict:
    """Whole-utterance mode (see the module docstring) → {summary, utterances[, int8]}."""
    b = load(brick, chunk, stream=False)
    model, tok = b.module, b.tokenizer
    utts = load_manifest(manifest, require_audio=True)[:max_utts]
    ds = brick_dataset(b, utts, None, str(manifest))
    res = {}
    if int8:
        first = collate([ds[0]])
        plan = deploy(model, lambda m: beam_search(m, m(first["inputs"], first["input_lens"]), beam),
                      ptq=True)
        res["int8"] = plan_choices(plan)
    searcher = torchaudio_searcher(model, rank, step_max_tokens)
    rows = []
    for i in range(len(ds)):
        rows.append(_whole_row(model, searcher, tok, collate([ds[i]]), utts[i], ds.refs[i], beam, i % 2,
                               max_symbols))
        _progress(progress, i, len(ds))
    summary = {"utts": len(rows), "audio_s": round(sum(r["audio_s"] for r in rows), 2),
               "frames": sum(r["frames"] for r in rows), **compare(rows)}
    for name in SIDES:
        secs = sum(r[f"{name}_s"] for r in rows)
        summary[name].update({"search_s": round(secs, 4),
                              "ms_per_utt": round(1000 * secs / max(len(rows), 1), 2),
                              "ms_per_frame": round(1000 * secs / max(summary["frames"], 1), 4),
                              "search_rtf": round(secs / max(summary["audio_s"], 1e-9), 5)})
    summary["ratio_total"] = round(summary["torchaudio"]["search_s"] / summary["speechkit"]["search_s"], 3)
    summary["ratio_median_utt"] = _median([r["torchaudio_s"] / r["speechkit_s"] for r in rows])
    return {"summary": summary, "utterances": rows, **res}


def _progress(on: bool, i: int, n: int) -> None:
    if on:
        print(f"\r  {i + 1}/{n}", end="\n" if i + 1 == n else "", flush=True)


def _timed(times: dict, name: str, fn, *args):
    """``fn(*args)``, its seconds added to ``times[name]``."""
    t0 = time.perf_counter()
    out = fn(*args)
    times[name] += time.perf_counter() - t0
    return out


@torch.no_grad()
def stream_utterance(model: nn.Module, wave: Tensor, cfg: FbankConfig, sides: dict,
                     order: tuple[str, ...]) -> tuple[dict, dict, Encoded]:
    """One utterance through features, the chunked encoder and, chunk by chunk, every side's search →
    (seconds per part: features, encoder, each side; per side its best (labels, score); the encoder
    output the searches saw, whole)."""
    t = dict.fromkeys(("features", "encoder", *order), 0.0)
    feats = _timed(t, "features", fbank, wave, cfg)
    searches = {name: _timed(t, name, sides[name]) for name in order}
    enc_state = _timed(t, "encoder", model.encoder.stream_state, 1)
    step, n, chunks = model.encoder.body.chunk * model.encoder.frontend.stack, feats.shape[0], []
    for i in range(0, n, step):
        enc, enc_state = _timed(t, "encoder", model.encoder.forward_chunk, feats[None, i: i + step],
                                enc_state, i + step >= n)
        if enc.hidden.shape[1]:
            chunks.append(enc.hidden)
            for name in order:
                _timed(t, name, searches[name].advance, enc)
    best = {name: _timed(t, name, searches[name].best) for name in order}
    hidden = torch.cat(chunks, 1)
    return t, best, Encoded(hidden, torch.tensor([hidden.shape[1]]))


@torch.no_grad()
def recognize(model: nn.Module, tok: Tokenizer, cfg: FbankConfig, wave: Tensor, opts: StreamOptions,
              block_s: float = 0.1) -> tuple[str, float, float]:
    """speechkit's streaming pipeline on ``wave`` fed in ``block_s`` blocks → (text, compute s, audio s)."""
    rec = Recognizer(model, tok, cfg, opts)
    finals = [e.text for e in rec.run(wave, block_s) if e.kind == "final"]
    return " ".join(finals), rec.compute_s, rec.audio_s


def _stream_row(model, tok, cfg, sides: dict, utt, ref: str, opts: StreamOptions, first: int) -> dict:
    """One utterance of streaming mode; ``first`` 0 / 1: which side goes first (and the recognizer
    runs after / before them)."""
    wave = read_audio(utt.audio, utt.offset, utt.duration, cfg.sample_rate)
    rec = recognize(model, tok, cfg, wave, opts) if first else None
    t, best, enc = stream_utterance(model, wave, cfg, sides, SIDES if first == 0 else SIDES[::-1])
    text, compute_s, audio_s = rec or recognize(model, tok, cfg, wave, opts)
    frames = enc.hidden.shape[1]
    row = {"id": utt.id, "audio_s": wave.numel() / cfg.sample_rate, "frames": frames,
           "chunks": -(-frames // opts.chunk), "ref": ref, "features_s": t["features"],
           "encoder_s": t["encoder"]}
    for name in SIDES:  # the log-probabilities outside the timing
        ids, sc = best[name]
        row[f"{name}_s"] = t[name]
        row[name] = {"ids": ids, "hyp": tok.decode(ids), "score": round(sc, 4),
                     "logp": round(model_logprob(model, enc, ids), 4)}
    row["recognizer"] = {"hyp": text, "compute_s": compute_s, "audio_s": audio_s,
                         "same_text": text == row["speechkit"]["hyp"]}
    return row


def stream_summary(rows: list[dict]) -> dict:
    audio = sum(r["audio_s"] for r in rows)
    shared = {k: sum(r[f"{k}_s"] for r in rows) for k in ("features", "encoder")}
    chunks = sum(r["chunks"] for r in rows)
    s = {"utts": len(rows), "audio_s": round(audio, 2), "frames": sum(r["frames"] for r in rows),
         "chunks": chunks,
         **{f"{k}_s": round(v, 4) for k, v in shared.items()},
         **{f"{k}_rtf": round(v / max(audio, 1e-9), 5) for k, v in shared.items()}, **compare(rows)}
    for name in SIDES:
        secs = sum(r[f"{name}_s"] for r in rows)
        total = secs + shared["features"] + shared["encoder"]
        s[name].update({"search_s": round(secs, 4), "search_rtf": round(secs / max(audio, 1e-9), 5),
                        "ms_per_chunk": round(1000 * secs / max(chunks, 1), 3), "total_s": round(total, 4),
                        "rtf_total": round(total / max(audio, 1e-9), 5)})
    s["ratio_search"] = round(s["torchaudio"]["search_s"] / s["speechkit"]["search_s"], 3)
    s["ratio_total"] = round(s["torchaudio"]["total_s"] / s["speechkit"]["total_s"], 3)
    s["ratio_search_median_utt"] = _median([r["torchaudio_s"] / r["speechkit_s"] for r in rows])
    rec_s = sum(r["recognizer"]["compute_s"] for r in rows)
    rec_audio = sum(r["recognizer"]["audio_s"] for r in rows)
    s["recognizer"] = {"compute_s": round(rec_s, 4), "audio_s": round(rec_audio, 2),
                       "rtf": round(rec_s / max(rec_audio, 1e-9), 5),
                       "same_text": sum(r["recognizer"]["same_text"] for r in rows),
                       **error_rates([r["ref"] for r in rows], [r["recognizer"]["hyp"] for r in rows])}
    return s


@torch.no_grad()
def bench_stream(brick: str, manifest: str, max_utts: int | None = None, beam: int = 4, chunk: int = 8,
                 rank: str = "norm", step_max_tokens: int = 100, progress: bool = True,
                 int8: bool = False, max_symbols: int = 3) -> dict:
    """Streaming mode (see the module docstring) → {summary, utterances[, int8]}."""
    b = load(brick, chunk, stream=True)
    model, tok, cfg = b.module, b.tokenizer, b.fbank()
    opts = StreamOptions(chunk=chunk, beam=beam, endpoint_trailing=1e9, endpoint_silence=1e9, max_segment=1e9,
                         max_symbols=max_symbols)
    res = {}
    if int8:  # as ``speechkit stream --int8`` deploys
        res["int8"] = plan_choices(deploy_int8(model, tok, cfg, opts))
    utts = load_manifest(manifest, require_audio=True)[:max_utts]
    refs = target_texts(utts, None, str(manifest))
    searcher = torchaudio_searcher(model, rank, step_max_tokens)
    sides = {"speechkit": lambda: SpeechkitStream(model, beam, max_symbols),
             "torchaudio": lambda: TorchaudioStream(searcher, model, beam)}
    rows = []
    for i, u in enumerate(utts):
        rows.append(_stream_row(model, tok, cfg, sides, u, refs[i], opts, i % 2))
        _progress(progress, i, len(utts))
    return {"summary": stream_summary(rows), "utterances": rows, **res}


def _print_whole(s: dict) -> None:
    print(f"{'search':<12}{'total s':>10}{'ms/utt':>10}{'ms/frame':>10}{'RTF':>10}{'WER %':>8}{'CER %':>8}")
    for name in SIDES:
        r = s[name]
        print(f"{name:<12}{r['search_s']:>10.3f}{r['ms_per_utt']:>10.1f}{r['ms_per_frame']:>10.3f}"
              f"{r['search_rtf']:>10.4f}{r['wer']:>8.2f}{r['cer']:>8.2f}")
    print(f"torchaudio / speechkit time: {s['ratio_total']:.2f}x total, {s['ratio_median_utt']:.2f}x median "
          f"per utterance; identical best hypotheses: {s['identical_best']}/{s['utts']}")


def _print_stream(s: dict) -> None:
    print(f"shared: features {s['features_s']:.3f} s (RTF {s['features_rtf']:.4f}), "
          f"encoder {s['encoder_s']:.3f} s (RTF {s['encoder_rtf']:.4f}); {s['frames']} encoder frames in "
          f"{s['chunks']} chunks")
    print(f"{'':<12}{'search s':>10}{'search RTF':>12}{'ms/chunk':>10}{'total s':>10}{'RTF total':>11}"
          f"{'WER %':>8}{'CER %':>8}")
    for name in SIDES:
        r = s[name]
        print(f"{name:<12}{r['search_s']:>10.3f}{r['search_rtf']:>12.4f}{r['ms_per_chunk']:>10.2f}"
              f"{r['total_s']:>10.3f}{r['rtf_total']:>11.4f}{r['wer']:>8.2f}{r['cer']:>8.2f}")
    r = s["recognizer"]
    print(f"{'recognizer':<12}{'':>10}{'':>12}{'':>10}{r['compute_s']:>10.3f}{r['rtf']:>11.4f}"
          f"{r['wer']:>8.2f}{r['cer']:>8.2f}   (speechkit's streaming pipeline, end to end)")
    print(f"torchaudio / speechkit time: search {s['ratio_search']:.2f}x "
          f"({s['ratio_search_median_utt']:.2f}x median per utterance), total {s['ratio_total']:.2f}x; "
          f"identical best hypotheses: "
          f"{s['identical_best']}/{s['utts']}; recognizer text = speechkit's: {r['same_text']}/{s['utts']}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("brick")
    ap.add_argument("manifest")
    ap.add_argument("--max-utts", type=int)
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunk", type=int, help="encoder chunk size in frames (streaming model)")
    ap.add_argument("--stream", action="store_true", help="stream: features, chunked encoder and both "
                    "searches chunk by chunk, all timed (needs --chunk)")
    ap.add_argument("--int8", action="store_true",
                    help="deploy fbgemm int8 linear layers (ptq) before timing")
    ap.add_argument("--ta-rank", choices=("norm", "score"), default="norm",
                    help="torchaudio's hypothesis ranking: its default score / (labels + 2), or raw score")
    ap.add_argument("--step-max-tokens", type=int, default=100, help="torchaudio: most labels per frame")
    ap.add_argument("--json", help="write the summary and per-utterance results here")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--max-symbols", type=int, default=3, help="speechkit: most labels per frame")
    args = ap.parse_args(argv)
    if args.stream and args.chunk is None:
        ap.error("--stream needs --chunk C (encoder frames per chunk)")
    torch.set_num_threads(args.threads)
    run = bench_stream if args.stream else bench
    res = run(args.brick, args.manifest, args.max_utts, args.beam, args.chunk, args.ta_rank,
              args.step_max_tokens, not args.quiet, args.int8, args.max_symbols)
    s = res["summary"]
    print(f"{args.brick}  {args.manifest}: {s['utts']} utts, {s['audio_s']} s audio, "
          f"{'streaming' if args.stream else 'whole utterances'}, chunk {args.chunk}, beam {args.beam}, "
          f"{args.threads} thread(s), {'int8' if args.int8 else 'fp32'}, torchaudio rank {args.ta_rank}")
    if "int8" in res:
        q = res["int8"]
        print(f"int8 deploy (ptq): {len(q['layers'])} linear layers: "
              + ", ".join(f"{k} {n}" for k, n in sorted(q["choices"].items()))
              + f"; {len(q['inputs_off'])} input fake-quantizers switched off")
    (_print_stream if args.stream else _print_whole)(s)
    if s["identical_best"] < s["utts"]:
        m = s["more_probable_best"]
        print(f"where they differ, the more probable best hypothesis (log P(y|x), all alignments): "
              f"speechkit {m['speechkit']}, torchaudio {m['torchaudio']}")
    if args.json:
        res["config"] = {**{k: v for k, v in vars(args).items() if k != "quiet"},
                         "torch": torch.__version__, "torchaudio": torchaudio.__version__,
                         "machine": platform.machine(), "processor": platform.processor()}
        Path(args.json).write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
