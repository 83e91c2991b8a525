"""Side-by-side decode speed of bricks (e.g. fp32 vs int8-deployed) on one manifest, in one process.

Each utterance is decoded alone (batch 1, as a recognizer serves one stream), by every model in
turn, so machine load affects them alike. Features are computed once, outside the timing; the
encoder forward and the search are timed separately (on a GPU each timing ends with a device
synchronisation). RTF = (encoder + search) / audio seconds.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..compress.deploy import deploy
from ..data.dataset import collate
from ..data.manifest import load_manifest
from ..metrics import score
from ..nn.device import CudaGraphed, model_device
from ..search.dispatch import search
from .bricks import load_brick
from .decode import brick_dataset


@torch.no_grad()
def bench_decode(models: dict[str, torch.nn.Module], ds, beam: int = 1, progress: bool = True,
                 max_symbols: int | None = None) -> dict[str, dict]:
    """→ {name: {utts, audio_s, encoder_s, search_s, rtf, wer, cer}} for models reading dataset ``ds``
    (``search``'s ``beam`` and ``max_symbols``)."""
    times = {k: [0.0, 0.0] for k in models}
    hyps: dict[str, list[str]] = {k: [] for k in models}
    audio = 0.0
    for i in range(len(ds)):
        batch = collate([ds[i]])
        audio += ds.utts[i].duration or batch["input_lens"].item() * 0.01
        for name, model in models.items():
            model.eval()
            device = model_device(model)
            x, n = batch["inputs"].to(device), batch["input_lens"].to(device)
            sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
            sync()
            t0 = time.perf_counter()
            enc = model(x, n)
            sync()
            t1 = time.perf_counter()
            nb = search(model, enc, beam, max_symbols=max_symbols)
            sync()
            t2 = time.perf_counter()
            times[name][0] += t1 - t0
            times[name][1] += t2 - t1
            hyps[name].append(ds.tok.decode(list(nb[0][0].tokens)))
        if progress:
            print(f"\r  {i + 1}/{len(ds)}", end="", flush=True)
    if progress:
        print()
    refs = list(ds.refs)
    out = {}
    for name in models:
        enc_s, search_s = times[name]
        sc = score(refs, hyps[name])
        out[name] = {"utts": len(ds), "audio_s": round(audio, 2), "encoder_s": round(enc_s, 3),
                     "search_s": round(search_s, 3), "rtf": round((enc_s + search_s) / audio, 4),
                     "wer": round(sc.wer * 100, 2), "cer": round(sc.cer * 100, 2)}
    return out


def bench(brick: str | Path, manifest: str | Path, against: str | Path | None = None, max_utts: int = 100,
          beam: int = 1, tolerance: float = 0.03, ptq: bool = False, deploy_kernels: bool = True,
          progress: bool = True, device: torch.device | None = None, cuda_graphs: bool = False) -> dict:
    """``speechkit bench``: deploy ``brick`` (per layer the fastest kernel within ``tolerance``,
    ``compress.deploy``; ``ptq``: int8 also where the weights were not trained for it) and time its decode
    against the fp32 brick ``against`` (default: ``brick`` as loaded), side by side on the first ``max_utts``
    utterances, both on ``device`` (None: the CPU); ``cuda_graphs``: ``brick``'s encoder replayed from
    CUDA graphs (``CudaGraphed``; on CUDA only) → {threads, device, beam, results: {name: bench_decode
    row}, speedup, encoder_speedup, choices, plan (the deployment table as text, or None)}."""
    device = torch.device(device or "cpu")
    b = load_brick(brick, device)
    ds = brick_dataset(b, load_manifest(manifest)[:max_utts], None, str(manifest))
    against = against or brick
    models = {f"fp32 {against}": load_brick(against, device).module}
    plan = None
    if deploy_kernels:
        sample = collate([ds[0]])  # batch 1, encoder and search: the shapes bench_decode uses
        x, n = sample["inputs"].to(device), sample["input_lens"].to(device)
        plan = deploy(b.module, lambda m: search(m, m(x, n), beam), tolerance, ptq=ptq,
                      graphs=cuda_graphs and device.type == "cuda")
    name = f"{'deployed' if plan else 'as loaded'} {brick}"
    if cuda_graphs and device.type == "cuda":
        b.module.encoder = CudaGraphed(b.module.encoder)
        name += " + CUDA graphs"
    models[name] = b.module
    res = bench_decode(models, ds, beam, progress=progress)
    (_, r0), (_, r1) = res.items()
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{torch.get_num_threads()} thread(s)")
    return {"threads": torch.get_num_threads(), "device": where, "beam": beam, "results": res,
            "speedup": round((r0["encoder_s"] + r0["search_s"]) / (r1["encoder_s"] + r1["search_s"]), 3),
            "encoder_speedup": round(r0["encoder_s"] / r1["encoder_s"], 3),
            "choices": {r["layer"]: r["choice"] for r in plan.rows} if plan else {},
            "plan": plan.to_text() if plan else None}
