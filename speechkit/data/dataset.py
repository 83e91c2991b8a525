"""Speech datasets: utterances → (features, token ids), with an optional feature cache.

The cache is one safetensors file per manifest (fp16 features concatenated along
time, plus offsets); its metadata records the utterance ids and the fbank settings,
and a cache that does not match the manifest is rebuilt, never silently used.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..audio import AudioError, read_audio
from ..features import FbankConfig, fbank
from ..metrics import normalize_text
from ..tokenizer import Tokenizer
from .manifest import Utterance


def utterance_features(u: Utterance, cfg: FbankConfig) -> Tensor:
    """Read and featurise one utterance → (T, F); errors name the utterance and file."""
    wave = read_audio(u.audio, u.offset, u.duration if u.offset else None, cfg.sample_rate)
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
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return f.metadata() == cls._meta(utts, cfg)

    @classmethod
    def load_or_build(cls, utts: list[Utterance], cfg: FbankConfig, path: str | Path,
                      workers: int = 2, progress: bool = True) -> FeatureCache:
        path = Path(path)
        if cls.matches(utts, cfg, path):
            t = load_file(str(path))
            return cls(t["feats"], t["offsets"])
        feats = []
        loader = DataLoader(_Featurize(utts, cfg), batch_size=None, num_workers=workers)
        t0 = time.time()
        for i, x in enumerate(loader):
            feats.append(x)
            if progress and (i + 1) % 2000 == 0:
                print(f"  features {i + 1}/{len(utts)} ({time.time() - t0:.0f}s)", file=sys.stderr)
        offsets = torch.tensor([0] + [f.shape[0] for f in feats]).cumsum(0)
        cache = cls(torch.cat(feats), offsets)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"feats": cache.feats, "offsets": cache.offsets}, str(path), metadata=cls._meta(utts, cfg))
        return cache


class SpeechDataset(Dataset):
    """Items are (features (T, F), token ids (U,), index).

    Transcripts are normalised (``metrics.normalize_text``) before tokenisation; an
    utterance whose transcript is empty after that raises a ValueError naming it.
    """

    def __init__(self, utts: list[Utterance], tokenizer: Tokenizer, cfg: FbankConfig,
                 cache: FeatureCache | None = None, source: str = "manifest"):
        self.utts, self.tok, self.cfg, self.cache = utts, tokenizer, cfg, cache
        self.targets = []
        for u in utts:
            ids = tokenizer.encode(normalize_text(u.text))
            if not ids:
                raise ValueError(f"{source}: utterance {u.id!r} has an empty transcript "
                                 f"after normalisation (text={u.text!r})")
            self.targets.append(torch.tensor(ids, dtype=torch.long))

    def __len__(self) -> int:
        return len(self.utts)

    def lengths(self) -> list[int]:
        """Frame counts (exact with a cache, else from durations at the frame shift)."""
        if self.cache is not None:
            return self.cache.lengths()
        shift = self.cfg.frame_shift_ms / 1000
        return [int((u.duration or 10.0) / shift) for u in self.utts]

    def __getitem__(self, i: int):
        x = self.cache[i] if self.cache is not None else utterance_features(self.utts[i], self.cfg)
        return x, self.targets[i], i


def collate(items) -> dict[str, Tensor]:
    """Pad a list of dataset items → feats (B, T, F), feat_lens (B,), targets (B, U), target_lens, index."""
    feats, targets, index = zip(*items)
    return {
        "feats": torch.nn.utils.rnn.pad_sequence(feats, batch_first=True),
        "feat_lens": torch.tensor([f.shape[0] for f in feats]),
        "targets": torch.nn.utils.rnn.pad_sequence(targets, batch_first=True),
        "target_lens": torch.tensor([t.shape[0] for t in targets]),
        "index": torch.tensor(index),
    }
