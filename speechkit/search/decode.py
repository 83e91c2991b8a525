"""Batch decoding of a manifest with a transducer brick."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..data.dataset import SpeechDataset, collate
from ..data.manifest import Utterance, load_manifest
from ..data.sampler import BucketBatchSampler
from ..features import FbankConfig
from ..lego.brick import load_brick
from ..metrics import ErrorRates, error_rates
from ..tokenizer import Tokenizer
from .transducer import beam_search, greedy_search


@dataclass(frozen=True)
class DecodeOptions:
    beam: int = 1  # 1 = batched greedy search, > 1 = modified beam search
    nbest: int = 1
    max_frames: int = 60000  # input frames per batch
    num_workers: int = 0
    progress: bool = True


@torch.no_grad()
def decode_utterances(model, tokenizer: Tokenizer, utts: list[Utterance], fbank: FbankConfig,
                      opts: DecodeOptions = DecodeOptions(), cache=None) -> list[dict]:
    """Decode ``utts`` → one dict per utterance (manifest order): id, ref, hyp, [nbest]."""
    model.eval()
    ds = SpeechDataset(utts, tokenizer, fbank, cache)
    sampler = BucketBatchSampler(ds.lengths(), opts.max_frames, shuffle=False)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=opts.num_workers)
    results: list[dict | None] = [None] * len(utts)
    t0, done = time.time(), 0
    for batch in loader:
        enc = model(batch["feats"], batch["feat_lens"])
        if opts.beam <= 1:
            hyps = [[(h, None)] for h in greedy_search(model, enc)]
        else:
            hyps = [[(h.tokens, h.score) for h in nb]
                    for nb in beam_search(model, enc, opts.beam, max(opts.nbest, 1))]
        for i, nb in zip(batch["index"].tolist(), hyps):
            u = utts[i]
            r = {"id": u.id, "ref": u.text, "hyp": tokenizer.decode(list(nb[0][0]))}
            if opts.nbest > 1:
                r["nbest"] = [{"hyp": tokenizer.decode(list(t)), "score": s} for t, s in nb]
            results[i] = r
        done += len(hyps)
        if opts.progress:
            print(f"\r  decoded {done}/{len(utts)} ({time.time() - t0:.0f}s)", end="", file=sys.stderr)
    if opts.progress:
        print(file=sys.stderr)
    return results


def decode_manifest(brick: str | Path, manifest: str | Path, opts: DecodeOptions = DecodeOptions(),
                    max_utts: int | None = None) -> tuple[list[dict], ErrorRates]:
    """Load a brick (model, tokenizer, fbank settings) and decode a manifest → (results, WER/CER)."""
    model, iface = load_brick(brick)
    tok = Tokenizer(Path(brick) / "tokenizer.model")
    fbank = FbankConfig(**{k: v for k, v in iface["input"].items() if k != "kind"})
    utts = load_manifest(manifest, require_audio=True)[:max_utts]
    res = decode_utterances(model, tok, utts, fbank, opts)
    return res, error_rates([r["ref"] for r in res], [r["hyp"] for r in res])
