"""Length-bucketing batch sampler with a frames budget, correct under DDP."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator, Sequence

from torch.utils.data import Sampler


def bucket(items: Iterable[int], lengths: Sequence[int], max_frames: int, rng: random.Random | None,
           jitter: float = 0.1) -> list[list[int]]:
    """Cut ``items`` into batches of similar length whose padded size ``len(batch) * longest`` stays within
    ``max_frames`` (a longer single item forms its own batch): sorted by length (jittered by ``rng``'s
    draws, up to ±``jitter``), cut greedily, and with ``rng`` the batch order shuffled."""
    items = list(items)
    key = {i: lengths[i] * (1 + rng.uniform(-jitter, jitter)) for i in items} if rng else \
        {i: lengths[i] for i in items}
    batches, cur, longest = [], [], 0
    for i in sorted(items, key=key.__getitem__):
        longest_if = max(longest, lengths[i])
        if cur and longest_if * (len(cur) + 1) > max_frames:
            batches.append(cur)
            cur, longest_if = [], lengths[i]
        cur.append(i)
        longest = longest_if
    if cur:
        batches.append(cur)
    if rng:
        rng.shuffle(batches)
    return batches


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length utterances whose padded size stays within ``max_frames``.

    Every epoch, all ranks build the *same* list of batches (seeded by ``seed + epoch``):
    utterances are sorted by a jittered length, cut greedily into batches with
    ``len(batch) * max_len <= max_frames``, and the batch order is shuffled. Under DDP
    the list is truncated to a multiple of ``num_replicas`` (at most ``num_replicas - 1``
    batches dropped per epoch, different ones each epoch) and rank ``r`` takes batches
    ``r, r + R, ...``: ranks see disjoint utterances and the same number of batches.

    Args:
        lengths: per-utterance length in frames (what the budget counts).
        max_frames: padded frames per batch; a longer single utterance forms its own batch.
        shuffle: jitter lengths and shuffle batch order (training); False gives a fixed order.
    """

    def __init__(self, lengths: Sequence[int], max_frames: int, shuffle: bool = True,
                 seed: int = 0, num_replicas: int = 1, rank: int = 0, jitter: float = 0.1):
        if max_frames <= 0:
            raise ValueError(f"max_frames must be positive, got {max_frames}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        self.lengths, self.max_frames = list(lengths), max_frames
        self.shuffle, self.seed, self.jitter = shuffle, seed, jitter
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch, self._skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, batches: int) -> None:
        """Continue epoch ``epoch`` after its first ``batches`` batches (a run resumed mid-epoch: the batch
        order is the same function of seed and epoch, so the next iteration starts where it stopped; at
        the epoch's end, the next epoch starts)."""
        self.epoch, self._skip = (epoch + 1, 0) if batches >= len(self) else (epoch, batches)

    def _start(self) -> int:
        """The batches of this iteration to leave out (``resume``; once)."""
        start, self._skip = self._skip, 0
        return start

    def _all_batches(self) -> list[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        return bucket(range(len(self.lengths)), self.lengths, self.max_frames, rng if self.shuffle else None,
                      self.jitter)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._all_batches()
        usable = len(batches) - len(batches) % self.num_replicas
        yield from batches[self.rank:usable:self.num_replicas][self._start():]

    def __len__(self) -> int:
        return len(self._all_batches()) // self.num_replicas


class ShardBatchSampler(BucketBatchSampler):
    """``BucketBatchSampler``'s batches for sharded data (``shards.ShardedSpeechDataset``): every DataLoader
    worker of every rank reads its own shards, one after another, and shuffling and bucketing happen inside a
    bounded buffer, so what is read and held at a time does not grow with the corpus.

    Every epoch (seeded by ``seed + epoch``, the same on all ranks), the shards are shuffled and dealt to the
    ``num_replicas × max(num_workers, 1)`` streams, each to the stream with the fewest frames so far (so the
    streams come out within about one shard of each other; with fewer than two shards per stream, equal
    runs of each shard are dealt instead); each stream reads its shards' items in order
    into a buffer of ``buffer`` items, which is cut into batches (``bucket``: jittered length sort, the
    frames budget, shuffled) each time it fills. Every stream is cut to the shortest stream's batch count
    (the few batches past it are dropped for this epoch: different ones each epoch), and a rank's batches
    interleave its workers' streams, batch ``i`` from stream ``i mod W``: the order in which a DataLoader
    hands batches to its W workers, so each worker reads only its own shards. Ranks get the same number of
    batches (no rank waits at an epoch end).

    Args:
        lengths: per item its frames; shards: per item its shard; max_frames, shuffle, seed, num_replicas,
            rank, jitter: as ``BucketBatchSampler``'s.
        buffer: items per shuffling buffer (e.g. two shards' worth).
        num_workers: the DataLoader's workers (0: the main process reads).
    """

    def __init__(self, lengths: Sequence[int], shards: Sequence[int], max_frames: int, buffer: int = 2000,
                 shuffle: bool = True, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 num_workers: int = 0, jitter: float = 0.1):
        super().__init__(lengths, max_frames, shuffle, seed, num_replicas, rank, jitter)
        if buffer <= 0:
            raise ValueError(f"buffer must be positive, got {buffer}")
        self.buffer, self.workers = buffer, max(num_workers, 1)
        self._made: tuple[int | None, list] = (None, [])  # (epoch, its streams)
        members: dict[int, list[int]] = {}
        for i, k in enumerate(shards):
            members.setdefault(k, []).append(i)
        # what is dealt: the shards, or with fewer than two per stream, equal runs of each (read in order too)
        parts = -(-2 * num_replicas * self.workers // max(len(members), 1))
        self.members = [m[j * len(m) // parts:(j + 1) * len(m) // parts] for m in members.values()
                        for j in range(parts)]
        self.frames = [sum(self.lengths[i] for i in m) for m in self.members]  # per dealt unit

    def streams(self) -> list[list[list[int]]]:
        """Per stream (rank r's worker w is stream ``r · W + w``) its batches this epoch, cut to equal
        counts."""
        if self._made[0] == self.epoch:
            return self._made[1]
        rng = random.Random(self.seed + self.epoch)
        cut = lambda items: bucket(items, self.lengths, self.max_frames, rng if self.shuffle else None,  # noqa: E731
                                   self.jitter)
        order = list(range(len(self.members)))
        if self.shuffle:
            rng.shuffle(order)
        n = self.num_replicas * self.workers
        load, dealt = [0] * n, [[] for _ in range(n)]
        for k in order:
            s = min(range(n), key=load.__getitem__)
            dealt[s].append(k)
            load[s] += self.frames[k]
        out = []
        for shards in dealt:
            batches, buf = [], []
            for k in shards:
                for i in self.members[k]:
                    buf.append(i)
                    if len(buf) >= self.buffer:
                        batches += cut(buf)
                        buf = []
            out.append(batches + (cut(buf) if buf else []))
        count = min(len(b) for b in out)
        self._made = (self.epoch, [b[:count] for b in out])
        return self._made[1]

    def __iter__(self) -> Iterator[list[int]]:
        streams = self.streams()
        mine = streams[self.rank * self.workers:(self.rank + 1) * self.workers]
        order = (stream[j] for j in range(len(mine[0])) for stream in mine)
        yield from itertools.islice(order, self._start(), None)

    def __len__(self) -> int:
        return len(self.streams()[0]) * self.workers
