"""Sharded features: a corpus prepared for training past one machine, read with memory that does not grow
with it.

A shard folder (``speechkit shard MANIFEST --out DIR``) holds

- ``shard-NNNNN.safetensors``: fp16 fbank features of consecutive utterances, concatenated along time
  (``feats`` (T, F)) with their ``offsets`` (n + 1,) and ids (metadata), about ``shard_mb`` each;
- ``index.safetensors``: one row per utterance, as flat arrays (no Python object per utterance):
  frames, shard, first row in the shard, and the manifest record (JSON bytes);
- ``shards.json``: the format, the fbank settings, the shards (file, utterances, frames), the source.

``ShardedSpeechDataset`` reads one utterance's features by byte range from its shard (``os.pread``: the
page cache holds them, not the process), and its record (from the index file) and target only when asked
for. So a rank and its loader workers hold 24 bytes per utterance (frames, shard, row, record offset) and
the batches in flight, whatever the corpus size. ``sampler.ShardBatchSampler`` gives each (rank, worker)
its own shards to read in order, with bucketing and shuffling inside a bounded buffer.

Why safetensors shards read by byte range, and not tar shards (WebDataset, Lhotse Shar): a tar shard
must be read from its start and decoded whole, so shuffling needs a buffer of decoded utterances in
every worker; a byte range is read directly, so the buffer holds indices only, the features are read
once, when their batch is made, and the sampler, not the reader, decides the order (the same bucketing
as the in-memory cache). The files stay a standard format any tool reads (``safetensors.safe_open``).
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import Dataset

from ..audio import resample
from ..errors import SpeechkitError
from ..features import FbankConfig, fbank
from ..files import atomic_path, write_text
from ..tokenizer import Tokenizer
from .dataset import FeatureCache, target_texts, tokenize
from .lhotse_io import lhotse_kind, shar_records, shar_waves
from .manifest import Utterance, load_manifest

KIND, VERSION = "speechkit-shards", 1
INDEX, SPEC = "index.safetensors", "shards.json"


class ShardError(SpeechkitError, ValueError):
    """A shard folder is missing, incomplete or was written with other settings (the message names it)."""


def is_shards(path: str | Path) -> bool:
    """Whether ``path`` is a shard folder (holds ``shards.json``)."""
    return (Path(path) / SPEC).is_file()


def plan_shards(utts: list[Utterance], cfg: FbankConfig, shard_mb: float) -> list[tuple[int, int]]:
    """Cut the utterances, in manifest order, into runs of about ``shard_mb`` MB of fp16 features (from
    their durations; at least one utterance each) → [(first, end)] per shard."""
    per_s = 1000 / cfg.frame_shift_ms * cfg.num_mel_bins * 2 / 1e6  # MB of features per second of audio
    cuts, first, size = [], 0, 0.0
    for i, u in enumerate(utts):
        size += (u.duration or 10.0) * per_s
        if size >= shard_mb:
            cuts.append((first, i + 1))
            first, size = i + 1, 0.0
    if first < len(utts):
        cuts.append((first, len(utts)))
    return cuts


def write_shards(manifest: str | Path, out: str | Path, cfg: FbankConfig | None = None, shard_mb: float = 128,
                 workers: int = 2, progress: bool = True) -> dict:
    """Featurise a manifest (speechkit or Lhotse; or a Lhotse Shar folder, its audio read from its tars
    through lhotse) into a shard folder ``out`` → its ``shards.json`` content.

    Every shard is written atomically, and a shard already there with the same utterances and settings is
    kept: a killed run continues where it stopped. The index and ``shards.json`` come last, so a folder
    without ``shards.json`` is never read as complete.
    """
    out, cfg = Path(out), cfg or FbankConfig()
    shar = lhotse_kind(manifest) == "shar"  # a Lhotse Shar folder: audio read from its tars by lhotse
    utts = [Utterance(**r) for r in shar_records(manifest)] if shar else load_manifest(manifest, True)
    waves = shar_waves(manifest) if shar else None
    if not utts:
        raise ShardError(f"{manifest}: no utterances to shard")
    out.mkdir(parents=True, exist_ok=True)
    cuts = plan_shards(utts, cfg, shard_mb)
    shards, lengths, shard_of, rows = [], [], [], []
    t0 = time.time()
    for k, (a, b) in enumerate(cuts):
        name = f"shard-{k:05d}.safetensors"  # a shard is a feature cache of its utterances
        part = utts[a:b]
        if FeatureCache.matches(part, cfg, out / name):  # done before a kill: its offsets are read
            with safe_open(str(out / name), "pt") as f:
                n = f.get_tensor("offsets")
            for _ in part if waves is not None else ():
                next(waves)
        elif waves is not None:
            feats = [_shar_features(u, next(waves), cfg) for u in part]
            n = FeatureCache.write(part, cfg, feats, out / name).offsets
        else:
            n = FeatureCache.build(part, cfg, out / name, workers, progress=False).offsets
        sizes = (n[1:] - n[:-1]).tolist()
        shards.append({"file": name, "utts": len(part), "frames": int(n[-1])})
        lengths += sizes
        shard_of += [k] * len(part)
        rows += n[:-1].tolist()
        if progress:
            print(f"\r  shards {k + 1}/{len(cuts)} ({b}/{len(utts)} utterances, {time.time() - t0:.0f}s)",
                  end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    records = [u.to_json().encode() for u in utts]
    bounds = np.cumsum([0] + [len(r) for r in records])
    with atomic_path(out / INDEX) as tmp:
        save_file({"frames": torch.tensor(lengths, dtype=torch.int32),
                   "shard": torch.tensor(shard_of, dtype=torch.int32),
                   "row": torch.tensor(rows, dtype=torch.int64),
                   "record_bounds": torch.from_numpy(bounds.astype(np.int64)),
                   "records": torch.frombuffer(bytearray(b"".join(records)), dtype=torch.uint8)}, str(tmp))
    spec = {"kind": KIND, "version": VERSION, "fbank": cfg.to_dict(), "utts": len(utts),
            "frames": int(sum(lengths)), "shards": shards, "source": str(manifest)}
    write_text(out / SPEC, json.dumps(spec, indent=1) + "\n")
    return spec


def _shar_features(u: Utterance, item: tuple[str, np.ndarray, int], cfg: FbankConfig) -> Tensor:
    sid, wave, rate = item
    if sid != u.id:
        raise ShardError(f"Lhotse Shar: supervision {sid!r} came where {u.id!r} was listed (the cut "
                         "manifests and the audio tars disagree)")
    try:
        return fbank(resample(torch.from_numpy(wave).float(), rate, cfg.sample_rate), cfg)
    except ValueError as e:
        raise ShardError(f"Lhotse Shar: supervision {u.id!r}: {e}") from None


def read_spec(path: str | Path) -> dict:
    """A shard folder's ``shards.json``, checked (``ShardError`` naming the folder and what is wrong)."""
    path = Path(path)
    try:
        spec = json.loads((path / SPEC).read_text())
    except OSError as e:
        raise ShardError(f"{path}: not a shard folder ({SPEC}: {e.strerror}); write one with `speechkit "
                         "shard MANIFEST --out DIR`") from None
    except json.JSONDecodeError as e:
        raise ShardError(f"{path / SPEC}:{e.lineno}:{e.colno}: {e.msg}") from None
    if spec.get("kind") != KIND or spec.get("version") != VERSION:
        raise ShardError(f"{path / SPEC}: kind/version {spec.get('kind')!r}/{spec.get('version')!r}, "
                         f"expected {KIND!r}/{VERSION}")
    missing = [s["file"] for s in spec["shards"] if not (path / s["file"]).is_file()]
    if missing or not (path / INDEX).is_file():
        raise ShardError(f"{path}: missing {', '.join((missing or [INDEX])[:3])}; rewrite it with `speechkit "
                         "shard`")
    return spec


def _data_start(path: Path, name: str, dtype: str, shape: list[int]) -> int:
    """Byte offset of tensor ``name``'s data in a safetensors file (8-byte header size, JSON header, data),
    checked to be ``dtype`` with trailing ``shape``."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        info = json.loads(f.read(n))[name]
    if info["dtype"] != dtype or info["shape"][1:] != shape:
        raise ShardError(f"{path}: {name} is {info['dtype']} {info['shape']}, expected {dtype} (…, {shape})")
    return 8 + n + info["data_offsets"][0]


def _pread(fd: int, n: int, at: int, path: Path, what) -> bytes:
    """``n`` bytes of ``path`` at ``at``; a ``ShardError`` naming the file and ``what()`` if cut short."""
    data = os.pread(fd, n, at)
    if len(data) != n:
        raise ShardError(f"{path}: cut short ({what()}); rewrite it with `speechkit shard`")
    return data


class ShardedSpeechDataset(Dataset):
    """Items are (features (T, F), token ids (U,), index[, transcript ids (S,)]) like ``SpeechDataset``'s,
    read from a shard folder: features by byte range, targets tokenised when asked for.

    Args:
        path: the shard folder; tokenizer, target_lang, transcript_tokenizer: as ``SpeechDataset``'s.
        cfg: the fbank settings the model reads (must be the shards').
        max_frames_per_utt: utterances longer than this are left out (None: none).
        first: only the first N utterances (e.g. ``max_valid_utts``; None: all).
    """

    def __init__(self, path: str | Path, tokenizer: Tokenizer, cfg: FbankConfig,
                 target_lang: str | None = None, transcript_tokenizer: Tokenizer | None = None,
                 max_frames_per_utt: int | None = None, first: int | None = None):
        self.path, self.tok, self.cfg = Path(path), tokenizer, cfg
        self.spec = read_spec(path)
        if self.spec["fbank"] != cfg.to_dict():
            raise ShardError(f"{self.path}: written with fbank {self.spec['fbank']}, but the data module "
                             f"reads {cfg.to_dict()}; rewrite it with `speechkit shard` (--num-mel-bins)")
        with safe_open(str(self.path / INDEX), "np") as f:  # the records stay in the file (``record``)
            frames, shard, row, self.bounds = (f.get_tensor(k) for k in ("frames", "shard", "row",
                                                                           "record_bounds"))
        keep = np.arange(len(frames)) if max_frames_per_utt is None else \
            np.flatnonzero(frames <= max_frames_per_utt)
        if len(keep) < len(frames):
            print(f"{self.path}: skipping {len(frames) - len(keep)} utterances longer than "
                  f"{max_frames_per_utt} frames", file=sys.stderr)
        self.keep = keep[:first]  # dataset index → index row
        keep = self.keep
        self.frames, self.shard, self.row = frames[keep], shard[keep], row[keep]
        self._records = _data_start(self.path / INDEX, "records", "U8", [])
        self.target_lang, self.transcript_tok = target_lang, transcript_tokenizer
        self.files = [self.path / s["file"] for s in self.spec["shards"]] + [self.path / INDEX]
        self.width = cfg.num_mel_bins
        self._base: dict[int, int] = {}
        self._fds: dict[int, int] = {}
        self.source = str(self.path)
        sample = [self.record(i) for i in range(min(len(self), 2000))]  # the <unk> warning, on a sample
        tokenize(target_texts(sample, target_lang, self.source), tokenizer, self.source,
                 [u.id for u in sample])

    def __getstate__(self):  # loader workers open their own files
        return {**self.__dict__, "_fds": {}}

    def __len__(self) -> int:
        return len(self.keep)

    def lengths(self) -> list[int]:
        return self.frames.tolist()

    def target_lengths(self) -> list[int]:
        """Tokens per target (every record read and tokenised: a pass over the index, no features)."""
        return [len(self.target(i)) for i in range(len(self))]

    def target(self, i: int, u: Utterance | None = None) -> Tensor:
        """Item ``i``'s target token ids (U,) (``u``: its record, when already read)."""
        (text,) = target_texts([u or self.record(i)], self.target_lang, self.source)
        return torch.tensor(self.tok.encode(text), dtype=torch.long)

    def shards(self) -> list[int]:
        """The shard of each item (``ShardBatchSampler``)."""
        return self.shard.tolist()

    def _fd(self, k: int) -> int:
        """An open descriptor of file ``k`` (a shard, or the index last); a few stay open per process."""
        fd = self._fds.get(k)
        if fd is None:
            if len(self._fds) >= 16:  # a worker reads a few shards at a time: close the oldest
                os.close(self._fds.pop(next(iter(self._fds))))
            fd = self._fds[k] = os.open(self.files[k], os.O_RDONLY)
        return fd

    def record(self, i: int) -> Utterance:
        """Item ``i``'s manifest record (read from the index file)."""
        j, k = int(self.keep[i]), len(self.files) - 1
        a, b = int(self.bounds[j]), int(self.bounds[j + 1])
        data = _pread(self._fd(k), b - a, self._records + a, self.files[k], lambda: f"record {j}")
        return Utterance(**json.loads(data))

    def features(self, i: int) -> Tensor:
        """Item ``i``'s features (T, F), float32, read from its shard."""
        k = int(self.shard[i])
        if k not in self._base:
            self._base[k] = _data_start(self.files[k], "feats", "F16", [self.width])
        n, row_bytes = int(self.frames[i]), self.width * 2
        data = _pread(self._fd(k), n * row_bytes, self._base[k] + int(self.row[i]) * row_bytes, self.files[k],
                      lambda: f"utterance {self.record(i).id!r}")
        return torch.from_numpy(np.frombuffer(data, np.float16).reshape(n, self.width).astype(np.float32))

    def __getitem__(self, i: int):
        u = self.record(i)  # read once: the target and the transcript come from it
        if self.transcript_tok is not None:
            (tr,) = target_texts([u], None, self.source)
            return self.features(i), self.target(i, u), i, torch.tensor(self.transcript_tok.encode(tr))
        return self.features(i), self.target(i, u), i

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass
