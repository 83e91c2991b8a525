"""One transducer brick on the CPU through every runtime, side by side: torch fp32, torch int8 (speechkit's
deployed int8 kernels), onnxruntime fp32 / int8 (the exported graphs behind speechkit's search) and
sherpa-onnx fp32 / int8 (its own fbank and greedy search) → RTF and WER.

    python benchmarks/runtimes.py BRICK MANIFEST [--max-utts N] [--threads 1] [--json]

The brick is exported (``speechkit.pipelines.onnx.export_onnx``, with ``--int8``) into a temporary folder.
Each utterance is decoded alone (batch 1, as a recognizer serves one stream) by every runtime in turn, so
machine load affects them alike (``speechkit.pipelines.bench.bench_decode``: features computed once,
outside the timing; RTF = (encoder + search) / audio seconds); greedy search, one label per frame for all
(sherpa-onnx's greedy search takes one). sherpa-onnx is timed from the waveform in memory to its result,
so its RTF includes its fbank; the fbank time of the others is printed beside it ("features_rtf").
Results: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from speechkit.audio import read_audio
from speechkit.compress.deploy import deploy
from speechkit.data.dataset import collate
from speechkit.features import fbank
from speechkit.metrics import score
from speechkit.pipelines.bench import bench_decode
from speechkit.pipelines.bricks import load_brick
from speechkit.pipelines.decode import brick_manifest
from speechkit.pipelines.onnx import OnnxTransducer, sherpa_recognizer
from speechkit.pipelines.onnx_export import export_onnx
from speechkit.search.dispatch import search


def sherpa_row(folder: Path, ds, int8: bool, threads: int) -> dict:
    rec = sherpa_recognizer(folder, threads, int8)
    waves = [read_audio(u.audio, u.offset, u.duration) for u in ds.utts]
    hyps, seconds = [], 0.0
    for wave in waves:
        t0 = time.perf_counter()
        ids = rec.speechkit_ids(wave)
        seconds += time.perf_counter() - t0
        hyps.append(ds.tok.decode(ids))
    audio = sum(len(w) for w in waves) / 16000
    sc = score(list(ds.refs), hyps)
    return {"utts": len(waves), "audio_s": round(audio, 2), "rtf": round(seconds / audio, 4),
            "wer": round(sc.wer * 100, 2), "cer": round(sc.cer * 100, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("brick")
    ap.add_argument("manifest")
    ap.add_argument("--max-utts", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    b = load_brick(a.brick)
    ds = brick_manifest(b, a.manifest, a.max_utts, target_lang=None)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "onnx"
        export_onnx(b, folder, int8=True)
        int8 = copy.deepcopy(b.module)
        sample = collate([ds[0]])
        x, n = sample["inputs"], sample["input_lens"]
        plan = deploy(int8, lambda m: search(m, m(x, n), 1, max_symbols=1), tolerance=0.05, ptq=True)
        models = {"torch fp32": b.module, "torch int8 (deployed)": int8,
                  "onnxruntime fp32": OnnxTransducer(folder, threads=a.threads),
                  "onnxruntime int8": OnnxTransducer(folder, int8=True, threads=a.threads)}
        rows = bench_decode(models, ds, beam=1, max_symbols=1, progress=not a.json)
        feats = 0.0
        for u in ds.utts:  # what the runtimes above get for free: speechkit's fbank of each utterance
            wave = read_audio(u.audio, u.offset, u.duration)
            t0 = time.perf_counter()
            fbank(wave, ds.cfg)
            feats += time.perf_counter() - t0
        audio = next(iter(rows.values()))["audio_s"]
        for r in rows.values():
            r["features_rtf"] = round(feats / audio, 4)
        for name, q in (("sherpa-onnx fp32", False), ("sherpa-onnx int8", True)):
            rows[name] = sherpa_row(folder, ds, q, a.threads)
    choices = [r["choice"] for r in plan.rows] if plan else []
    int8_layers = f"{sum(c != 'fp32' for c in choices)} of {len(choices)}"
    out = {"brick": a.brick, "threads": a.threads, "torch_int8_layers": int8_layers, "results": rows}
    if a.json:
        print(json.dumps(out))
        return
    print(f"{a.brick}, {len(ds)} utterances, {a.threads} thread(s)")
    for name, r in rows.items():
        print(f"  {name:24s} RTF {r['rtf']:.4f}  WER {r['wer']:.2f}%  CER {r['cer']:.2f}%")


if __name__ == "__main__":
    main()
