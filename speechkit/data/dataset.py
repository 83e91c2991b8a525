"""Datasets: utterances → (features or source token ids, target token ids), with an optional
feature cache.

The cache is one safetensors file per manifest (fp16 features concatenated along
time, plus offsets); its metadata records the utterance ids and the fbank settings,
and a cache that does not match the manifest (or cannot be read) is rebuilt, never silently
used. It is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..audio import AudioError, read_audio
from ..features import FbankConfig, fbank
from ..files import atomic_path
from ..metrics import normalize_text
from ..tokenizer import Tokenizer, train_tokenizer
from .manifest import Utterance, load_texts


def utterance_features(u: Utterance, cfg: FbankConfig) -> Tensor:
    """Read and featurise one utterance → (T, F); errors name the utterance and file."""
    wave = read_audio(u.audio, u.offset, u.duration, cfg.sample_rate)
    try:
        return fbank(wave, cfg)
    except ValueError as e:
        raise AudioError(f"utterance {u.id!r} ({u.audio}): {e}") from None


class _Featurize(Dataset):
    def __init__(self, utts, cfg):
        self.utts, self.cfg = utts, cfg

    def __len__(self):
        return len(self.utts)

    def __getitem__(self, i):
        return utterance_features(self.utts[i], self.cfg).half()


class FeatureCache:
    """Precomputed features for a list of utterances, addressable by index."""

    def __init__(self, feats: Tensor, offsets: Tensor):
        self.feats, self.offsets = feats, offsets

    def __getitem__(self, i: int) -> Tensor:
        return self.feats[self.offsets[i]: self.offsets[i + 1]].float()

    def lengths(self) -> list[int]:
        return (self.offsets[1:] - self.offsets[:-1]).tolist()

    @staticmethod
    def _meta(utts: list[Utterance], cfg: FbankConfig) -> dict[str, str]:
        return {"ids": json.dumps([u.id for u in utts]), "fbank": json.dumps(cfg.to_dict())}

    @classmethod
    def matches(cls, utts: list[Utterance], cfg: FbankConfig, path: str | Path) -> bool:
        """Whether ``path`` holds the features of exactly these utterances and settings (header only)."""
        if not Path(path).is_file():
            return False
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt") as f:
                return f.metadata() == cls._meta(utts, cfg)
        except (SafetensorError, OSError) as e:  # e.g. cut short by a run killed while writing it
            print(f"note: feature cache {path} is unreadable ({e}); rebuilding it", file=sys.stderr)
            return False

    @classmethod
    def load_or_build(cls, utts: list[Utterance], cfg: FbankConfig, path: str | Path,
                      workers: int = 2, progress: bool = True) -> FeatureCache:
        if cls.matches(utts, cfg, path):
            t = load_file(str(path))
            return cls(t["feats"], t["offsets"])
        return cls.build(utts, cfg, path, workers, progress)

    @classmethod
    def build(cls, utts: list[Utterance], cfg: FbankConfig, path: str | Path, workers: int = 2,
              progress: bool = True) -> FeatureCache:
        """Featurise ``utts`` and write the cache to ``path`` (atomically)."""
        feats = []
        loader = DataLoader(_Featurize(utts, cfg), batch_size=None, num_workers=workers)
        t0 = time.time()
        for i, x in enumerate(loader):
            feats.append(x)
            if progress and (i + 1) % 2000 == 0:
                print(f"  features {i + 1}/{len(utts)} ({time.time() - t0:.0f}s)", file=sys.stderr)
        return cls.write(utts, cfg, feats, path)

    @classmethod
    def write(cls, utts: list[Utterance], cfg: FbankConfig, feats: list[Tensor],
              path: str | Path) -> FeatureCache:
        """The cache of ``utts`` from their features (T, F) each, written to ``path`` (atomically)."""
        offsets = torch.tensor([0] + [f.shape[0] for f in feats]).cumsum(0)
        cache = cls(torch.cat(feats).half(), offsets)
        with atomic_path(path) as tmp:
            save_file({"feats": cache.feats, "offsets": cache.offsets}, str(tmp),
                      metadata=cls._meta(utts, cfg))
        return cache


def written_targets(utts: list[Utterance], target_lang: str | None, source: str) -> list[str]:
    """The target of each utterance as the manifest writes it (cased, punctuated): its transcript
    (``target_lang`` None) or its translation into ``target_lang``; a missing one raises a ValueError naming
    the utterance. What standard sacreBLEU scores against (``metrics.score``)."""
    out = []
    for u in utts:
        raw = u.text if target_lang is None else (u.translation or {}).get(target_lang)
        if raw is None:
            raise ValueError(f"{source}: utterance {u.id!r} has no {target_lang!r} translation")
        out.append(raw)
    return out


def target_texts(utts: list[Utterance], target_lang: str | None, source: str,
                 written: list[str] | None = None) -> list[str]:
    """The normalised target of each utterance (its ``written_targets``, or ``written`` when the caller has
    them, through ``normalize_text``): what the models are trained on. Missing or empty targets raise a
    ValueError naming the utterance."""
    out = []
    for u, raw in zip(utts, written if written is not None else written_targets(utts, target_lang, source)):
        text = normalize_text(raw)
        if not text:
            what = "transcript" if target_lang is None else f"{target_lang!r} translation"
            raise ValueError(f"{source}: utterance {u.id!r} has an empty {what} after normalisation "
                             f"(text={raw!r})")
        out.append(text)
    return out


def manifest_tokenizer(manifest: str | Path, out: str | Path, vocab_size: int,
                       target_lang: str | None = None) -> Tokenizer:
    """Train a sentencepiece model of ``vocab_size`` pieces on the normalised targets (``target_texts``) of
    a JSONL manifest or plain text file (``manifest.load_texts``): its transcripts, or its ``target_lang``
    translations; written to ``out`` (atomically)."""
    return train_tokenizer(target_texts(load_texts(manifest), target_lang, str(manifest)), out, vocab_size)


UNK_WARN_TOKEN_SHARE = 0.01  # warn when more than this share of all tokens is <unk> …
UNK_WARN_UTT_SHARE = 0.5  # … or when any utterance has at least this share of its tokens <unk>
# (sentencepiece merges a run of unknown characters into one <unk> after a '▁' piece: a wholly
# foreign utterance is about half <unk>)
UNK_WARN_EXAMPLES = 3  # utterance ids named in the warning


def tokenize(texts: list[str], tokenizer: Tokenizer, source: str = "texts",
             ids: list[str] | None = None, what: str = "target") -> list[Tensor]:
    """Encode each text → (U,) token ids. Counts the ``<unk>`` ids on the way and prints one warning
    line to stderr (``unk_warning``) when the tokenizer does not cover the texts (another script or
    language): ``source`` names the manifest, ``ids`` the utterances, ``what`` the side (target, source)."""
    unk, out, counts = tokenizer.unk, [], []
    for t in texts:
        x = tokenizer.encode(t)
        counts.append((x.count(unk), len(x)))
        out.append(torch.tensor(x, dtype=torch.long))
    line = unk_warning(counts, source, ids, what, tokenizer)
    if line and _rank_zero():
        print(line, file=sys.stderr)
    return out


def unk_warning(counts: list[tuple[int, int]], source: str, ids: list[str] | None, what: str,
                tokenizer: Tokenizer) -> str | None:
    """The warning line for per-utterance (``<unk>`` count, token count) pairs, or None when the
    ``<unk>`` share is below ``UNK_WARN_TOKEN_SHARE`` and no utterance is mostly ``<unk>``."""
    n_unk, n_tok = sum(c for c, _ in counts), sum(n for _, n in counts)
    mostly = any(c >= UNK_WARN_UTT_SHARE * n for c, n in counts if c)
    if n_unk == 0 or (n_unk <= UNK_WARN_TOKEN_SHARE * n_tok and not mostly):
        return None
    hit = [i for i, (c, _) in enumerate(counts) if c]
    names = [repr(ids[i]) if ids else f"#{i}" for i in hit[:UNK_WARN_EXAMPLES]]
    return (f"warning: {source}: {n_unk} of {n_tok} {what} tokens ({100 * n_unk / n_tok:.1f}%) are <unk>, "
            f"in {len(hit)} of {len(counts)} utterances (e.g. {', '.join(names)}): the tokenizer "
            f"{tokenizer.path} does not cover these texts (another script or language?)")


def _rank_zero() -> bool:
    """Whether this process is the first of a distributed run (or not distributed)."""
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0"


class SpeechDataset(Dataset):
    """Items are (features (T, F), token ids (U,), index[, transcript ids (S,)]).

    Targets are the transcripts (or the ``target_lang`` translations: speech translation),
    normalised (``metrics.normalize_text``) before tokenisation; an utterance whose target
    is empty after that raises a ValueError naming it. With ``transcript_tokenizer`` (speech
    translation trained with the source transcript, e.g. STAST), items also carry the
    transcript encoded with it. Texts the tokenizer does not cover print one ``<unk>`` warning line
    (``tokenize``).
    """

    def __init__(self, utts: list[Utterance], tokenizer: Tokenizer, cfg: FbankConfig,
                 cache: FeatureCache | None = None, source: str = "manifest", target_lang: str | None = None,
                 transcript_tokenizer: Tokenizer | None = None):
        self.utts, self.tok, self.cfg, self.cache = utts, tokenizer, cfg, cache
        self.written_refs = written_targets(utts, target_lang, source)  # standard sacreBLEU scores these
        self.refs = target_texts(utts, target_lang, source, self.written_refs)
        ids = [u.id for u in utts]
        self.targets = tokenize(self.refs, tokenizer, source, ids)
        self.transcripts = None if transcript_tokenizer is None else tokenize(
            target_texts(utts, None, source), transcript_tokenizer, source, ids, "transcript")

    def __len__(self) -> int:
        return len(self.utts)

    def lengths(self) -> list[int]:
        """Frame counts (exact with a cache, else from durations at the frame shift)."""
        if self.cache is not None:
            return self.cache.lengths()
        shift = self.cfg.frame_shift_ms / 1000
        return [int((u.duration or 10.0) / shift) for u in self.utts]

    def target_lengths(self) -> list[int]:
        return [len(t) for t in self.targets]

    def __getitem__(self, i: int):
        x = self.cache[i] if self.cache is not None else utterance_features(self.utts[i], self.cfg)
        if self.transcripts is not None:
            return x, self.targets[i], i, self.transcripts[i]
        return x, self.targets[i], i


class TextDataset(Dataset):
    """Items are (source token ids (T,), target token ids (U,), index): machine translation, or
    language modelling when ``source_tokenizer`` is None (the source is the target itself).

    The source is the utterance's ``text`` (normalised, encoded with ``source_tokenizer``);
    the target is its ``target_lang`` translation (or its ``text``) in the interface vocabulary.
    """

    def __init__(self, utts: list[Utterance], tokenizer: Tokenizer, source_tokenizer: Tokenizer | None,
                 target_lang: str | None, source: str = "manifest"):
        self.utts, self.tok = utts, tokenizer
        self.written_refs = written_targets(utts, target_lang, source)  # standard sacreBLEU scores these
        self.refs = target_texts(utts, target_lang, source, self.written_refs)
        ids = [u.id for u in utts]
        self.targets = tokenize(self.refs, tokenizer, source, ids)
        self.sources = self.targets if source_tokenizer is None else tokenize(
            target_texts(utts, None, source), source_tokenizer, source, ids, "source")

    def __len__(self) -> int:
        return len(self.utts)

    def lengths(self) -> list[int]:
        return [len(s) for s in self.sources]

    def target_lengths(self) -> list[int]:
        return [len(t) for t in self.targets]

    def __getitem__(self, i: int):
        return self.sources[i], self.targets[i], i


def collate(items) -> dict[str, Tensor]:
    """Pad dataset items → inputs (B, T, F) features or (B, T) token ids, input_lens (B,),
    targets (B, U), target_lens (B,), index (B,) [, transcripts (B, S), transcript_lens (B,)]."""
    inputs, targets, index, *extra = zip(*items)
    batch = {"inputs": _pad(inputs), "input_lens": torch.tensor([f.shape[0] for f in inputs]),
             "targets": _pad(targets), "target_lens": torch.tensor([t.shape[0] for t in targets]),
             "index": torch.tensor(index)}
    if extra:
        batch["transcripts"] = _pad(extra[0])
        batch["transcript_lens"] = torch.tensor([len(t) for t in extra[0]])
    return batch


def _pad(seqs) -> Tensor:
    return torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True)
