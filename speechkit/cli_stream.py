"""``speechkit stream``: streaming recognition of audio files or raw 16-kHz s16le PCM on stdin, or of a
manifest (WER, RTF, latency, word-time and confidence quality; ``--calibrate`` fits the word-time
shift and the confidence map on it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_parser(sub) -> None:
    st = sub.add_parser("stream", help="streaming recognition of audio files or raw 16-kHz s16le PCM on "
                        "stdin (partials, finals, word times and confidence)")
    st.add_argument("brick", help="a streaming transducer brick (causal Conformer, FrameStack front end)")
    st.add_argument("inputs", nargs="*", help="audio files (any format soundfile reads, any rate), or - for "
                    "raw 16-kHz s16le mono PCM on stdin (default when no input is given)")
    st.add_argument("--manifest", default=None, help="evaluate on a manifest instead: WER, RTF, latency, "
                    "word-start error and confidence AUC (hypotheses → --out)")
    st.add_argument("--calibrate", action="store_true", help="with --manifest (a dev set): fit the word-time "
                    "shift and confidence map for these settings and store them in --calibration")
    st.add_argument("--calibration", default=None, metavar="FILE", help="calibration table (JSON) that "
                    "--calibrate adds to and other runs read (default: beside the brick, never inside it: "
                    "BRICK/../stream_calibration.json, or BRICK/../NAME-stream_calibration.json for a brick "
                    "folder NAME other than 'brick'; without --calibration, a run whose settings that file "
                    "lacks reads a BRICK/stream_calibration.json shipped in the brick)")
    st.add_argument("--max-utts", type=int, default=None)
    st.add_argument("--out", default=None, help="hypotheses JSONL of --manifest (default: beside the brick: "
                    "BRICK/../stream-MANIFEST-SETTINGS.jsonl, NAME- prefixed for a brick folder NAME other "
                    "than 'brick'; nothing is written inside a brick)")
    st.add_argument("--chunk", type=int, default=8, help="encoder frames per chunk (40 ms each with "
                    "FrameStack 4): the latency / accuracy trade-off")
    st.add_argument("--beam", type=int, default=1, help="1 = greedy, >1 = modified beam search")
    st.add_argument("--max-symbols", type=int, default=3, help="most labels per encoder frame")
    st.add_argument("--lm", default=None, metavar="LM_BRICK", help="external LM brick (shallow fusion)")
    st.add_argument("--lm-weight", type=float, default=0.0)
    st.add_argument("--ilm-weight", type=float, default=0.0, help="λ_ILM (ILME)")
    st.add_argument("--length-reward", type=float, default=0.0)
    st.add_argument("--timestamps", choices=("transducer", "ctc"), default="transducer",
                    help="word start times from the transducer's emissions or a CTC alignment (finals)")
    st.add_argument("--endpoint-trailing", type=float, default=1.2, help="s without a new token that end a "
                    "segment with text")
    st.add_argument("--endpoint-silence", type=float, default=2.4, help="s that drop a segment without text")
    st.add_argument("--max-segment", type=float, default=20.0, help="s: the longest segment")
    st.add_argument("--block-ms", type=int, default=100, help="audio read per step (ms)")
    st.add_argument("--threads", type=int, default=1)
    st.add_argument("--int8", action="store_true", help="int8 kernels (fbgemm) for the linear layers where "
                    "they are faster and within tolerance (compress.deploy)")
    st.add_argument("--json", action="store_true", help="one JSON object per event (and a summary)")


def run(a) -> None:
    import torch

    from .audio import AudioError
    from .pipelines.bricks import load_brick
    from .pipelines.decode import make_fusion
    from .pipelines.stream_eval import load_calibration
    from .search.stream import CannotStream, StreamOptions, deploy_int8, set_chunk

    torch.set_num_threads(a.threads)
    brick = load_brick(a.brick)
    model, tok, cfg = brick.module, brick.tokenizer, brick.fbank()
    fusion = make_fusion(brick, a.lm, a.lm_weight, a.ilm_weight, a.length_reward)
    opts = StreamOptions(chunk=a.chunk, beam=a.beam, max_symbols=a.max_symbols, fusion=fusion,
                         endpoint_trailing=a.endpoint_trailing, endpoint_silence=a.endpoint_silence,
                         max_segment=a.max_segment, timestamps=a.timestamps)
    try:
        set_chunk(model, a.chunk)
    except CannotStream as e:
        raise CannotStream(f"{a.brick} cannot stream: {e}") from None
    if a.int8:  # linear layers → fbgemm int8 where faster at the streaming shapes
        plan = deploy_int8(model, tok, cfg, opts)
        if not a.json:
            print(plan.to_text(), file=sys.stderr)
    if a.manifest:
        return _evaluate(a, model, tok, cfg, opts)
    if not a.inputs and sys.stdin is not None and sys.stdin.isatty():
        raise SystemExit("error: give audio files, or pipe raw 16-kHz s16le PCM to stdin (e.g. arecord "
                         "-f S16_LE -r 16000 -c 1 -t raw | speechkit stream BRICK -)")
    opts = load_calibration(a.brick, opts, a.calibration)
    failed = None
    recognizers = []
    for src in a.inputs or ["-"]:
        try:
            recognizers.append(_stream_one(src, model, tok, cfg, opts, a))
        except AudioError as e:
            failed = e
            break
    _print_summary(recognizers, a.json)
    if failed is not None:
        raise SystemExit(f"error: {failed}")


def _blocks(src: str, cfg, block: int):
    from .audio import read_audio, read_pcm

    if src == "-":  # sys.stdin is None when file descriptor 0 is closed: read_pcm names that
        yield from read_pcm(None if sys.stdin is None else sys.stdin.buffer, block)
        return
    wave = read_audio(src, rate=cfg.sample_rate)
    for i in range(0, wave.numel(), block):
        yield wave[i: i + block]


def _stream_one(src: str, model, tok, cfg, opts, a):
    """Stream one input, printing events as they come → its ``Recognizer``. On bad input (``AudioError``)
    the audio received so far is finished (its final result printed) before the error propagates."""
    from .audio import AudioError
    from .search.stream import Recognizer

    rec = Recognizer(model, tok, cfg, opts)
    live = sys.stdout.isatty() and not a.json
    name = "stdin" if src == "-" else src
    try:
        for block in _blocks(src, cfg, int(cfg.sample_rate * a.block_ms / 1000)):
            for e in rec.accept(block):
                _print_event(e, name, a.json, live)
    except AudioError:
        for e in rec.finish():
            _print_event(e, name, a.json, live)
        raise
    for e in rec.finish():
        _print_event(e, name, a.json, live)
    return rec


CLEAR_LINE = "\r\x1b[K"  # back to the start of the terminal line and erase it (the live partial)


def _print_event(e, src: str, as_json: bool, live: bool) -> None:
    if as_json:
        print(json.dumps({"source": src, **e.to_dict()}, ensure_ascii=False), flush=True)
    elif e.kind == "partial":
        if live:
            print(CLEAR_LINE + e.text, end="", flush=True)
    else:
        print(f"{CLEAR_LINE if live else ''}[{e.start:7.2f} {e.end:7.2f}] {e.text}", flush=True)


def _print_summary(recognizers: list, as_json: bool) -> None:
    """RTF and per-chunk latency over every chunk of every input (stdout with --json, else stderr)."""
    from .search.stream import timing

    if not recognizers:
        return
    total = {"kind": "summary", "inputs": len(recognizers), **timing(recognizers)}
    if as_json:
        print(json.dumps(total), flush=True)
    else:
        rtf = "n/a (too little audio)" if total["rtf"] is None else total["rtf"]
        print(f"{total['audio_s']} s of audio in {total['compute_s']} s: RTF {rtf}; chunk "
              f"{total['chunk_ms']} ms + compute per chunk {total['latency_ms_mean']} ms mean, "
              f"{total['latency_ms_p95']} ms p95", file=sys.stderr)


def _evaluate(a, model, tok, cfg, opts) -> None:
    from .data.manifest import load_manifest
    from .files import atomic_write
    from .pipelines.decode import default_output
    from .pipelines.stream_eval import (
        evaluate,
        fit_calibration,
        load_calibration,
        save_calibration,
        stream_utterances,
    )

    utts = load_manifest(a.manifest)[: a.max_utts]
    if not a.calibrate:
        opts = load_calibration(a.brick, opts, a.calibration)
    results, totals = stream_utterances(model, tok, cfg, utts, opts, a.block_ms / 1000, progress=not a.json)
    out = Path(a.out or default_output(a.brick, f"stream-{Path(a.manifest).stem}-{opts.key()}.jsonl"))
    with atomic_write(out) as f:
        f.writelines(json.dumps({**r, "words": [w.__dict__ for w in r["words"]]}, ensure_ascii=False) + "\n"
                     for r in results)
    summary = {"manifest": a.manifest, "utts": len(results), "settings": opts.key(), **evaluate(results),
               **totals, "threads": a.threads, "int8": a.int8, "hyps": str(out)}
    if a.calibrate:
        entry = {**fit_calibration(results), "dev": a.manifest}
        summary["calibration"] = entry
        summary["calibration_file"] = str(save_calibration(a.brick, opts, entry, a.calibration))
    print(json.dumps(summary))

