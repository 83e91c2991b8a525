"""Streaming encoder cost by model size: chunk-by-chunk encoder RTF, fp32 vs int8, side by side.

    python benchmarks/stream_encoder.py [--threads 1] [--seconds 30] [--chunks 8 16] [--json]

Random-weight streaming conformer encoders (FrameStack 4, causal, 64 frames of left context; the
compute does not depend on the weights) of the locale models' size (d 144 × 6) and of ~20M parameters
(d 256 × 12), fed ``--seconds`` of features through ``SpeechEncoder.forward_chunk`` one chunk at a time
(batch 1, as ``speechkit stream`` does), fp32 and after ``speechkit.compress.deploy`` with fbgemm int8
(post-training max-abs scales). RTF = encoder time / audio time. The search's share is measured on
trained bricks by ``benchmarks/streaming.py``. Results: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from speechkit.compress.deploy import deploy
from speechkit.lego.encoders import SpeechEncoder
from speechkit.lego.interface import MarginalHead
from speechkit.nn.conformer import Conformer
from speechkit.nn.subsampling import FrameStack

SIZES = ((144, 6, 4), (256, 12, 4))  # (dim, layers, heads)


def encoder(dim: int, layers: int, heads: int) -> SpeechEncoder:
    torch.manual_seed(0)
    body = Conformer(dim, layers, heads, 4, 15, 0.0, causal=True, left_context=64)
    return SpeechEncoder(FrameStack(80, dim, 4, 0.0), body, MarginalHead(dim, 128), 80).eval()


@torch.no_grad()
def stream_seconds(enc: SpeechEncoder, feats: torch.Tensor, chunk: int) -> float:
    """Seconds to push feats (1, N, 80) through the encoder chunk by chunk."""
    enc.body.chunk = chunk
    state, step = enc.stream_state(1), chunk * enc.frontend.stack
    t0 = time.perf_counter()
    for i in range(0, feats.shape[1], step):
        _, state = enc.forward_chunk(feats[:, i: i + step], state, final=i + step >= feats.shape[1])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--chunks", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    feats = torch.randn(1, int(a.seconds * 100), 80)
    rows = []
    for dim, layers, heads in SIZES:
        fp32, q = encoder(dim, layers, heads), encoder(dim, layers, heads)
        params = sum(p.numel() for p in fp32.parameters())
        plan = deploy(q, lambda m: stream_seconds(m, feats[:, :400], a.chunks[0]), ptq=True)
        for chunk in a.chunks:
            t = {}
            for name, m in (("fp32", fp32), ("int8", q), ("fp32 again", fp32)):  # fp32 twice: drift check
                stream_seconds(m, feats[:, :400], chunk)  # warm-up
                t[name] = stream_seconds(m, feats, chunk)
            row = {"dim": dim, "layers": layers, "params_M": round(params / 1e6, 2), "chunk": chunk,
                   "rtf_fp32": round(min(t["fp32"], t["fp32 again"]) / a.seconds, 4),
                   "rtf_int8": round(t["int8"] / a.seconds, 4),
                   "int8_layers": sum(r["choice"] == "int8" for r in plan.rows), "linears": len(plan.rows)}
            row["speedup"] = round(row["rtf_fp32"] / row["rtf_int8"], 2)
            rows.append(row)
            print(json.dumps(row) if a.json else
                  "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
