"""The torchaudio adapter of benchmarks/streaming.py computes speechkit's transducer exactly."""

import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import tiny_transducer
from torchaudio.models.rnnt_decoder import _batch_state, _slice_state

from speechkit.lego.interface import Encoded
from speechkit.lego.transducer import LSTMPredictor, StatelessPredictor

_spec = importlib.util.spec_from_file_location(
    "bench_streaming", Path(__file__).parents[1] / "benchmarks" / "streaming.py")
streaming = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(streaming)


@pytest.mark.parametrize("predictor", ["stateless2", "stateless3", "lstm2"])
@torch.no_grad()
def test_torchaudio_adapter_matches_speechkit(predictor):
    v, d = 12, 16
    model = tiny_transducer(v, d)
    torch.manual_seed(1)
    model.predictor = {"stateless2": lambda: StatelessPredictor(v, d, 2),
                       "stateless3": lambda: StatelessPredictor(v, d, 3),
                       "lstm2": lambda: LSTMPredictor(v, d, layers=2)}[predictor]()
    model.eval()
    ta = streaming.TorchaudioRNNT(model)
    blank = model.blank

    # predict, one label at a time, with per-hypothesis states batched and sliced as RNNTBeamSearch
    # does, gives the (projected) outputs of predictor.forward on the whole label sequences
    seqs = torch.tensor([[3, 7, 7, 1], [5, 0, 11, 3]])
    hyps = []
    for _ in seqs:
        out, _, state = ta.predict(torch.tensor([[blank]]), torch.tensor([1]), None)
        hyps.append(([out[0]], state))
    for u in range(seqs.shape[1]):
        batched = _batch_state([([], None, h[1], 0.0) for h in hyps])  # (tokens, out, state, score)
        out, _, states = ta.predict(seqs[:, u:u + 1], torch.tensor([1, 1]), batched)
        hyps = [(h[0] + [out[i]], _slice_state(states, i, torch.device("cpu"))) for i, h in enumerate(hyps)]
    want = model.joiner.pred_proj(model.predictor(seqs))  # (2, U+1, J)
    torch.testing.assert_close(torch.stack([torch.cat(h[0]) for h in hyps]), want, atol=1e-5, rtol=1e-5)

    # one frame, one label per frame at most, beam = V, ranked by score: torchaudio's search returns
    # the V best of {∅} ∪ {(y,)}, each with its exact log-probability: -RNN-T loss for (y,)
    hidden = torch.randn(1, 1, d)
    searcher = streaming.torchaudio_searcher(model, rank="score", step_max_tokens=1)
    found = searcher(hidden, torch.tensor([1]), v)
    assert len(found) == v
    start = model.predictor(torch.zeros(1, 0, dtype=torch.long))[0, 0]
    empty = float(model.joiner(hidden[0, 0], start).log_softmax(-1)[blank])
    scores = {}
    for y in range(v):
        loss = model.rnnt_loss(Encoded(hidden, torch.tensor([1])), torch.tensor([[y]]), torch.tensor([1]))
        scores[(y,)] = -float(loss[0])
    scores[()] = empty
    best = sorted(scores, key=scores.get, reverse=True)[:v]
    assert [tuple(h[0][1:]) for h in found] == best
    for h in found:
        assert h[3] == pytest.approx(scores[tuple(h[0][1:])], abs=1e-4)
