"""The torchaudio adapter of benchmarks/streaming.py computes speechkit's transducer exactly, and its
streaming path (chunk by chunk) gives the whole-utterance searches' results."""

import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import tiny_transducer
from torchaudio.models.rnnt_decoder import _batch_state, _slice_state

from speechkit.features import FbankConfig, fbank
from speechkit.lego.interface import Encoded
from speechkit.lego.transducer import LSTMPredictor, StatelessPredictor
from speechkit.nn.conformer import Conformer

_spec = importlib.util.spec_from_file_location(
    "bench_streaming", Path(__file__).parents[2] / "benchmarks" / "streaming.py")
streaming = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(streaming)


@pytest.fixture
def one_thread():
    """Thousands of tiny ops: on a loaded machine a second intra-op thread only adds barrier waits."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("predictor", ["stateless2", "stateless3", "lstm2"])
@torch.no_grad()
def test_torchaudio_adapter_matches_speechkit(predictor, one_thread):
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


@pytest.mark.parametrize("predictor", ["stateless2", "lstm2"])
@torch.no_grad()
def test_streaming_sides_match_whole_utterance_search(predictor, one_thread):
    """The benchmark's streaming path: a causal model's chunked encoder output, searched chunk by chunk by
    torchaudio's ``infer`` (seeded with the previous chunk's hypotheses) and by speechkit's stateful
    search, gives what ``RNNTBeamSearch.forward`` and ``beam_search`` give on the whole output:
    torchaudio's ``_search`` carries only the K hypotheses it keeps from one frame to the next."""
    v, d = 12, 16
    model = tiny_transducer(v, d)
    torch.manual_seed(2)
    model.encoder.body = Conformer(d, 2, 2, 2, 7, 0.1, causal=True, left_context=8)
    model.predictor = StatelessPredictor(v, d, 2) if predictor == "stateless2" else LSTMPredictor(v, d)
    model.eval()
    model.encoder.body.chunk = 3
    # 54 fbank frames, 13 encoder frames: chunks of 3, 3, 3, 3 and the final 1
    wave = torch.randn(9000, generator=torch.Generator().manual_seed(0)) * 0.1
    for rank in ("norm", "score"):
        searcher = streaming.torchaudio_searcher(model, rank, step_max_tokens=4)  # bounded: a random model
        sides = {"speechkit": lambda: streaming.SpeechkitStream(model, 3, 2),
                 "torchaudio": lambda s=searcher: streaming.TorchaudioStream(s, model, 3)}
        times, best, enc = streaming.stream_utterance(model, wave, FbankConfig(), sides, streaming.SIDES)
        assert enc.hidden.shape[1] == 13 and set(times) == {"features", "encoder", *streaming.SIDES}
        ids, sc = streaming.torchaudio_beam_search(searcher, model, enc, 3)
        assert best["torchaudio"][0] == ids and best["torchaudio"][1] == pytest.approx(sc, abs=1e-4)
        assert best["speechkit"][0] == streaming.speechkit_beam_search(model, enc, 3, 2)[0]
    feats = fbank(wave)
    whole = model.encoder(feats[None], torch.tensor([feats.shape[0]]))  # same chunk mask, all at once
    torch.testing.assert_close(whole.hidden, enc.hidden, atol=1e-4, rtol=1e-4)
