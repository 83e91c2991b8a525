"""Batch decoding of a manifest with a brick (transducer or attention decoder; speech or text input)."""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset

from ..audio import AudioError
from ..data.dataset import SpeechDataset, TextDataset, collate, target_texts, written_targets
from ..data.manifest import Utterance, load_manifest
from ..data.sampler import BucketBatchSampler
from ..errors import SpeechkitError
from ..files import atomic_write
from ..lego.interface import Encoded
from ..metrics import Scores, normalize_text, score
from ..models.base import TokenLM
from ..nn.brick import BrickError
from ..nn.device import model_device
from ..search.dispatch import search
from ..search.fusion import Fusion
from .bricks import LoadedBrick, load_brick, read_interface


@dataclass(frozen=True)
class DecodeOptions:
    beam: int = 1  # 1 = batched greedy search, > 1 = modified beam search
    nbest: int = 1
    max_frames: int = 60000  # input frames per batch
    num_workers: int = 0
    progress: bool = True
    fusion: Fusion | None = None  # external LM / ILME / length reward (search.fusion)
    max_symbols: int | None = None  # transducer: labels per frame (None: greedy 3, beam search 1)
    skip_bad: bool = False  # leave out utterances whose audio cannot be read (else: stop, naming the first)
    device: torch.device | None = None  # where bricks load (None: the CPU; nn.device.resolve_device)


def default_output(brick: str | Path, name: str) -> Path:
    """Where a file made from ``brick`` (hypotheses, calibration) goes by default: beside the brick, never
    inside it (a shared brick may be read-only). ``PARENT/NAME`` for a brick folder called ``brick`` (what
    ``fit`` writes: exp/RUN/brick → exp/RUN/NAME), else ``PARENT/BRICK-NAME`` (sibling bricks such as
    exp/lego/ro+de and exp/lego/3 keep apart)."""
    b = Path(brick)
    if b.name in ("", ".", ".."):
        b = b.resolve()
    return b.parent / (name if b.name == "brick" else f"{b.name}-{name}")


class _Unreadable(NamedTuple):
    index: int
    reason: str  # the AudioError's message (it names the file)


class _Readable(Dataset):
    """``ds`` whose items that cannot be read (``AudioError``) come back as ``_Unreadable`` instead of
    raising: in a loader worker too, so the main process decides (stop or skip) with a one-line message."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        try:
            return self.ds[i]
        except AudioError as e:
            return _Unreadable(i, str(e))


def _collate_readable(items) -> tuple[dict | None, list[_Unreadable]]:
    """Items of ``_Readable`` → (the readable ones collated, or None; the unreadable ones)."""
    bad = [x for x in items if isinstance(x, _Unreadable)]
    good = [x for x in items if not isinstance(x, _Unreadable)]
    return (collate(good) if good else None), bad


def unreadable_message(u: Utterance, reason: str) -> str:
    """``reason`` (an ``AudioError``'s message, naming the file) prefixed with the utterance id."""
    return reason if reason.startswith(f"utterance {u.id!r}") else f"utterance {u.id!r}: {reason}"


def encode_dataset(model, ds: SpeechDataset | TextDataset, opts: DecodeOptions,
                   skipped: dict[int, str] | None = None) -> Iterator[tuple[list[int], Encoded]]:
    """Encode a dataset in length-bucketed batches → (dataset indices, ``Encoded``) per batch.

    An utterance whose audio cannot be read stops the run (``AudioError`` naming its id and file), or,
    with ``opts.skip_bad``, is left out and recorded in ``skipped`` (dataset index → reason).
    """
    model.eval()
    device = model_device(model)  # batches go where the model is (pinned, copied ahead)
    sampler = BucketBatchSampler(ds.lengths(), opts.max_frames, shuffle=False)
    loader = DataLoader(_Readable(ds), batch_sampler=sampler, collate_fn=_collate_readable,
                        num_workers=opts.num_workers, pin_memory=device.type == "cuda")
    with torch.no_grad():
        for batch, bad in loader:
            for i, reason in bad:
                if not opts.skip_bad:
                    raise AudioError(unreadable_message(ds.utts[i], reason) + " (--skip-bad leaves such "
                                     "utterances out)")
                if skipped is not None:
                    skipped[i] = reason
            if batch is not None:
                x, n = (batch[k].to(device, non_blocking=True) for k in ("inputs", "input_lens"))
                yield batch["index"].tolist(), model(x, n)


@torch.no_grad()
def decode_dataset(model, ds: SpeechDataset | TextDataset, opts: DecodeOptions = DecodeOptions(),
                   encoded: list[tuple[list[int], Encoded]] | None = None) -> list[dict]:
    """Decode a dataset → one dict per utterance (manifest order): id, ref, hyp, written_ref, [nbest].

    ``ref`` is the normalised target (transcript or translation) the model was trained on, ``written_ref``
    the same as the manifest writes it (cased, punctuated: standard sacreBLEU's reference). With
    ``opts.skip_bad``, an utterance whose audio cannot be read gets {id, audio, error} (no hyp; see
    ``decoded``). ``encoded``: the dataset already through ``encode_dataset`` (searched again, e.g. per
    fusion weight).
    """
    model.eval()
    results: list[dict | None] = [None] * len(ds)
    t0, done, skipped = time.time(), 0, {}
    for index, enc in encoded if encoded is not None else encode_dataset(model, ds, opts, skipped):
        for i, nb in zip(index, search(model, enc, opts.beam, opts.nbest, opts.fusion, opts.max_symbols)):
            r = {"id": ds.utts[i].id, "ref": ds.refs[i], "hyp": ds.tok.decode(list(nb[0].tokens)),
                 "written_ref": ds.written_refs[i]}
            if opts.nbest > 1:
                r["nbest"] = [{"hyp": ds.tok.decode(list(h.tokens)), "score": h.score} for h in nb]
            results[i] = r
        done += len(index)
        if opts.progress:
            print(f"\r  decoded {done + len(skipped)}/{len(ds)} ({time.time() - t0:.0f}s)", end="",
                  file=sys.stderr)
    if opts.progress:
        print(file=sys.stderr)
    for i, reason in skipped.items():
        results[i] = {"id": ds.utts[i].id, "audio": ds.utts[i].audio, "error": reason}
    return results


def decoded(results: list[dict]) -> list[dict]:
    """The results that have a hypothesis (not the unreadable utterances ``--skip-bad`` left out)."""
    return [r for r in results if "error" not in r]


def score_results(results: list[dict], source: str | Path = "manifest") -> Scores:
    """Scores of the decoded results; an ``AudioError`` when every utterance was unreadable."""
    done = decoded(results)
    if not done:
        raise AudioError(f"{source}: none of its {len(results)} utterances could be read (first: "
                         f"{results[0]['id']!r}: {results[0]['error']})")
    return score_rows(done)


def score_rows(rows: list[dict]) -> Scores:
    """Scores of {ref, hyp[, written_ref]} rows: standard sacreBLEU too when every row has its
    ``written_ref``."""
    written = [r["written_ref"] for r in rows if "written_ref" in r]
    return score([r["ref"] for r in rows], [r["hyp"] for r in rows],
                 written if len(written) == len(rows) else None)


def loaded(brick: str | Path | LoadedBrick, device: torch.device | None = None) -> LoadedBrick:
    """``brick`` itself when already loaded, else ``load_brick(brick, device)``."""
    return brick if isinstance(brick, LoadedBrick) else load_brick(brick, device)


def brick_dataset(brick: LoadedBrick, utts: list[Utterance], target_lang: str | None,
                  source: str = "manifest") -> SpeechDataset | TextDataset:
    """The dataset a brick reads: fbank features with its settings, or text with its source tokenizer."""
    if brick.text_input:
        return TextDataset(utts, brick.tokenizer, brick.source_tokenizer(), target_lang, source=source)
    return SpeechDataset(utts, brick.tokenizer, brick.fbank(), source=source, target_lang=target_lang)


def brick_manifest(brick: LoadedBrick, manifest: str | Path, max_utts: int | None = None,
                   target_lang: str | None = "brick") -> SpeechDataset | TextDataset:
    """The first ``max_utts`` utterances of ``manifest`` as ``brick`` reads them; ``target_lang`` "brick":
    the one recorded in its interface.json."""
    if target_lang == "brick":
        target_lang = brick.interface.get("target_lang")
    utts = load_manifest(manifest, require_audio=not brick.text_input)[:max_utts]
    return brick_dataset(brick, utts, target_lang, str(manifest))


def decode_manifest(brick: str | Path | LoadedBrick, manifest: str | Path,
                    opts: DecodeOptions = DecodeOptions(), max_utts: int | None = None,
                    target_lang: str | None = "brick") -> tuple[list[dict], Scores]:
    """Decode a manifest with a brick (a directory or a ``LoadedBrick``) → (results, scores).

    ``target_lang``: the reference is the transcript (None) or the translation into that
    language; "brick" (default) uses the ``target_lang`` recorded in the brick's interface.json.
    """
    b = loaded(brick, opts.device)
    res = decode_dataset(b.module, brick_manifest(b, manifest, max_utts, target_lang), opts)
    return res, score_results(res, manifest)


def cascade_manifest(asr_brick: str | Path | LoadedBrick, mt_brick: str | Path | LoadedBrick,
                     manifest: str | Path, opts: DecodeOptions = DecodeOptions(), max_utts: int | None = None,
                     target_lang: str | None = "brick") -> tuple[list[dict], Scores]:
    """Cascade speech translation: ``asr_brick`` transcribes, the text brick ``mt_brick`` translates
    its transcripts → (results with 'asr' transcripts, scores against the translations).

    An utterance whose transcript is empty gets an empty translation (scored as such); one whose audio
    ``opts.skip_bad`` left out keeps its {id, audio, error} row.
    """
    mt = loaded(mt_brick, opts.device)
    if not mt.text_input:
        raise BrickError(f"{mt.path} reads {mt.interface['input'].get('kind')!r} inputs; the second stage of "
                         "a cascade must read text (an MT brick)")
    if target_lang == "brick":
        target_lang = mt.interface.get("target_lang")
    asr, _ = decode_manifest(asr_brick, manifest, opts, max_utts, target_lang=None)
    utts = load_manifest(manifest)[:max_utts]
    transcripts = [r.get("hyp", "") for r in asr]
    said = [i for i, (r, t) in enumerate(zip(asr, transcripts)) if "error" not in r and normalize_text(t)]
    second = [replace(utts[i], text=transcripts[i]) for i in said]
    res = decode_dataset(mt.module, brick_dataset(mt, second, target_lang, str(manifest)), opts)
    written = written_targets(utts, target_lang, str(manifest))
    refs = target_texts(utts, target_lang, str(manifest), written)
    out = [{"id": u.id, "ref": ref, "hyp": "", "asr": t, "written_ref": w}
           for u, ref, t, w in zip(utts, refs, transcripts, written)]
    for i, r in zip(said, res):
        out[i].update(r)
    out = [r if "error" in r else o for o, r in zip(out, asr)]  # unreadable: the ASR stage's row
    return out, score_results(out, manifest)


def decode_to_file(brick: str | Path | LoadedBrick, manifest: str | Path,
                   opts: DecodeOptions = DecodeOptions(), out: str | Path | None = None,
                   then: str | Path | None = None, max_utts: int | None = None,
                   target_lang: str | None = "brick") -> tuple[dict, Scores]:
    """``speechkit decode``: decode ``manifest`` with ``brick`` (then, for a cascade, translate its
    transcripts with the text brick ``then``), write one JSON line per decoded utterance to ``out``
    atomically (default: ``default_output``, beside the brick) → (summary {manifest, utts, wer, cer, bleu,
    chrf, …, hyps, skipped: [{id, audio, error}] (with ``opts.skip_bad``)}, the ``Scores``)."""
    if then and opts.fusion is not None:
        raise ValueError("--lm/--ilm-weight/--length-reward apply to one brick, not to a cascade (--then)")
    if then:
        res, sc = cascade_manifest(brick, then, manifest, opts, max_utts, target_lang=target_lang)
    else:
        res, sc = decode_manifest(brick, manifest, opts, max_utts, target_lang=target_lang)
    return write_results(res, sc, manifest, out or default_output(
        brick.path if isinstance(brick, LoadedBrick) else brick, f"decode-{Path(manifest).stem}.jsonl")), sc


def write_results(res: list[dict], sc: Scores, manifest: str | Path, out: str | Path) -> dict:
    """One JSON line per decoded utterance to ``out``, atomically → the summary ``speechkit decode``
    prints (see ``decode_to_file``)."""
    done = decoded(res)
    with atomic_write(out) as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in done)
    return {"manifest": str(manifest), "utts": len(done), **sc.to_dict(), "hyps": str(out),
            "skipped": [r for r in res if "error" in r]}


def score_file(hyps: str | Path) -> Scores:
    """``speechkit score``: the scores of a hypotheses JSONL (one {ref, hyp[, written_ref]} object per line,
    as ``decode`` writes); a line that is not one is named (``HypothesesError``: file:line)."""
    rows = []
    with open(hyps, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                r = json.loads(line)
                rows.append({k: r[k] for k in ("ref", "hyp")} | {k: r[k] for k in ("written_ref",) if k in r})
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise HypothesesError(f"{hyps}:{n}: expected a JSON object with 'ref' and 'hyp' "
                                      f"({e})") from None
    return score_rows(rows)


class HypothesesError(SpeechkitError, ValueError):
    """A hypotheses file that is not one {ref, hyp} JSON object per line (the message names file:line)."""


def make_fusion(brick: str | Path | LoadedBrick, lm_brick: str | Path | None, lm_weight: float = 0.0,
                ilm_weight: float = 0.0, length_reward: float = 0.0, lm_eos: bool = True,
                device: torch.device | None = None) -> Fusion | None:
    """The ``Fusion`` for decoding ``brick`` on ``device`` (None: every weight 0 and no LM)."""
    if lm_brick is None and not (lm_weight or ilm_weight or length_reward):
        return None
    lm = load_lm(lm_brick, brick, device=device) if lm_brick else None
    return Fusion(lm, lm_weight, ilm_weight, length_reward, lm_eos)


def load_lm(lm_brick: str | Path, model: str | Path | LoadedBrick | dict, where: str | Path | None = None,
            device: torch.device | None = None):
    """Load an external LM brick (onto ``device``) → its module (a ``TokenLM``), checked
    (``LoadedBrick.check_speaks``: the tokenizer fingerprint) to speak the interface vocabulary of ``model``:
    a brick, its directory, or an interface (interface.json's content, at least
    ``{"tokenizer": Tokenizer.info()}``) named by ``where``."""
    lm = load_brick(lm_brick, device)
    if not isinstance(lm.module, TokenLM):
        raise BrickError(f"{lm_brick} is a {lm.interface.get('kind')}, not a language model brick")
    if isinstance(model, LoadedBrick):
        lm.check_speaks(model.interface, model.path)
    elif isinstance(model, dict):
        lm.check_speaks(model, where or "the model")
    else:
        lm.check_speaks(read_interface(model), model)
    return lm.module


def tune_fusion(brick: str | Path | LoadedBrick, manifest: str | Path, lm_brick: str | Path | None,
                lm_weights: list[float], ilm_weights: list[float], length_rewards: list[float],
                opts: DecodeOptions = DecodeOptions(beam=4), max_utts: int | None = None,
                lm_eos: bool = True, report=print) -> list[dict]:
    """Grid search of the fusion weights on a dev manifest → one row per (λ_LM, λ_ILM, β), in grid
    order, each {'lm_weight', 'ilm_weight', 'length_reward', 'wer', 'cer', …}. The manifest is
    encoded once; ``report`` gets each row as it is done."""
    b = loaded(brick, opts.device)
    model = b.module
    lm = load_lm(lm_brick, b, device=opts.device) if lm_brick else None
    if lm is None and any(lm_weights):
        raise BrickError("LM weights other than 0 need an external LM (--lm)")
    ds = brick_manifest(b, manifest, max_utts)
    encoded = list(encode_dataset(model, ds, opts))
    rows = []
    for lw, iw, lr in itertools.product(lm_weights, ilm_weights, length_rewards):
        fusion = Fusion(lm, lw, iw, lr, lm_eos)
        t0 = time.time()
        res = decode_dataset(model, ds, replace(opts, fusion=fusion, progress=False), encoded)
        sc = score([r["ref"] for r in res], [r["hyp"] for r in res])
        rows.append({"lm_weight": lw, "ilm_weight": iw, "length_reward": lr, **sc.to_dict(),
                     "seconds": round(time.time() - t0, 1)})
        report(rows[-1])
    return rows
