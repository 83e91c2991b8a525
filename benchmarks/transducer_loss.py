"""torchaudio's ``rnnt_loss`` vs speechkit's transducer losses: time and peak memory of forward +
backward through the joiner, side by side.

    python benchmarks/transducer_loss.py [--threads 1] [--repeats 3] [--shapes B,T,U,V ...]
        [--kinds torchaudio sub-batched pruned] [--sub-batch 2] [--json]

Per shape (B utterances, T encoder frames, U labels, V+1 outputs; joiner width 256, encoder and
predictor width 256): the reference builds the joiner on the full (B, T, U+1, V+1) lattice and
calls ``torchaudio.functional.rnnt_loss``; "sub-batched" is the same loss with the joiner and the
lattice ``--sub-batch`` utterances at a time under checkpointing (``Transducer(rnnt_sub_batch=…)``,
``speechkit.models.transducer.joiner_rnnt_loss``); speechkit's ``Transducer.pruned_loss`` path
(``speechkit.models.pruned_rnnt.pruned_rnnt_loss``, windows of ``--prune-range`` labels) runs the
simple loss and the joiner on (B, T, s, V+1) only. Time: median of ``--repeats`` forward + backward
passes after a warm-up on a tiny batch. Peak memory: each case runs in its own subprocess and reports
its peak resident memory (CPU; ``ru_maxrss``) above the memory held after building its inputs, or
``torch.cuda.max_memory_allocated`` on a GPU. Results: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from speechkit.lego.transducer import Joiner
from speechkit.models.pruned_rnnt import pruned_rnnt_loss
from speechkit.models.transducer import joiner_rnnt_loss

SHAPES = ("8,100,25,129", "8,200,50,501", "8,400,100,501", "16,400,100,1001")
WIDTH = 256


def inputs(b: int, t: int, u: int, v: int, device: str):
    torch.manual_seed(0)
    joiner = Joiner(WIDTH, WIDTH, v - 1, WIDTH).to(device)
    enc = torch.randn(b, t, WIDTH, device=device, requires_grad=True)
    pred = torch.randn(b, u + 1, WIDTH, device=device, requires_grad=True)
    simple = (torch.nn.Linear(WIDTH, v).to(device), torch.nn.Linear(WIDTH, v).to(device))
    y = torch.randint(0, v - 1, (b, u), device=device)
    frames = torch.full((b,), t, device=device)
    labels = torch.full((b,), u, device=device)
    return joiner, enc, pred, simple, y, frames, labels


KINDS = ("torchaudio", "sub-batched", "pruned")


def step(kind: str, joiner, enc, pred, simple, y, frames, labels, prune_range: int, sub_batch: int) -> None:
    """One forward + backward of the loss ``kind`` (one of ``KINDS``)."""
    if kind in ("torchaudio", "sub-batched"):
        loss = joiner_rnnt_loss(joiner, enc, pred, y, frames, labels, joiner.vocab_size,
                                sub_batch if kind == "sub-batched" else None).sum()
    else:
        s, p = pruned_rnnt_loss(joiner, enc, pred, simple[0](enc), simple[1](pred), y, frames, labels,
                                joiner.vocab_size, prune_range)
        loss = (0.5 * s + p).sum()
    loss.backward()


def run_case(kind: str, shape: str, repeats: int, prune_range: int, sub_batch: int, device: str) -> dict:
    b, t, u, v = (int(x) for x in shape.split(","))
    step(kind, *inputs(2, 8, 3, v, device), prune_range, 1)  # warm-up: lazy imports are not counted
    args = inputs(b, t, u, v, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB
    base = torch.cuda.memory_allocated() if device == "cuda" else rss
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        step(kind, *args, prune_range, sub_batch)
        sync()
        times.append(time.perf_counter() - t0)
    if device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024  # kB → MB
    return {"kind": kind, "shape": shape, "ms": round(1000 * sorted(times)[len(times) // 2], 1),
            "peak_mb": round(peak, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prune-range", type=int, default=5)
    ap.add_argument("--sub-batch", type=int, default=2, help="utterances per joiner call ('sub-batched')")
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), help="B,T,U,V (V counts the blank)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--case", nargs=2, metavar=("KIND", "SHAPE"), help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.case:  # one case, in this fresh process (peak memory of its own)
        print(json.dumps(run_case(a.case[0], a.case[1], a.repeats, a.prune_range, a.sub_batch, a.device)))
        return
    rows = []
    for shape in a.shapes:
        res = {}
        for kind in dict.fromkeys(["torchaudio", *a.kinds]):
            cmd = [sys.executable, __file__, "--case", kind, shape, "--threads", str(a.threads), "--repeats",
                   str(a.repeats), "--prune-range", str(a.prune_range), "--sub-batch", str(a.sub_batch),
                   "--device", a.device]
            p = subprocess.run(cmd, capture_output=True, text=True)
            res[kind] = json.loads(p.stdout) if p.returncode == 0 else {"error": p.stderr.strip()[-300:]}
        row = {"shape": shape, **{f"{k}_{f}": r[f] for k, r in res.items()
                                  for f in ("ms", "peak_mb", "error") if f in r}}
        ref = res["torchaudio"]
        for kind, r in res.items():  # ratios to torchaudio's loss on the whole batch
            if kind != "torchaudio" and "ms" in r and "ms" in ref:
                row[f"{kind}_time_ratio"] = round(r["ms"] / ref["ms"], 3)
                row[f"{kind}_memory_ratio"] = round(r["peak_mb"] / max(ref["peak_mb"], 1e-9), 3)
        rows.append(row)
        print(json.dumps(row) if a.json else "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
