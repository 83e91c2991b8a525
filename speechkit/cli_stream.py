"""``speechkit stream``'s printing: partials and finals as they come, the RTF / latency summary (the
streaming itself: ``search.stream.Recognizer``; manifests: ``pipelines.stream_eval``)."""

from __future__ import annotations

import json
import sys


def run(a) -> None:
    """The ``stream`` verb (arguments: ``cli.build_parser``): audio files or stdin, events printed as they
    come; or ``--manifest``: ``pipelines.stream_eval.evaluate_manifest``'s summary as one JSON line."""
    import torch

    from .audio import AudioError
    from .pipelines.stream_eval import evaluate_manifest, load_calibration, streaming_brick
    from .search.stream import StreamOptions

    torch.set_num_threads(a.threads)
    opts = StreamOptions(chunk=a.chunk, beam=a.beam, max_symbols=a.max_symbols,
                         endpoint_trailing=a.endpoint_trailing, endpoint_silence=a.endpoint_silence,
                         max_segment=a.max_segment, timestamps=a.timestamps)
    from .nn.device import resolve_device

    brick, opts, plan = streaming_brick(a.brick, opts, a.lm, a.lm_weight, a.ilm_weight, a.length_reward,
                                        not a.no_lm_eos, a.int8, resolve_device(a.device), a.runtime)
    if plan is not None and not a.json:
        print(plan.to_text(), file=sys.stderr)
    if a.manifest:
        summary = evaluate_manifest(brick, a.manifest, opts, a.out, a.calibrate, a.calibration, a.max_utts,
                                    a.block_ms / 1000, progress=not a.json)
        print(json.dumps({**summary, "threads": a.threads, "int8": a.int8}))
        return
    if not a.inputs and sys.stdin is not None and sys.stdin.isatty():
        raise SystemExit("error: give audio files, or pipe raw 16-kHz s16le PCM to stdin (e.g. arecord "
                         "-f S16_LE -r 16000 -c 1 -t raw | speechkit stream BRICK -)")
    opts = load_calibration(a.brick, opts, a.calibration)
    model, tok, cfg = brick.module, brick.tokenizer, brick.fbank()
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
