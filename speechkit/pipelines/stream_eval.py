"""Streaming recognition of a manifest: WER, real-time factor, latency, word-time accuracy against the
manifest's word times (the locale corpus records espeak's), word-confidence quality, and the
calibration of both (fitted on a dev set, stored beside the brick — never inside it — or where
``--calibration`` says, used by ``speechkit stream``).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import jiwer
import torch

from ..audio import read_audio
from ..data.manifest import Utterance, load_manifest
from ..errors import SpeechkitError
from ..features import FbankConfig
from ..files import atomic_write, write_text
from ..metrics import normalize_text, score
from ..search.stream import (
    CannotStream,
    Recognizer,
    StreamOptions,
    Word,
    deploy_int8,
    logit,
    set_chunk,
    timing,
)
from .bricks import CALIBRATION, LoadedBrick, load_brick
from .decode import default_output, make_fusion


class CalibrationError(SpeechkitError):
    """A calibration table is missing, unreadable or malformed; the message names the file."""


def stream_utterances(model, tok, cfg: FbankConfig, utts: list[Utterance], opts: StreamOptions,
                      block_s: float = 0.1, progress: bool = True) -> tuple[list[dict], dict]:
    """Stream each utterance's audio (in ``block_s`` pieces) through its own ``Recognizer`` →
    (per utterance {id, ref, hyp, words, ref_words}, totals {audio_s, compute_s, rtf, latency…})."""
    results, recognizers = [], []
    t0 = time.time()
    for n, u in enumerate(utts):
        wave = read_audio(u.audio, u.offset, u.duration, cfg.sample_rate)
        rec = Recognizer(model, tok, cfg, opts)
        finals = [e for e in rec.run(wave, block_s) if e.kind == "final"]
        results.append({"id": u.id, "ref": u.text, "hyp": " ".join(e.text for e in finals),
                        "words": [w for e in finals for w in e.words], "ref_words": u.words})
        recognizers.append(rec)
        if progress:
            print(f"\r  streamed {n + 1}/{len(utts)} ({time.time() - t0:.0f}s)", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    return results, timing(recognizers)


def word_pairs(ref_words: list, hyp_words: list[Word]) -> list[tuple[Word, bool, float | None]]:
    """Each hypothesis word → (word, correct?, reference start time when correct). Words are
    normalised (``metrics.normalize_text``) and aligned with jiwer; a reference word that normalises
    to several tokens gives each its start time."""
    ref = [(t, s) for w, s, _ in ref_words for t in normalize_text(w).split()]
    hyp = [(t, w) for w in hyp_words for t in normalize_text(w.word).split()]
    if not ref or not hyp:
        return [(w, False, None) for _, w in hyp]
    out: dict[int, tuple] = {}
    align = jiwer.process_words(" ".join(t for t, _ in ref), " ".join(t for t, _ in hyp)).alignments[0]
    for c in align:
        for k in range(c.hyp_start_idx, c.hyp_end_idx):
            ok = c.type == "equal"
            word = hyp[k][1]
            if id(word) not in out or not ok:  # a word is correct only when all its tokens are
                out[id(word)] = (word, ok, ref[c.ref_start_idx + k - c.hyp_start_idx][1] if ok else None)
    return list(out.values())


def all_word_pairs(results: list[dict]) -> list[tuple[Word, bool, float | None]]:
    """``word_pairs`` of every streamed result that has reference word times."""
    return [p for r in results if r.get("ref_words") for p in word_pairs(r["ref_words"], r["words"])]


def auc(scores: list[float], labels: list[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` separating True from False labels (ties count ½)."""
    pos, neg = sum(labels), len(labels) - sum(labels)
    if not pos or not neg:
        return None
    s, y = torch.tensor(scores, dtype=torch.float64), torch.tensor(labels)
    ranks = torch.empty_like(s)
    order = s.argsort()
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.float64)
    for v in s.unique():  # average ranks over ties
        tie = s == v
        ranks[tie] = ranks[tie].mean()
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def ece(conf: list[float], correct: list[bool], bins: int = 10) -> float:
    """Expected calibration error: Σ_bins (n_bin / n) · |accuracy − mean confidence|."""
    c, y = torch.tensor(conf), torch.tensor(correct, dtype=torch.float32)
    idx = (c * bins).long().clamp(max=bins - 1)
    return float(sum((idx == b).sum() * ((y[idx == b].mean() - c[idx == b].mean()).abs())
                     for b in range(bins) if (idx == b).any()) / max(len(conf), 1))


def evaluate(results: list[dict]) -> dict:
    """WER/CER, word-start error (mean absolute, median signed, in ms; correct words), and word
    confidence quality (AUC correct vs wrong, ECE) of streamed results."""
    sc = score([r["ref"] for r in results], [r["hyp"] for r in results])
    pairs = all_word_pairs(results)
    errs = [w.start - s for w, ok, s in pairs if ok]
    conf, ok = [w.confidence for w, _, _ in pairs], [c for _, c, _ in pairs]
    out = {"wer": round(sc.wer * 100, 2), "cer": round(sc.cer * 100, 2), "words": len(pairs)}
    if errs:
        out.update(start_mae_ms=round(1000 * sum(map(abs, errs)) / len(errs), 1),
                   start_median_ms=round(1000 * statistics.median(errs), 1), timed_words=len(errs))
    if pairs:
        area = auc(conf, ok)
        out.update(confidence_auc=area and round(area, 4),
                   confidence_ece=round(ece(conf, ok), 4), word_accuracy=round(sum(ok) / len(ok), 4))
    return out


def fit_calibration(results: list[dict]) -> dict:
    """From raw streamed results (no shift, raw posteriors): the time shift (−median start error) and
    the logistic map conf = σ(a · logit(p) + b) minimising cross-entropy on correct-vs-wrong words."""
    pairs = all_word_pairs(results)
    if not pairs or all(ok for _, ok, _ in pairs) or not any(ok for _, ok, _ in pairs):
        raise ValueError(f"calibration needs both correct and wrong words; got {len(pairs)} words")
    errs = [w.start - s for w, ok, s in pairs if ok]
    x = torch.tensor([logit(w.confidence) for w, _, _ in pairs], dtype=torch.float64)
    y = torch.tensor([ok for _, ok, _ in pairs], dtype=torch.float64)
    ab = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([ab], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(ab[0] * x + ab[1], y)
        loss.backward()
        return loss

    opt.step(closure)
    return {"time_shift": round(-statistics.median(errs), 4),
            "confidence": [round(float(v), 5) for v in ab.detach()], "words": len(pairs)}


def calibration_path(brick: str | Path) -> Path:
    """Where ``--calibrate`` writes by default: beside the brick (``decode.default_output``), never in it."""
    return default_output(brick, CALIBRATION)


def _read_table(path: Path) -> dict:
    try:
        table = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CalibrationError(f"cannot read calibration table {path}: {e}") from None
    if not isinstance(table, dict):
        raise CalibrationError(f"{path}: expected a JSON object (settings → calibration)")
    return table


def load_calibration(brick: str | Path, opts: StreamOptions, path: str | Path | None = None) -> StreamOptions:
    """``opts`` with the time shift and confidence map stored for its settings (``StreamOptions.key``):
    from ``path`` when given (it must exist), else from the first of ``calibration_path(brick)`` and the
    table shipped in the brick (BRICK/stream_calibration.json, read only) that has an entry for them;
    unchanged (and a note on stderr) when there is none."""
    if path is not None and not Path(path).is_file():
        raise CalibrationError(f"calibration table not found: {path}")
    places = [Path(path)] if path is not None else [calibration_path(brick), Path(brick) / CALIBRATION]
    for place in places:
        entry = _read_table(place).get(opts.key()) if place.is_file() else None
        if entry is not None:
            return replace(opts, time_shift=entry["time_shift"], confidence=tuple(entry["confidence"]))
    print(f"note: no calibration for {opts.key()} in {' or '.join(map(str, places))}: word confidences are "
          "raw posteriors and times are not shifted (calibrate: speechkit stream BRICK --manifest DEV "
          "--calibrate)", file=sys.stderr)
    return opts


def save_calibration(brick: str | Path, opts: StreamOptions, entry: dict,
                     path: str | Path | None = None) -> Path:
    """Store ``entry`` for ``opts``'s settings in the table at ``path`` (default ``calibration_path``:
    beside the brick, which stays untouched), keeping its other settings; written atomically."""
    path = Path(path) if path is not None else calibration_path(brick)
    table = _read_table(path) if path.is_file() else {}
    table[opts.key()] = entry
    write_text(path, json.dumps(table, indent=1) + "\n")
    return path


def streaming_brick(brick: str | Path, opts: StreamOptions, lm: str | Path | None = None,
                    lm_weight: float = 0.0, ilm_weight: float = 0.0, length_reward: float = 0.0,
                    lm_eos: bool = True, int8: bool = False, device: torch.device | None = None,
                    runtime: str = "torch") -> tuple[LoadedBrick, StreamOptions, object]:
    """Load ``brick`` onto ``device`` to stream with ``opts`` → (the brick with its encoder chunk set,
    ``opts`` with the fusion of the LM arguments, the int8 deployment plan or None). ``CannotStream`` names
    a brick that cannot stream; int8 (fbgemm) deployment is for the CPU. ``runtime`` "onnx": ``brick`` is a
    folder of ``speechkit export --onnx`` run by onnxruntime (its encoder_chunk.onnx), on the CPU."""
    if int8 and device is not None and torch.device(device).type != "cpu":
        raise ValueError(f"--int8 deploys fbgemm CPU kernels; it does not apply to --device {device}")
    if runtime == "onnx":
        from .onnx import load_onnx

        if int8 or lm or lm_weight or ilm_weight or length_reward:
            raise ValueError("--runtime onnx streams without --int8 and LM fusion")
        b = load_onnx(brick, threads=torch.get_num_threads())
        if b.module.encoder.info is None:
            raise CannotStream(f"{brick} cannot stream: exported from a brick whose encoder does not stream "
                               "(no encoder_chunk.onnx; streaming needs a FrameStack front end and a causal "
                               "Conformer)")
    else:
        b = load_brick(brick, device)
    try:
        set_chunk(b.module, opts.chunk)
    except CannotStream as e:
        raise CannotStream(f"{brick} cannot stream: {e}") from None
    opts = replace(opts, fusion=make_fusion(b, lm, lm_weight, ilm_weight, length_reward, lm_eos, device))
    plan = deploy_int8(b.module, b.tokenizer, b.fbank(), opts) if int8 else None  # fbgemm where faster
    return b, opts, plan


def evaluate_manifest(brick: LoadedBrick, manifest: str | Path, opts: StreamOptions,
                      out: str | Path | None = None, calibrate: bool = False,
                      calibration: str | Path | None = None, max_utts: int | None = None,
                      block_s: float = 0.1, progress: bool = True) -> dict:
    """``speechkit stream --manifest``: stream every utterance, write the hypotheses (with word times and
    confidences) to ``out`` (default: beside the brick) → summary {manifest, utts, settings, wer, …, rtf,
    latency, hyps[, calibration, calibration_file]}. ``calibrate``: fit the word-time shift and confidence
    map on these results and store them in the ``calibration`` table (``save_calibration``)."""
    utts = load_manifest(manifest)[:max_utts]
    if not calibrate:
        opts = load_calibration(brick.path, opts, calibration)
    results, totals = stream_utterances(brick.module, brick.tokenizer, brick.fbank(), utts, opts, block_s,
                                        progress=progress)
    out = Path(out or default_output(brick.path, f"stream-{Path(manifest).stem}-{opts.key()}.jsonl"))
    with atomic_write(out) as f:
        f.writelines(json.dumps({**r, "words": [w.__dict__ for w in r["words"]]}, ensure_ascii=False) + "\n"
                     for r in results)
    summary = {"manifest": str(manifest), "utts": len(results), "settings": opts.key(), **evaluate(results),
               **totals, "hyps": str(out)}
    if calibrate:
        summary["calibration"] = {**fit_calibration(results), "dev": str(manifest)}
        path = save_calibration(brick.path, opts, summary["calibration"], calibration)
        summary["calibration_file"] = str(path)
    return summary
