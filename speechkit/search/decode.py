"""Batch decoding of a manifest with a brick (transducer or attention decoder; speech or text input)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..data.dataset import SpeechDataset, TextDataset, collate, target_texts
from ..data.manifest import Utterance, load_manifest
from ..data.sampler import BucketBatchSampler
from ..features import FbankConfig
from ..lego.brick import BrickError, load_brick
from ..metrics import Scores, normalize_text, score
from ..tokenizer import Tokenizer
from .attention import attention_beam_search
from .transducer import Hypothesis, beam_search, greedy_search


@dataclass(frozen=True)
class DecodeOptions:
    beam: int = 1  # 1 = batched greedy search, > 1 = modified beam search
    nbest: int = 1
    max_frames: int = 60000  # input frames per batch
    num_workers: int = 0
    progress: bool = True


def search(model, enc, beam: int = 1, nbest: int = 1) -> list[list[Hypothesis]]:
    """Search an encoded batch with whatever decoder ``model`` has → per utterance an N-best list.

    Attention decoders: batched beam search (beam 1 = greedy). Transducers: batched greedy
    (beam 1, score None) or modified beam search.
    """
    if hasattr(model, "decoder") and hasattr(model.decoder, "teacher_forcing"):
        return attention_beam_search(model, enc, max(beam, 1), max(nbest, 1))
    if beam <= 1:
        return [[Hypothesis(tuple(h), None)] for h in greedy_search(model, enc)]
    return beam_search(model, enc, beam, max(nbest, 1))


@torch.no_grad()
def decode_dataset(model, ds: SpeechDataset | TextDataset,
                   opts: DecodeOptions = DecodeOptions()) -> list[dict]:
    """Decode a dataset → one dict per utterance (manifest order): id, ref, hyp, [nbest].

    ``ref`` is the normalised target (transcript or translation) the model was trained on.
    """
    model.eval()
    sampler = BucketBatchSampler(ds.lengths(), opts.max_frames, shuffle=False)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=opts.num_workers)
    results: list[dict | None] = [None] * len(ds)
    t0, done = time.time(), 0
    for batch in loader:
        enc = model(batch["inputs"], batch["input_lens"])
        for i, nb in zip(batch["index"].tolist(), search(model, enc, opts.beam, opts.nbest)):
            r = {"id": ds.utts[i].id, "ref": ds.refs[i], "hyp": ds.tok.decode(list(nb[0].tokens))}
            if opts.nbest > 1:
                r["nbest"] = [{"hyp": ds.tok.decode(list(h.tokens)), "score": h.score} for h in nb]
            results[i] = r
        done += len(batch["index"])
        if opts.progress:
            print(f"\r  decoded {done}/{len(ds)} ({time.time() - t0:.0f}s)", end="", file=sys.stderr)
    if opts.progress:
        print(file=sys.stderr)
    return results


def brick_dataset(brick: str | Path, iface: dict, utts: list[Utterance], target_lang: str | None,
                  source: str = "manifest") -> SpeechDataset | TextDataset:
    """The dataset a brick reads: fbank features with its settings, or text with its source tokenizer."""
    tok = Tokenizer(Path(brick) / "tokenizer.model")
    inp = iface["input"]
    if inp.get("kind") == "text":
        src_tok = Tokenizer(Path(brick) / "source_tokenizer.model")
        if src_tok.fingerprint != inp["fingerprint"]:
            raise BrickError(f"{brick}/source_tokenizer.model has fingerprint {src_tok.fingerprint}, "
                             f"interface.json says {inp['fingerprint']}")
        return TextDataset(utts, tok, src_tok, target_lang, source=source)
    fbank = FbankConfig(**{k: v for k, v in inp.items() if k != "kind"})
    return SpeechDataset(utts, tok, fbank, source=source, target_lang=target_lang)


def decode_manifest(brick: str | Path, manifest: str | Path, opts: DecodeOptions = DecodeOptions(),
                    max_utts: int | None = None,
                    target_lang: str | None = "brick") -> tuple[list[dict], Scores]:
    """Load a brick and decode a manifest → (results, scores).

    ``target_lang``: the reference is the transcript (None) or the translation into that
    language; "brick" (default) uses the ``target_lang`` recorded in the brick's interface.json.
    """
    model, iface = load_brick(brick)
    if target_lang == "brick":
        target_lang = iface.get("target_lang")
    text_input = iface["input"].get("kind") == "text"
    utts = load_manifest(manifest, require_audio=not text_input)[:max_utts]
    res = decode_dataset(model, brick_dataset(brick, iface, utts, target_lang, str(manifest)), opts)
    return res, score([r["ref"] for r in res], [r["hyp"] for r in res])


def cascade_manifest(asr_brick: str | Path, mt_brick: str | Path, manifest: str | Path,
                     opts: DecodeOptions = DecodeOptions(), max_utts: int | None = None,
                     target_lang: str | None = "brick") -> tuple[list[dict], Scores]:
    """Cascade speech translation: ``asr_brick`` transcribes, the text brick ``mt_brick`` translates
    its transcripts → (results with 'asr' transcripts, scores against the translations).

    An utterance whose transcript is empty gets an empty translation (scored as such).
    """
    mt, iface = load_brick(mt_brick)
    if iface["input"].get("kind") != "text":
        raise BrickError(f"{mt_brick} reads {iface['input'].get('kind')!r} inputs; the second stage of a "
                         "cascade must read text (an MT brick)")
    if target_lang == "brick":
        target_lang = iface.get("target_lang")
    asr, _ = decode_manifest(asr_brick, manifest, opts, max_utts, target_lang=None)
    utts = load_manifest(manifest)[:max_utts]
    transcripts = [r["hyp"] for r in asr]
    said = [i for i, t in enumerate(transcripts) if normalize_text(t)]
    second = [replace(utts[i], text=transcripts[i]) for i in said]
    res = decode_dataset(mt, brick_dataset(mt_brick, iface, second, target_lang, str(manifest)), opts)
    out = [{"id": u.id, "ref": ref, "hyp": "", "asr": t}
           for u, ref, t in zip(utts, target_texts(utts, target_lang, str(manifest)), transcripts)]
    for i, r in zip(said, res):
        out[i].update(r)
    return out, score([r["ref"] for r in out], [r["hyp"] for r in out])
