"""LightningDataModule for manifests: speech → text (ASR, ST) and text → text (MT)."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from ..features import FbankConfig
from ..tokenizer import Tokenizer, TokenizerNotFoundError, train_tokenizer
from .dataset import FeatureCache, SpeechDataset, TextDataset, collate, target_texts
from .manifest import load_manifest, load_texts
from .sampler import BucketBatchSampler


class SpeechDataModule(L.LightningDataModule):
    """Manifests → bucketed batches of inputs (features or source token ids) and target token ids.

    Args:
        train, valid, test: JSONL manifests (test optional).
        tokenizer: the interface (target) sentencepiece model (``speechkit tokenizer`` makes one);
            a missing file is an error (``TokenizerNotFoundError``) unless ``train_tokenizers``.
        target_lang: None: targets are the transcripts (``text``, ASR); a language code:
            targets are the ``translation[target_lang]`` of each utterance (MT, ST).
        source_tokenizer: given, the inputs are the utterances' ``text`` encoded with this
            sentencepiece model (MT; ``source_vocab_size`` pieces);
            None, the inputs are fbank features of the audio.
        max_frames: budget per training batch in padded input frames (speech) or source tokens (text).
        cache_dir: where feature caches go ("auto": ``<manifest dir>/fbank``; None: no cache,
            features computed on the fly in the workers).
        max_duration: training utterances longer than this (seconds) are skipped (reported).
        max_valid_utts: validate on the first N utterances only (None: all).
        transcript_tokenizer: speech inputs only: batches also carry the transcripts encoded
            with this sentencepiece model (``transcripts``, ``transcript_lens``; STAST's CTC
            targets and MT inputs; ``transcript_vocab_size`` pieces).
        text_only: language modelling: the splits are JSONL manifests or plain text files (one
            sentence per line, ``manifest.load_texts``), no audio is read, and the inputs are the
            target token ids themselves.
        train_tokenizers: a missing ``tokenizer`` / ``source_tokenizer`` / ``transcript_tokenizer``
            file is trained in ``prepare_data`` (on the training manifest's normalised targets,
            resp. transcripts, with ``vocab_size`` / ``source_vocab_size`` / ``transcript_vocab_size``
            pieces). False (the default): a missing file raises ``TokenizerNotFoundError`` naming the
            key and path, so that a mistyped path never silently trains a vocabulary no brick speaks.
            Set it in configs whose tokenizers no earlier step makes (``speechkit demo``, locale).
    """

    def __init__(self, train: str, valid: str, tokenizer: str, vocab_size: int = 256,
                 test: str | None = None, max_frames: int = 20000, num_workers: int = 0,
                 cache_dir: str | None = "auto", max_duration: float = 20.0,
                 max_valid_utts: int | None = None, num_mel_bins: int = 80, seed: int = 0,
                 target_lang: str | None = None, source_tokenizer: str | None = None,
                 source_vocab_size: int = 512, transcript_tokenizer: str | None = None,
                 transcript_vocab_size: int = 128, text_only: bool = False,
                 train_tokenizers: bool = False):
        super().__init__()
        self.train_tokenizers = train_tokenizers
        if text_only and (source_tokenizer or transcript_tokenizer):
            raise ValueError("text_only (language modelling) takes no source_tokenizer/transcript_tokenizer")
        self.text_only = text_only
        if transcript_tokenizer and source_tokenizer:
            raise ValueError("transcript_tokenizer is for speech inputs; with source_tokenizer "
                             "the inputs are text")
        self.transcript_tokenizer_path = Path(transcript_tokenizer) if transcript_tokenizer else None
        self.transcript_vocab_size = transcript_vocab_size
        self.transcript_tokenizer: Tokenizer | None = None
        self.target_lang = target_lang
        self.source_tokenizer_path = Path(source_tokenizer) if source_tokenizer else None
        self.source_vocab_size = source_vocab_size
        self.source_tokenizer: Tokenizer | None = None
        self.paths = {"train": train, "valid": valid, "test": test}
        self.tokenizer_path, self.vocab_size = Path(tokenizer), vocab_size
        self.max_frames, self.num_workers, self.seed = max_frames, num_workers, seed
        self.cache_dir, self.max_duration, self.max_valid_utts = cache_dir, max_duration, max_valid_utts
        self.fbank = FbankConfig(num_mel_bins=num_mel_bins)
        self.tokenizer: Tokenizer | None = None
        self.sets: dict[str, SpeechDataset] = {}

    def _utts(self, split: str):
        path = self.paths[split]
        if self.text_only:
            utts = load_texts(path)
        else:
            utts = load_manifest(path, require_audio=self.source_tokenizer_path is None)
        if split == "train" and self.source_tokenizer_path is None and not self.text_only:
            keep = [u for u in utts if (u.duration or 0) <= self.max_duration]
            if len(keep) < len(utts):
                print(f"{path}: skipping {len(utts) - len(keep)} utterances longer than "
                      f"{self.max_duration}s", file=sys.stderr)
            utts = keep
        if split == "valid" and self.max_valid_utts:
            utts = utts[: self.max_valid_utts]
        return utts

    def input_info(self) -> dict:
        """What the model reads, for a brick's interface.json."""
        if self.text_only:
            return {"kind": "none"}
        if self.source_tokenizer is not None:
            return {"kind": "text", **self.source_tokenizer.info()}
        return {"kind": "fbank", **self.fbank.to_dict()}

    def _cache_path(self, split: str) -> Path | None:
        if self.cache_dir is None or self.source_tokenizer_path is not None or self.text_only:
            return None
        path = Path(self.paths[split])
        root = path.parent / "fbank" if self.cache_dir == "auto" else Path(self.cache_dir)
        suffix = f"-first{self.max_valid_utts}" if split == "valid" and self.max_valid_utts else ""
        return root / f"{path.stem}{suffix}-{self.fbank.num_mel_bins}.safetensors"

    def _tokenizer_specs(self) -> list[tuple[str, Path, int, str | None]]:
        """(config key, path, pieces, target language) of each configured tokenizer; the source and
        transcript tokenizers are trained on the transcripts (``text``)."""
        specs = [("tokenizer", self.tokenizer_path, self.vocab_size, self.target_lang),
                 ("source_tokenizer", self.source_tokenizer_path, self.source_vocab_size, None),
                 ("transcript_tokenizer", self.transcript_tokenizer_path, self.transcript_vocab_size, None)]
        return [s for s in specs if s[1] is not None]

    def check_tokenizers(self) -> None:
        """Raise ``TokenizerNotFoundError`` for the first missing tokenizer file (unless
        ``train_tokenizers``): one line naming the config key and path and how to create it."""
        if self.train_tokenizers:
            return
        for key, path, size, lang in self._tokenizer_specs():
            if not path.is_file():
                target = f" --target-lang {lang}" if lang else ""
                raise TokenizerNotFoundError(
                    f"data.{key}: tokenizer model not found: {path}; create it with `speechkit tokenizer "
                    f"{self.paths['train']}{target} --vocab-size {size} --out {path}` "
                    f"or set data.train_tokenizers: true to train it from the training manifest")

    def prepare_data(self) -> None:
        """Check (with ``train_tokenizers``: train) the tokenizers, build feature caches (rank 0 only)."""
        self.check_tokenizers()
        for key, path, size, lang in self._tokenizer_specs():
            if path.is_file():
                continue
            print(f"training {key} ({size} pieces) → {path}", file=sys.stderr)
            train = load_texts(self.paths["train"]) if key == "tokenizer" else load_manifest(
                self.paths["train"], require_audio=False)
            train_tokenizer(target_texts(train, lang, self.paths["train"]), path, size)
        for split in ("train", "valid", "test"):
            path = self._cache_path(split) if self.paths[split] else None
            if path is None:
                continue
            utts = self._utts(split)
            if not FeatureCache.matches(utts, self.fbank, path):  # setup() loads it
                FeatureCache.build(utts, self.fbank, path, workers=max(self.num_workers, 1))

    def setup(self, stage: str | None = None) -> None:
        self.check_tokenizers()  # also where prepare_data did not run (other nodes, direct use)
        self.tokenizer = Tokenizer(self.tokenizer_path)
        if self.tokenizer.vocab_size != self.vocab_size:
            raise ValueError(f"data.vocab_size={self.vocab_size} but tokenizer {self.tokenizer_path} "
                             f"has {self.tokenizer.vocab_size} pieces")
        if self.source_tokenizer_path is not None:
            self.source_tokenizer = Tokenizer(self.source_tokenizer_path)
        if self.transcript_tokenizer_path is not None:
            self.transcript_tokenizer = Tokenizer(self.transcript_tokenizer_path)
            have = self.transcript_tokenizer.vocab_size
            if have != self.transcript_vocab_size:
                raise ValueError(f"data.transcript_vocab_size={self.transcript_vocab_size} but tokenizer "
                                 f"{self.transcript_tokenizer_path} has {have} pieces")
        for split in ("train", "valid", "test"):
            if split in self.sets or not self.paths[split]:
                continue
            utts = self._utts(split)
            if self.source_tokenizer is not None or self.text_only:
                self.sets[split] = TextDataset(utts, self.tokenizer, self.source_tokenizer, self.target_lang,
                                               source=self.paths[split])
                continue
            cache_path = self._cache_path(split)
            cache = None if cache_path is None else FeatureCache.load_or_build(
                utts, self.fbank, cache_path, workers=max(self.num_workers, 1))
            self.sets[split] = SpeechDataset(utts, self.tokenizer, self.fbank, cache,
                                             source=self.paths[split], target_lang=self.target_lang,
                                             transcript_tokenizer=self.transcript_tokenizer)

    def cmvn_stats(self, max_utts: int = 2000) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Sum, sum of squares and frame count over the first ``max_utts`` training utterances."""
        ds = self.sets["train"]
        total = torch.zeros(self.fbank.num_mel_bins, dtype=torch.float64)
        total_sq, count = total.clone(), 0
        for i in range(min(max_utts, len(ds))):
            x = ds[i][0].double()
            total += x.sum(0)
            total_sq += (x**2).sum(0)
            count += x.shape[0]
        return total.float(), total_sq.float(), count

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self.sets[split]
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer and shuffle else (1, 0)
        sampler = BucketBatchSampler(ds.lengths(), self.max_frames, shuffle=shuffle, seed=self.seed,
                                     num_replicas=replicas, rank=rank)
        return DataLoader(ds, batch_sampler=sampler, collate_fn=collate,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        if "test" not in self.sets:
            raise ValueError("no test manifest was given (data.test)")
        return self._loader("test", shuffle=False)
