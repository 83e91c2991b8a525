"""CudaGraphed: an encoder replayed from CUDA graphs per shape bucket gives the eager outputs."""

import pytest
import torch
from conftest import tiny_transducer

from speechkit.nn.device import CudaGraphed


def _batch(device, lens=(203, 150, 97), seed=0):
    torch.manual_seed(seed)
    x = torch.randn(len(lens), max(lens), 80, device=device)
    return x, torch.tensor(lens, device=device)


def test_buckets_and_padding_leave_the_valid_outputs_unchanged():
    """What a replay computes (the input padded to its bucket, the first rows kept) equals the eager
    output on every valid frame: checked on the CPU, where the wrapper itself runs eagerly."""
    enc = tiny_transducer(frontend="conv").encoder.eval()
    graphed = CudaGraphed(enc, frame_buckets=(64, 256), batch_buckets=(1, 4))
    assert graphed.bucket(3, 203) == (4, 256) and graphed.bucket(1, 64) == (1, 64)
    assert graphed.bucket(5, 10) is None and graphed.bucket(1, 300) is None  # beyond: eager
    assert graphed.input_dim == enc.input_dim  # the module's attributes
    x, lens = _batch("cpu")
    with torch.no_grad():
        eager = enc(x, lens)
        padded = CudaGraphed.rows(enc(*CudaGraphed.pad(x, lens, 4, 256)), 3)
        assert torch.equal(graphed(x, lens).hidden, eager.hidden)  # CPU input: the module itself
    assert padded.hidden.shape[0] == 3 and torch.equal(padded.lengths, eager.lengths)
    for i, n in enumerate(eager.lengths.tolist()):
        torch.testing.assert_close(padded.hidden[i, :n], eager.hidden[i, :n], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(padded.logits[i, :n], eager.logits[i, :n], rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_replays_equal_the_eager_encoder_on_cuda():
    enc = tiny_transducer(frontend="conv").encoder.eval().cuda()
    graphed = CudaGraphed(enc, frame_buckets=(256,), batch_buckets=(4,))
    with torch.no_grad():
        for seed, lens in enumerate([(203, 150, 97), (250, 31), (203, 150, 97)]):  # two shapes, one bucket
            x, n = _batch("cuda", lens, seed)
            eager, replay = enc(x, n), graphed(x, n)
            for i, m in enumerate(eager.lengths.tolist()):
                torch.testing.assert_close(replay.hidden[i, :m], eager.hidden[i, :m], rtol=1e-4, atol=1e-4)
    assert len(graphed.graphs) == 1  # captured once, replayed three times
