"""Lightning data modules over manifests, one per mode, on one base (``ManifestDataModule``: splits, target
tokenizer, bucketed loaders):

- ``SpeechDataModule``: speech → text (ASR; ST with ``target_lang``; STAST with ``transcript_tokenizer``);
- ``TextDataModule``: text → text (MT), the inputs are the transcripts in ``source_tokenizer``'s pieces;
- ``LMDataModule``: text only (language models), the inputs are the targets themselves.

Configs name one by ``class_path`` (e.g. ``speechkit.data.datamodule.TextDataModule``) with ``init_args``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ..features import FbankConfig
from ..tokenizer import Tokenizer, TokenizerNotFoundError
from .dataset import FeatureCache, SpeechDataset, TextDataset, collate, manifest_tokenizer
from .manifest import Utterance, load_manifest, load_texts
from .sampler import BucketBatchSampler, ShardBatchSampler
from .shards import ShardedSpeechDataset, is_shards, read_spec

SPLITS = ("train", "valid", "test")


class ManifestDataModule(L.LightningDataModule):
    """Manifests → bucketed batches (``dataset.collate``) of inputs and target token ids; each mode (a
    subclass) says what the inputs are (``input_info``, ``_dataset``) and which more tokenizers it needs.

    Args (of every mode; a subclass takes those after ``tokenizer`` as keywords):
        train, valid, test: JSONL manifests (test optional).
        tokenizer: the interface (target) sentencepiece model of ``vocab_size`` pieces (``speechkit
            tokenizer`` makes one); a missing file is an error (``TokenizerNotFoundError``) unless
            ``train_tokenizers``.
        target_lang: None: targets are the transcripts (``text``: ASR, LM); a language code: targets
            are the ``translation[target_lang]`` of each utterance (MT, ST).
        max_frames: budget per training batch in padded input frames (speech) or input tokens (text).
        max_valid_utts: validate on the first N utterances only (None: all).
        num_workers: DataLoader (and feature cache) workers; seed: of the shuffled batch order.
        pin_memory: collate into page-locked memory, so batches go to a GPU while it computes (None: when
            the trainer runs on a GPU); prefetch_factor: batches each worker prepares ahead.
        shuffle_buffer: items per shuffling buffer when a split is a shard folder (``ShardBatchSampler``).
        train_tokenizers: a missing tokenizer file (this one or a mode's) is trained in ``prepare_data``
            on the training manifest (``dataset.manifest_tokenizer``: the normalised targets, resp.
            transcripts). False (the default): a missing file raises ``TokenizerNotFoundError`` naming
            the key and path, so that a mistyped path never silently trains a vocabulary no brick
            speaks. Set it in configs whose tokenizers no earlier step makes (``speechkit demo``, locale).
    """

    source_tokenizer: Tokenizer | None = None  # the text inputs' vocabulary (TextDataModule)
    transcript_tokenizer: Tokenizer | None = None  # STAST's transcript vocabulary (SpeechDataModule)

    def __init__(self, train: str, valid: str, tokenizer: str, vocab_size: int = 256, test: str | None = None,
                 target_lang: str | None = None, max_frames: int = 20000, max_valid_utts: int | None = None,
                 num_workers: int = 0, seed: int = 0, train_tokenizers: bool = False,
                 pin_memory: bool | None = None, prefetch_factor: int | None = None,
                 shuffle_buffer: int = 2000):
        super().__init__()
        self.paths = {"train": train, "valid": valid, "test": test}
        self.tokenizer_path, self.vocab_size = Path(tokenizer), vocab_size
        self.target_lang, self.train_tokenizers = target_lang, train_tokenizers
        self.max_frames, self.max_valid_utts = max_frames, max_valid_utts
        self.num_workers, self.seed = num_workers, seed
        self.pin_memory, self.prefetch_factor = pin_memory, prefetch_factor
        self.shuffle_buffer = shuffle_buffer
        self.tokenizer: Tokenizer | None = None
        self.sets: dict[str, Dataset] = {}

    # ---------------------------------------------------------------- what a mode defines

    def input_info(self) -> dict:
        """What the model reads, for a brick's interface.json (``kind`` and its settings)."""
        raise NotImplementedError

    def _dataset(self, split: str, utts: list[Utterance]) -> Dataset:
        """The dataset of one split's utterances (items as ``dataset.collate`` takes them)."""
        raise NotImplementedError

    def _read(self, split: str) -> list[Utterance]:
        """The utterances of ``split``'s manifest (audio not required)."""
        return load_manifest(self.paths[split])

    def _tokenizer_specs(self) -> list[tuple[str, Path, int, str | None]]:
        """(config key, path, pieces, target language) of each tokenizer; a mode adds its own, trained on
        the transcripts (language None)."""
        return [("tokenizer", self.tokenizer_path, self.vocab_size, self.target_lang)]

    def _load_tokenizers(self) -> None:
        """Load a mode's own tokenizers (``setup``, after the target one)."""

    # ---------------------------------------------------------------- shared

    def _utts(self, split: str) -> list[Utterance]:
        utts = self._read(split)
        return utts[: self.max_valid_utts] if split == "valid" and self.max_valid_utts else utts

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
        """Check (with ``train_tokenizers``: train) the tokenizers (rank 0 only)."""
        self.check_tokenizers()
        for key, path, size, lang in self._tokenizer_specs():
            if not path.is_file():
                print(f"training {key} ({size} pieces) → {path}", file=sys.stderr)
                train = self.paths["train"]  # a shard folder: the manifest it was written from
                train = read_spec(train)["source"] if is_shards(train) else train
                manifest_tokenizer(train, path, size, lang)

    def setup(self, stage: str | None = None) -> None:
        self.check_tokenizers()  # also where prepare_data did not run (other nodes, direct use)
        self.tokenizer = _sized_tokenizer(self.tokenizer_path, "vocab_size", self.vocab_size)
        self._load_tokenizers()
        for split in SPLITS:
            if split not in self.sets and self.paths[split]:
                self.sets[split] = self._dataset(split, self._utts(split))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self.sets[split]
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer and shuffle else (1, 0)
        workers = self.num_workers
        if isinstance(ds, ShardedSpeechDataset):  # each worker reads its own shards in order
            sampler = ShardBatchSampler(ds.lengths(), ds.shards(), self.max_frames, self.shuffle_buffer,
                                        shuffle, self.seed, replicas, rank, workers)
        else:
            sampler = BucketBatchSampler(ds.lengths(), self.max_frames, shuffle=shuffle, seed=self.seed,
                                         num_replicas=replicas, rank=rank)
        pin = self.pin_memory
        if pin is None:
            pin = trainer is not None and trainer.strategy.root_device.type == "cuda"
        kwargs = dict(batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                      persistent_workers=workers > 0, pin_memory=pin,
                      prefetch_factor=self.prefetch_factor if workers else None)
        if shuffle and trainer is not None:  # training: Lightning checkpoints where the epoch is
            loop = trainer.fit_loop.epoch_loop  # (read at each checkpoint)
            return ResumableLoader(ds, progress=lambda: (trainer.current_epoch,
                                                         loop.batch_progress.current.processed), **kwargs)
        return DataLoader(ds, **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        if "test" not in self.sets:
            raise ValueError("no test manifest was given (data.test)")
        return self._loader("test", shuffle=False)


class ResumableLoader(DataLoader):
    """A training DataLoader that Lightning checkpoints (``state_dict``): the epoch and how many of its
    batches were trained (``progress()`` → (epoch, batches)). A run resumed from a checkpoint taken
    mid-epoch hands them to its batch sampler (``resume``), whose order is a function of seed and epoch,
    so the epoch continues after the batches already trained instead of starting over."""

    def __init__(self, dataset, progress, **kwargs):
        super().__init__(dataset, **kwargs)
        self._progress = progress

    def state_dict(self) -> dict:
        epoch, batches = self._progress()
        return {"epoch": int(epoch), "batches": int(batches)}

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.resume(state["epoch"], state["batches"])


def _sized_tokenizer(path: Path, key: str, size: int) -> Tokenizer:
    """The tokenizer at ``path``; a ValueError naming the config key ``data.<key>`` unless it has ``size``
    pieces."""
    tok = Tokenizer(path)
    if tok.vocab_size != size:
        raise ValueError(f"data.{key}={size} but tokenizer {path} has {tok.vocab_size} pieces")
    return tok


class SpeechDataModule(ManifestDataModule):
    """Speech → text (ASR; ST with ``target_lang``; STAST with ``transcript_tokenizer``): the inputs are
    fbank features of the audio (B, T, F), computed on the fly or read from a feature cache.

    Any split may be a shard folder (``speechkit shard MANIFEST --out DIR``: features written in shards,
    read by byte range with memory that does not grow with the corpus, ``data.shards``) instead of a
    manifest; its features are not cached again.

    Args:
        train, valid, tokenizer, **common: ``ManifestDataModule``'s arguments.
        cache_dir: where feature caches go ("auto": ``<manifest dir>/fbank``; None: no cache,
            features computed on the fly in the workers).
        max_duration: training utterances longer than this (seconds) are skipped (reported).
        num_mel_bins: fbank channels (F).
        transcript_tokenizer: batches also carry the transcripts encoded with this sentencepiece model
            of ``transcript_vocab_size`` pieces (``transcripts`` (B, S), ``transcript_lens`` (B,);
            STAST's CTC targets and MT inputs).
    """

    def __init__(self, train: str, valid: str, tokenizer: str, cache_dir: str | None = "auto",
                 max_duration: float = 20.0, num_mel_bins: int = 80, transcript_tokenizer: str | None = None,
                 transcript_vocab_size: int = 128, **common):
        super().__init__(train, valid, tokenizer, **common)
        self.cache_dir, self.max_duration = cache_dir, max_duration
        self.fbank = FbankConfig(num_mel_bins=num_mel_bins)
        self.transcript_tokenizer_path = Path(transcript_tokenizer) if transcript_tokenizer else None
        self.transcript_vocab_size = transcript_vocab_size

    def input_info(self) -> dict:
        return {"kind": "fbank", **self.fbank.to_dict()}

    def _tokenizer_specs(self) -> list[tuple[str, Path, int, str | None]]:
        specs = super()._tokenizer_specs()
        if self.transcript_tokenizer_path is not None:
            specs.append(("transcript_tokenizer", self.transcript_tokenizer_path, self.transcript_vocab_size,
                          None))
        return specs

    def _load_tokenizers(self) -> None:
        if self.transcript_tokenizer_path is not None:
            self.transcript_tokenizer = _sized_tokenizer(
                self.transcript_tokenizer_path, "transcript_vocab_size", self.transcript_vocab_size)

    def _read(self, split: str) -> list[Utterance]:
        path = self.paths[split]
        if is_shards(path):  # the dataset reads its own index
            return []
        utts = load_manifest(path, require_audio=True)
        if split == "train":
            keep = [u for u in utts if (u.duration or 0) <= self.max_duration]
            if len(keep) < len(utts):
                print(f"{path}: skipping {len(utts) - len(keep)} utterances longer than "
                      f"{self.max_duration}s", file=sys.stderr)
            utts = keep
        return utts

    def _cache_path(self, split: str) -> Path | None:
        if self.cache_dir is None or is_shards(self.paths[split]):
            return None
        path = Path(self.paths[split])
        root = path.parent / "fbank" if self.cache_dir == "auto" else Path(self.cache_dir)
        suffix = f"-first{self.max_valid_utts}" if split == "valid" and self.max_valid_utts else ""
        return root / f"{path.stem}{suffix}-{self.fbank.num_mel_bins}.safetensors"

    def prepare_data(self) -> None:
        """Check (with ``train_tokenizers``: train) the tokenizers, build feature caches (rank 0 only)."""
        super().prepare_data()
        for split in SPLITS:
            path = self._cache_path(split) if self.paths[split] else None
            if path is None:
                continue
            utts = self._utts(split)
            if not FeatureCache.matches(utts, self.fbank, path):  # setup() loads it
                FeatureCache.build(utts, self.fbank, path, workers=max(self.num_workers, 1))

    def _dataset(self, split: str, utts: list[Utterance]) -> SpeechDataset | ShardedSpeechDataset:
        if is_shards(self.paths[split]):
            longest = int(self.max_duration * 1000 / self.fbank.frame_shift_ms) if split == "train" else None
            first = self.max_valid_utts if split == "valid" else None
            return ShardedSpeechDataset(self.paths[split], self.tokenizer, self.fbank, self.target_lang,
                                        self.transcript_tokenizer, longest, first)
        cache_path = self._cache_path(split)
        cache = None if cache_path is None else FeatureCache.load_or_build(
            utts, self.fbank, cache_path, workers=max(self.num_workers, 1))
        return SpeechDataset(utts, self.tokenizer, self.fbank, cache, source=self.paths[split],
                             target_lang=self.target_lang, transcript_tokenizer=self.transcript_tokenizer)

    def cmvn_stats(self, max_utts: int = 2000) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Sum (F,), sum of squares (F,) and frame count over the first ``max_utts`` training utterances."""
        ds = self.sets["train"]
        total = torch.zeros(self.fbank.num_mel_bins, dtype=torch.float64)
        total_sq, count = total.clone(), 0
        for i in range(min(max_utts, len(ds))):
            x = ds[i][0].double()
            total += x.sum(0)
            total_sq += (x**2).sum(0)
            count += x.shape[0]
        return total.float(), total_sq.float(), count


class TextDataModule(ManifestDataModule):
    """Text → text (MT): the inputs are the utterances' ``text`` (normalised) in ``source_tokenizer``'s
    pieces (B, T); the targets are their ``target_lang`` translations.

    Args:
        train, valid, tokenizer, **common: ``ManifestDataModule``'s arguments.
        source_tokenizer: the source sentencepiece model; ``source_vocab_size``: the pieces a missing one
            is trained with (``train_tokenizers``).
    """

    def __init__(self, train: str, valid: str, tokenizer: str, source_tokenizer: str,
                 source_vocab_size: int = 512, **common):
        super().__init__(train, valid, tokenizer, **common)
        self.source_tokenizer_path, self.source_vocab_size = Path(source_tokenizer), source_vocab_size

    def input_info(self) -> dict:
        return {"kind": "text", **self.source_tokenizer.info()}

    def _tokenizer_specs(self) -> list[tuple[str, Path, int, str | None]]:
        return [*super()._tokenizer_specs(),
                ("source_tokenizer", self.source_tokenizer_path, self.source_vocab_size, None)]

    def _load_tokenizers(self) -> None:
        self.source_tokenizer = Tokenizer(self.source_tokenizer_path)

    def _dataset(self, split: str, utts: list[Utterance]) -> TextDataset:
        return TextDataset(utts, self.tokenizer, self.source_tokenizer, self.target_lang,
                           source=self.paths[split])


class LMDataModule(ManifestDataModule):
    """Text only (language models): the splits are JSONL manifests or plain text files (one sentence per
    line, ``manifest.load_texts``), no audio is read, and the inputs are the target token ids themselves.
    Takes ``ManifestDataModule``'s arguments."""

    def input_info(self) -> dict:
        return {"kind": "none"}

    def _read(self, split: str) -> list[Utterance]:
        return load_texts(self.paths[split])

    def _dataset(self, split: str, utts: list[Utterance]) -> TextDataset:
        return TextDataset(utts, self.tokenizer, None, self.target_lang, source=self.paths[split])
