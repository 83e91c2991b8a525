"""torchaudio's ``rnnt_loss`` vs speechkit's transducer losses: time and peak memory of forward +
backward through the joiner, side by side.

    python benchmarks/transducer_loss.py [--device cpu|cuda] [--threads 1] [--repeats 3]
        [--shapes B,T,U,V ...] [--kinds torchaudio sub-batched pruned pruned-triton fused]
        [--dtypes fp32 bf16] [--sub-batch 2] [--json]

Per shape (B utterances, T encoder frames, U labels, V+1 outputs; joiner width 256, encoder and
predictor width 256): the reference builds the joiner on the full (B, T, U+1, V+1) lattice and
calls ``torchaudio.functional.rnnt_loss``; "sub-batched" is the same loss with the joiner and the
lattice ``--sub-batch`` utterances at a time under checkpointing (``Transducer(rnnt_sub_batch=…)``,
``speechkit.models.transducer.joiner_rnnt_loss``); speechkit's ``Transducer.pruned_loss`` path
(``speechkit.models.pruned_rnnt.pruned_rnnt_loss``, windows of ``--prune-range`` labels) runs the
simple loss and the joiner on (B, T, s, V+1) only, its lattice recursion in PyTorch ("pruned") or as
Triton kernels ("pruned-triton", ``speechkit.models.rnnt_triton``; CUDA only); "fused" is the exact
full loss a tile of frames at a time (``speechkit.models.fused_rnnt``: no (B, T, U+1, V+1) lattice;
Triton recursion on CUDA). ``--dtypes bf16`` runs every loss's joiner under bf16 autocast (the
losses' normalisers and recursions stay float32). Time: median of ``--repeats`` forward + backward
passes after a warm-up on two utterances of the same T and U (kernels compiled, lazy state built).
Peak memory: each case runs in its own subprocess and reports
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
from speechkit.models.fused_rnnt import fused_rnnt_loss
from speechkit.models.pruned_rnnt import pruned_rnnt_loss
from speechkit.models.transducer import joiner_rnnt_loss

SHAPES = ("8,100,25,129", "8,200,50,501", "8,400,100,501", "16,400,100,1001")
GPU_SHAPES = ("16,400,100,1001", "32,500,120,501", "32,800,150,1001")  # the last is beyond torchaudio
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


KINDS = ("torchaudio", "sub-batched", "pruned", "pruned-triton", "fused")


def step(kind: str, joiner, enc, pred, simple, y, frames, labels, prune_range: int, sub_batch: int,
         dtype: str) -> None:
    """One forward + backward of the loss ``kind`` (one of ``KINDS``), the joiner in ``dtype``."""
    with torch.autocast(enc.device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
        if kind in ("torchaudio", "sub-batched"):
            loss = joiner_rnnt_loss(joiner, enc, pred, y, frames, labels, joiner.vocab_size,
                                    sub_batch if kind == "sub-batched" else None).sum()
        elif kind == "fused":
            loss = fused_rnnt_loss(joiner, enc, pred, y, frames, labels, joiner.vocab_size).sum()
        else:
            s, p = pruned_rnnt_loss(joiner, enc, pred, simple[0](enc), simple[1](pred), y, frames, labels,
                                    joiner.vocab_size, prune_range,
                                    backend="triton" if kind == "pruned-triton" else "torch")
            loss = (0.5 * s + p).sum()
    loss.backward()


def run_case(kind: str, shape: str, repeats: int, prune_range: int, sub_batch: int, device: str,
             dtype: str) -> dict:
    b, t, u, v = (int(x) for x in shape.split(","))
    step(kind, *inputs(2, t, u, v, device), prune_range, 1, dtype)  # warm-up: compiled kernels, lazy state
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
        step(kind, *args, prune_range, sub_batch, dtype)
        sync()
        times.append(time.perf_counter() - t0)
    if device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024  # kB → MB
    ms = round(1000 * sorted(times)[len(times) // 2], 1)
    return {"kind": kind, "shape": shape, "dtype": dtype, "ms": ms,
            "peak_mb": round(peak, 1)}


def cases(kinds: list[str], shape: str, a) -> dict:
    """Runs ``kinds`` on ``shape`` in one fresh process (peak memory of its own; on CUDA every kind of the
    shape shares it, torchaudio last: its failure at large shapes can leave the device unusable) →
    {kind: row or {"error": ...}}."""
    cmd = [sys.executable, __file__, "--case", ",".join(kinds), shape, "--threads", str(a.threads),
           "--repeats", str(a.repeats), "--prune-range", str(a.prune_range), "--sub-batch", str(a.sub_batch),
           "--device", a.device, "--dtypes", *a.dtypes]
    p = subprocess.run(cmd, capture_output=True, text=True)
    out = {}
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            out[r["kind"], r["dtype"]] = r
    error = {"error": p.stderr.strip()[-300:] or f"exit {p.returncode}"}
    return {(k, d): out.get((k, d), error) for k in kinds for d in a.dtypes}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prune-range", type=int, default=5)
    ap.add_argument("--sub-batch", type=int, default=2, help="utterances per joiner call ('sub-batched')")
    ap.add_argument("--kinds", nargs="+", choices=KINDS,
                    help="default: all (on a CPU all but pruned-triton: Triton kernels need CUDA)")
    ap.add_argument("--shapes", nargs="+", help=f"B,T,U,V (V counts the blank); default {SHAPES} on a CPU, "
                                                f"{GPU_SHAPES} on CUDA")
    ap.add_argument("--dtypes", nargs="+", choices=("fp32", "bf16"), help="the joiner's; default fp32 on a "
                                                                            "CPU, fp32 and bf16 on CUDA")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--case", nargs=2, metavar=("KINDS", "SHAPE"), help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    cuda = a.device.startswith("cuda")
    a.kinds = a.kinds or [k for k in KINDS if cuda or k != "pruned-triton"]
    a.shapes = a.shapes or list(GPU_SHAPES if cuda else SHAPES)
    a.dtypes = a.dtypes or (["fp32", "bf16"] if cuda else ["fp32"])
    torch.set_num_threads(a.threads)
    if a.case:  # kinds of one shape, in this fresh process
        for kind in a.case[0].split(","):
            for dtype in a.dtypes:
                print(json.dumps(run_case(kind, a.case[1], a.repeats, a.prune_range, a.sub_batch, a.device,
                                          dtype)), flush=True)
                if cuda:
                    torch.cuda.empty_cache()
        return
    rows = []
    for shape in a.shapes:
        kinds = [k for k in a.kinds if k != "torchaudio"] + ["torchaudio"]
        res = {}
        for group in ([kinds] if cuda else [[k] for k in kinds]):
            res.update(cases(group, shape, a))
        for dtype in a.dtypes:
            row = {"shape": shape, "dtype": dtype}
            row.update({f"{k}_{f}": r[f] for (k, d), r in res.items() if d == dtype
                        for f in ("ms", "peak_mb", "error") if f in r})
            ref = res["torchaudio", dtype]
            for (kind, d), r in res.items():  # ratios to torchaudio's loss on the whole batch, same dtype
                if d == dtype and kind != "torchaudio" and "ms" in r and "ms" in ref:
                    row[f"{kind}_time_ratio"] = round(r["ms"] / ref["ms"], 3)
                    row[f"{kind}_memory_ratio"] = round(r["peak_mb"] / max(ref["peak_mb"], 1e-9), 3)
            rows.append(row)
            print(json.dumps(row) if a.json else "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
