"""Length-bucketing batch sampler with a frames budget, correct under DDP."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


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
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        if self.shuffle:
            key = [n * (1 + rng.uniform(-self.jitter, self.jitter)) for n in self.lengths]
        else:
            key = self.lengths
        order = sorted(range(len(self.lengths)), key=key.__getitem__)
        batches, cur, longest = [], [], 0
        for i in order:
            longest_if = max(longest, self.lengths[i])
            if cur and longest_if * (len(cur) + 1) > self.max_frames:
                batches.append(cur)
                cur, longest_if = [], self.lengths[i]
            cur.append(i)
            longest = longest_if
        if cur:
            batches.append(cur)
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._all_batches()
        usable = len(batches) - len(batches) % self.num_replicas
        yield from batches[self.rank:usable:self.num_replicas]

    def __len__(self) -> int:
        return len(self._all_batches()) // self.num_replicas
