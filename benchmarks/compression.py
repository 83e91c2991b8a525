"""Dense vs 2:4 vs int8 vs 2:4+int8, side by side in one process: per-shape GEMMs and encoder forwards.

    python benchmarks/compression.py [--threads 1] [--repeats 30] [--json]

GEMMs: the linear layers of conformer encoders (d = 144: the locale full model; 256; 512: a
LibriSpeech-size encoder) at M = frames in a batch, each kernel timed on the same input (median of
``--repeats``) with its relative error against fp32. Encoder forward: a whole conformer encoder
(random weights, one-shot 2:4 / int8 via ``speechkit.compress.export.one_shot``), fp32 vs the
``speechkit.compress.deploy`` runtime, batch 1 × 6 s of audio and batch 8; on CUDA also the bf16
encoder and the deployed one (int8 / fp8 with max-abs scales, ``ptq``) replayed from CUDA graphs
(``speechkit.nn.device.CudaGraphed``), with their speed-up over bf16 eager.

On CPU the candidates are fp32 and fbgemm int8 (2:4 has no CPU kernel: it saves storage, not
time, so the 2:4 and 2:4+int8 rows time the same kernels on pruned weights); on CUDA bf16 dense,
2:4 bf16 (``to_sparse_semi_structured``), int8 (``torch._int_mm``) and fp8 row-wise (``torch._scaled_mm``,
compute capability ≥ 8.9). Results: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import platform

import torch
from torch import nn

from speechkit.compress.apply import CompressConfig, QuantConfig, SparsityConfig
from speechkit.compress.deploy import _time, cpu_kernels, deploy, gpu_kernels
from speechkit.compress.export import load_folded, one_shot
from speechkit.compress.quant import integer_codes, maxabs_step
from speechkit.compress.sparsity import nm_mask
from speechkit.lego.encoders import SpeechEncoder
from speechkit.lego.interface import MarginalHead
from speechkit.nn.conformer import Conformer
from speechkit.nn.device import CudaGraphed
from speechkit.nn.subsampling import FrameStack

DIMS = (144, 256, 512)
ROWS = (64, 512, 4096)


def _layer(k: int, n: int, sparse: bool, bits: int | None, device) -> nn.Linear:
    """A linear layer whose weight is 2:4-pruned and/or int8-valued, marked as deploy would see it."""
    lin = nn.Linear(k, n).to(device)
    fmt = {}
    with torch.no_grad():
        if sparse:
            lin.weight.mul_(nm_mask(lin.weight, 2, 4))
            fmt.update(n=2, m=4)
        if bits:
            scale = maxabs_step(lin.weight, 8)
            lin.weight.copy_(integer_codes(lin.weight, scale[:, None], 8) * scale[:, None])
            fmt.update(bits=8, scale=scale)
    lin.compressed = {"weight": fmt}
    return lin


@torch.no_grad()
def gemms(device, repeats: int) -> list[dict]:
    rows = []
    kernels = gpu_kernels if device.type == "cuda" else cpu_kernels
    for d in DIMS:
        for k, n, what in ((d, 4 * d, "ffn up"), (4 * d, d, "ffn down"), (d, 3 * d, "qkv")):
            for m in ROWS:
                x = torch.randn(m, k, device=device)
                row = {"d": d, "layer": what, "M": m, "K": k, "N": n}
                for sparse in (False, True):
                    lin = _layer(k, n, sparse, 8, device)
                    ref = lin(x).float()
                    base = "2:4 " if sparse else ""
                    for name, fn in kernels(lin, ptq=False).items():
                        if sparse and name in ("fp32", "dense-bf16"):
                            name = "2:4 weights, " + name  # same kernel, pruned values
                        try:
                            y = fn(x).float()
                        except RuntimeError as e:  # shape the kernel refuses
                            row[base + name] = f"refused: {str(e)[:40]}"
                            continue
                        err = float((y - ref).norm() / ref.norm())
                        row[name if name.startswith("2:4") else base + name] = {
                            "us": round(_time(fn, x, repeats), 1), "err": round(err, 4)}
                rows.append(row)
    return rows


def encoder(d: int, layers: int, device) -> SpeechEncoder:
    torch.manual_seed(0)
    return SpeechEncoder(FrameStack(80, d, 4), Conformer(d, layers, 4, 4, 15, 0.0), MarginalHead(d, 128),
                         80).to(device).eval()


def _forward(model, x, lens):
    return model(x, lens)


def _graphed(run, model, base_ms: float, repeats: int) -> dict:
    """ms of ``model`` replayed from a CUDA graph (``CudaGraphed``; captured on its first call) and the
    speed-up over ``base_ms`` (bf16 eager)."""
    graphed = CudaGraphed(model)
    run(graphed)  # capture
    ms = _time(run, graphed, repeats) / 1e3
    return {"ms": round(ms, 2), "speedup_vs_bf16_eager": round(base_ms / ms, 2)}


def encoders(device, repeats: int) -> list[dict]:
    rows = []
    configs = {"2:4": CompressConfig(sparsity=SparsityConfig(2, 4)),
               "int8": CompressConfig(quant=QuantConfig(8, None)),
               "2:4+int8": CompressConfig(sparsity=SparsityConfig(2, 4), quant=QuantConfig(8, None))}
    for d, layers in ((144, 6), (512, 12)):
        for b in (1, 8):
            x = torch.randn(b, 600, 80, device=device)
            lens = torch.full((b,), 600, device=device)
            if device.type == "cuda":
                x = x.bfloat16()
            run = functools.partial(_forward, x=x, lens=lens)
            dense = encoder(d, layers, device)
            if device.type == "cuda":
                dense.bfloat16()
            with torch.no_grad():
                ref = run(dense).hidden.float()
                base = _time(run, dense, repeats) / 1e3
                row = {"encoder": f"conformer d={d} × {layers}", "batch": b, "frames": 600,
                       "fp32" if device.type == "cpu" else "bf16": round(base, 2)}
                if device.type == "cuda":  # launches removed: the same model replayed from a CUDA graph
                    row["bf16 + CUDA graphs"] = _graphed(run, dense, base, repeats)
                    deployed = copy.deepcopy(dense)  # no training for int8/fp8: max-abs scales (ptq)
                    plan = deploy(deployed, run, tolerance=0.05, repeats=5, ptq=True, graphs=True)
                    out = run(deployed).hidden.float()
                    row["deployed (ptq) + CUDA graphs"] = {
                        **_graphed(run, deployed, base, repeats),
                        "choices": sorted({r["choice"] for r in plan.rows}),
                        "err_vs_bf16": round(float((out - ref).norm() / ref.norm()), 3),
                        "plan": plan.to_text().splitlines()}  # per layer: every candidate's µs / error
                for name, cfg in configs.items():
                    m = encoder(d, layers, device)
                    state, info = one_shot(m, cfg)
                    fresh = load_folded(encoder(d, layers, device), state, info)
                    if device.type == "cuda":  # bf16 like the dense row (and its input)
                        fresh.bfloat16()
                    plan = deploy(fresh, run, tolerance=0.05, repeats=5)
                    out = run(fresh).hidden.float()
                    row[name] = {"ms": round(_time(run, fresh, repeats) / 1e3, 2),
                                 "choices": sorted({r["choice"] for r in plan.rows}),
                                 "err_vs_dense_weights": round(float((out - ref).norm() / ref.norm()), 3)}
            rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip-encoders", action="store_true")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    machine = (torch.cuda.get_device_name() if device.type == "cuda"
               else platform.processor() or platform.machine())
    res = {"device": machine, "threads": a.threads, "torch": torch.__version__,
           "gemm": gemms(device, a.repeats)}
    if not a.skip_encoders:
        res["encoder"] = encoders(device, max(a.repeats // 3, 3))
    if a.json:
        print(json.dumps(res))
        return
    print(f"# {machine}, {a.threads} thread(s), torch {torch.__version__}")
    for r in res["gemm"]:
        cells = {k: v for k, v in r.items() if isinstance(v, (dict, str)) and k != "layer"}
        base = next(iter(cells.values()))["us"]
        print(f"d={r['d']:<4}{r['layer']:<9} M={r['M']:<5} K={r['K']:<5} N={r['N']:<5}" + "".join(
            f"  {k}: {v['us']}µs ({base / v['us']:.2f}×, err {v['err']})" if isinstance(v, dict)
            else f"  {k}: {v}" for k, v in cells.items()))
    for r in res.get("encoder", []):
        print(json.dumps(r))


if __name__ == "__main__":
    main()
