"""The bucketing sampler: frames budget, determinism, and sharding under 2-process DDP (gloo)."""

import os
import random
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from speechkit.data.sampler import BucketBatchSampler

LENGTHS = [random.Random(7).randint(50, 900) for _ in range(503)]


def test_budget_and_coverage_single_process():
    s = BucketBatchSampler(LENGTHS, max_frames=3000, seed=1)
    batches = list(s)
    assert len(batches) == len(s)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(LENGTHS)))  # every utterance exactly once
    for b in batches:
        assert len(b) * max(LENGTHS[i] for i in b) <= 3000 or len(b) == 1
    s.set_epoch(1)
    assert list(s) != batches  # reshuffled per epoch
    s.set_epoch(0)
    assert list(s) == batches  # deterministic


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    result = {}
    for epoch in (0, 1):
        s = BucketBatchSampler(LENGTHS, max_frames=2500, seed=3,
                               num_replicas=dist.get_world_size(), rank=dist.get_rank())
        s.set_epoch(epoch)
        batches = list(s)
        gathered = [None] * world
        dist.all_gather_object(gathered, (len(s), batches))
        result[epoch] = gathered
    if rank == 0:
        torch.save(result, out)
    dist.destroy_process_group()


def test_ddp_two_ranks_disjoint_and_equal_length(tmp_path):
    out = str(tmp_path / "r.pt")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    result = torch.load(out)
    for epoch, ((len0, b0), (len1, b1)) in result.items():
        assert len0 == len1 == len(b0) == len(b1) > 0
        u0 = {i for b in b0 for i in b}
        u1 = {i for b in b1 for i in b}
        assert not u0 & u1, f"epoch {epoch}: ranks share utterances"
        n_all = len(list(BucketBatchSampler(LENGTHS, 2500, seed=3, num_replicas=1)._all_batches()))
        assert len0 == n_all // 2
        assert len(u0 | u1) >= len(LENGTHS) - max(len(b) for b in b0 + b1)  # at most one batch dropped
    assert result[0][0][1] != result[1][0][1]  # new epoch, new batches


def test_a_resumed_epoch_continues_after_the_batches_already_trained():
    from speechkit.data.sampler import ShardBatchSampler

    shards = [i // 40 for i in range(len(LENGTHS))]
    for make in (lambda: BucketBatchSampler(LENGTHS, 3000, seed=1, num_replicas=2, rank=1),
                 lambda: ShardBatchSampler(LENGTHS, shards, 3000, buffer=60, seed=1, num_replicas=2, rank=1,
                                           num_workers=2)):
        s = make()
        s.set_epoch(3)
        full = list(s)
        resumed = make()
        resumed.resume(3, 5)  # a checkpoint after 5 batches of epoch 3
        assert resumed.epoch == 3 and list(resumed) == full[5:]
        assert list(resumed) == full  # once: the next iteration is the whole epoch again
        at_end = make()
        at_end.resume(3, len(full))  # a checkpoint at the end of epoch 3: epoch 4 comes next
        s.set_epoch(4)
        assert at_end.epoch == 4 and list(at_end) == list(s)
