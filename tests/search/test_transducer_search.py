"""The batched transducer searches: label-looping greedy search equals the frame-by-frame definition for
every window, the beam search's device path (no host checks) equals its CPU path, and both give the
same hypotheses on CUDA as on the CPU (``device`` fixture: the cuda case is marked gpu)."""

import pytest
import torch
from conftest import tiny_transducer

from speechkit.search.fusion import Fusion
from speechkit.search.transducer import BeamSearch, GreedySearch, beam_search, greedy_search


def emitting(predictor="stateless", seed=3):
    """A tiny random transducer pushed away from blank, so that it emits labels (several per frame)."""
    m = tiny_transducer(predictor=predictor, seed=seed).eval()
    with torch.no_grad():
        m.joiner.out.bias[-1] -= 2.5
    return m


def encoded(m, lens=(120, 64, 93, 40), seed=2):
    torch.manual_seed(seed)
    with torch.no_grad():
        return m(torch.randn(len(lens), max(lens), 80), torch.tensor(lens))


@torch.no_grad()
def frame_by_frame(m, enc, max_symbols):
    """The definition, one utterance and one frame at a time: at each frame, up to ``max_symbols`` times,
    the joiner's best output; a blank ends the frame, a label is emitted and fed to the predictor."""
    enc_proj, out = m.joiner.enc_proj(enc.hidden), []
    for i, n in enumerate(enc.lengths.tolist()):
        tokens, frames = [], []
        pred_out, state = m.predictor.step(torch.tensor([m.blank]), m.predictor.initial_state(1, None))
        pred_proj = m.joiner.pred_proj(pred_out)
        for t in range(n):
            for _ in range(max_symbols):
                tok = int(m.joiner.joint(enc_proj[i, t][None], pred_proj).argmax(-1))
                if tok == m.blank:
                    break
                tokens.append(tok)
                frames.append(t)
                pred_out, state = m.predictor.step(torch.tensor([tok]), state)
                pred_proj = m.joiner.pred_proj(pred_out)
        out.append((tokens, frames))
    return out


@pytest.mark.parametrize("predictor", ["stateless", "lstm"])
@pytest.mark.parametrize("max_symbols", [1, 3])
def test_label_looping_greedy_equals_the_frame_by_frame_definition_for_every_window(predictor, max_symbols):
    m = emitting(predictor)
    enc = encoded(m)
    want = frame_by_frame(m, enc, max_symbols)
    several = any(len(set(f)) < len(f) for _, f in want)  # some frame emits more than one label
    assert sum(len(t) for t, _ in want) > 50 and several == (max_symbols > 1)
    for window in (1, 3, 8, 200):
        s = GreedySearch(m, 4, max_symbols=max_symbols, window=window)
        s.advance(enc)
        assert [(list(h.tokens), list(h.frames)) for h in s.best()] == want, window


def test_beam_search_device_path_equals_the_cpu_path():
    """On an accelerator the search asks the host nothing inside a frame (no fast path for blank frames,
    no early end of a frame, no skipped predictor steps, merges and sorts always run): same result."""
    m = emitting(seed=5)
    enc = encoded(m, seed=4)
    for kw in ({"beam": 4, "max_symbols": 1}, {"beam": 3, "max_symbols": 3},
               {"beam": 4, "max_symbols": 2, "fusion": Fusion(ilm_weight=0.3, length_reward=0.4)}):
        cpu, device_path = BeamSearch(m, 4, **kw), BeamSearch(m, 4, **kw)
        device_path.cpu = False
        cpu.advance(enc)
        device_path.advance(enc)
        a, b = cpu.nbest(), device_path.nbest()
        labels = lambda nbests: [[(h.tokens, h.frames) for h in nb] for nb in nbests]  # noqa: E731
        assert labels(a) == labels(b)
        for x, y in zip(a, b):
            assert [h.score for h in x] == pytest.approx([h.score for h in y], rel=1e-5)
            assert [h.probs for h in x] == [pytest.approx(h.probs, rel=1e-5) for h in y]


def test_beam_search_merges_equal_label_sequences():
    """With several labels per frame, 'a' then blank and blank then 'a' meet: the beam never holds two
    slots with the same labels, and the merged score is at least the better path's."""
    m = emitting(seed=5)
    enc = encoded(m, lens=(60,), seed=4)
    nb = beam_search(m, enc, beam=6, nbest=6, max_symbols=2)[0]
    assert len({h.tokens for h in nb}) == len(nb) == 6


@pytest.mark.parametrize("predictor", ["stateless", "lstm"])
def test_searches_give_the_same_hypotheses_on_the_device_as_on_the_cpu(device, predictor):
    m = emitting(predictor)
    enc = encoded(m)
    want_greedy, want_beam = greedy_search(m, enc), beam_search(m, enc, beam=4, nbest=2)
    fusion = Fusion(ilm_weight=0.2, length_reward=0.3)
    want_fused = beam_search(m, enc, beam=3, fusion=fusion, max_symbols=2)
    md = m.to(device)
    enc_d = type(enc)(enc.hidden.to(device), enc.lengths.to(device), enc.logits.to(device))
    assert greedy_search(md, enc_d) == want_greedy
    for want, got in ((want_beam, beam_search(md, enc_d, beam=4, nbest=2)),
                      (want_fused, beam_search(md, enc_d, beam=3, fusion=fusion, max_symbols=2))):
        assert [[h.tokens for h in nb] for nb in got] == [[h.tokens for h in nb] for nb in want]
        assert [[h.frames for h in nb] for nb in got] == [[h.frames for h in nb] for nb in want]
        for x, y in zip(got, want):
            assert [h.score for h in x] == pytest.approx([h.score for h in y], rel=1e-4, abs=1e-4)
