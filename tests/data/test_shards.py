"""Sharded features: the same items as the in-memory cache, read by byte range; a killed write resumes;
the sampler gives each (rank, worker) its own shards, bounded buffers and equal batch counts."""

import random

import pytest
import torch

from speechkit.data.dataset import FeatureCache, SpeechDataset
from speechkit.data.manifest import load_manifest
from speechkit.data.sampler import ShardBatchSampler
from speechkit.data.shards import ShardedSpeechDataset, ShardError, read_spec, write_shards
from speechkit.features import FbankConfig
from speechkit.tokenizer import train_tokenizer

CFG = FbankConfig()


@pytest.fixture(scope="module")
def sharded(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    manifest = tiny_corpus / "asr" / "train.jsonl"
    spec = write_shards(manifest, out / "train", CFG, shard_mb=0.3, workers=1, progress=False)
    tok = train_tokenizer([u.text for u in load_manifest(manifest)], out / "tok.model", 64)
    return manifest, out / "train", spec, tok


def test_shards_hold_what_the_feature_cache_holds(sharded, tmp_path):
    manifest, folder, spec, tok = sharded
    utts = load_manifest(manifest)
    assert len(spec["shards"]) >= 3 and spec["utts"] == len(utts)
    cache = FeatureCache.build(utts, CFG, tmp_path / "cache.safetensors", workers=1, progress=False)
    mem = SpeechDataset(utts, tok, CFG, cache)
    ds = ShardedSpeechDataset(folder, tok, CFG)
    assert len(ds) == len(mem) and ds.lengths() == mem.lengths()
    assert ds.target_lengths() == mem.target_lengths()
    for i in range(len(ds)):
        (x, y, j), (x0, y0, j0) = ds[i], mem[i]
        assert j == j0 == i and x.dtype == torch.float32
        assert torch.equal(x, x0) and torch.equal(y, y0)
        assert ds.record(i).id == utts[i].id
    assert len(set(ds.shards())) == len(spec["shards"])


def test_long_utterances_are_left_out_and_first_n_kept(sharded):
    _, folder, _, tok = sharded
    full = ShardedSpeechDataset(folder, tok, CFG)
    cut = sorted(full.lengths())[len(full) // 2]
    short = ShardedSpeechDataset(folder, tok, CFG, max_frames_per_utt=cut)
    assert 0 < len(short) < len(full) and max(short.lengths()) <= cut
    assert torch.equal(short[0][0], full[int(short.keep[0])][0])
    assert len(ShardedSpeechDataset(folder, tok, CFG, first=5)) == 5


def test_a_killed_write_resumes_and_a_half_written_folder_is_refused(tiny_corpus, tmp_path):
    manifest = tiny_corpus / "asr" / "train.jsonl"
    out = tmp_path / "s"
    write_shards(manifest, out, CFG, shard_mb=0.3, workers=1, progress=False)
    kept = out / "shard-00000.safetensors"
    stamp = kept.stat().st_mtime_ns
    (out / "shards.json").unlink()  # killed before the end: no shards.json yet
    (out / "shard-00001.safetensors").unlink()
    with pytest.raises(ShardError, match=r"not a shard folder .*speechkit shard"):
        read_spec(out)
    write_shards(manifest, out, CFG, shard_mb=0.3, workers=1, progress=False)
    assert kept.stat().st_mtime_ns == stamp  # done shards are kept
    assert (out / "shard-00001.safetensors").is_file() and read_spec(out)["utts"] > 0
    (out / "shard-00002.safetensors").unlink()
    with pytest.raises(ShardError, match="missing shard-00002.safetensors"):
        read_spec(out)


def test_other_fbank_settings_and_cut_short_shards_are_named(sharded, tmp_path):
    manifest, folder, _, tok = sharded
    with pytest.raises(ShardError, match="written with fbank .* rewrite it"):
        ShardedSpeechDataset(folder, tok, FbankConfig(num_mel_bins=40))
    out = tmp_path / "s"
    write_shards(manifest, out, CFG, shard_mb=0.3, workers=1, progress=False)
    shard = out / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1000])
    ds = ShardedSpeechDataset(out, tok, CFG)
    last = max(i for i in range(len(ds)) if ds.shards()[i] == 0)
    with pytest.raises(ShardError, match="shard-00000.safetensors: cut short"):
        ds[last]


def _sampler(rank, epoch=0, **kw):
    rng = random.Random(3)
    sizes = [5, 40, 12, 33, 8, 21, 17, 26, 9, 30]  # shards of unequal sizes
    shards = [k for k, n in enumerate(sizes) for _ in range(n)]
    lengths = [rng.randint(50, 400) for _ in shards]
    s = ShardBatchSampler(lengths, shards, max_frames=1200, buffer=20, seed=7, num_replicas=2, rank=rank,
                          num_workers=3, **kw)
    s.set_epoch(epoch)
    return s, lengths, shards


def test_shard_sampler_streams_are_per_worker_bounded_and_equal_across_ranks():
    (s0, lengths, shards), (s1, _, _) = _sampler(0), _sampler(1)
    b0, b1 = list(s0), list(s1)
    assert len(b0) == len(b1) == len(s0) > 0 and len(b0) % 3 == 0  # no rank waits for another
    items = [i for b in b0 + b1 for i in b]
    assert len(items) == len(set(items))  # an item at most once per epoch
    assert len(items) >= 0.8 * len(lengths)  # only the streams' tails are dropped
    for b in b0 + b1:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 1200
    # batch j·W + w of a rank comes from worker w's stream; no two streams read the same run of a shard
    read = {}
    for r, batches in enumerate((b0, b1)):
        for j, b in enumerate(batches):
            read.setdefault((r, j % 3), set()).update(b)
    streams = list(read.values())
    assert all(a.isdisjoint(b) for x, a in enumerate(streams) for b in streams[x + 1:])
    # a stream reads its shards one after another: a batch spans at most the shards a 20-item buffer touches
    assert max(len({shards[i] for i in b}) for b in b0 + b1) <= 2 + 20 // 5


def test_shard_sampler_is_deterministic_per_epoch():
    assert list(_sampler(0)[0]) == list(_sampler(0)[0])
    assert list(_sampler(0)[0]) != list(_sampler(0, epoch=1)[0])
    fixed = _sampler(1, shuffle=False)[0]
    assert list(fixed) == list(_sampler(1, epoch=4, shuffle=False)[0])


def test_few_shards_are_split_so_every_stream_reads():
    lengths, shards = [100] * 30, [0] * 20 + [1] * 10  # 2 shards, 2 ranks × 2 workers
    batches = [list(ShardBatchSampler(lengths, shards, 300, buffer=8, seed=1, num_replicas=2, rank=r,
                                      num_workers=2)) for r in (0, 1)]
    assert len(batches[0]) == len(batches[1]) >= 4
