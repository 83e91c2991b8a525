"""Attention-decoder search on the device: AED (LegoNN ingestor), MT and STAST models give the same
hypotheses and scores on CUDA as on the CPU, plain and fused with an external LM (``device`` fixture:
the cuda case is marked gpu); a training loss on the device equals the CPU one."""

import pytest
import torch
from builders import aed, batch, padded, stast, text_encoder

from speechkit.lego.transducer import LSTMPredictor
from speechkit.models.lm import LanguageModel
from speechkit.search.attention import attention_beam_search
from speechkit.search.fusion import Fusion


def models():
    torch.manual_seed(7)
    return {"aed": aed(seed=3).eval(),
            "mt": aed(text_encoder(head=False, seed=4), ingestor=None, seed=4).eval()}


def moved(enc, device):
    return type(enc)(*(None if x is None else x.to(device) for x in (enc.hidden, enc.lengths, enc.logits)))


@pytest.mark.parametrize("name", ["aed", "mt"])
def test_attention_search_on_the_device_equals_the_cpu(device, name):
    model = models()[name]
    torch.manual_seed(0)
    lm = LanguageModel(LSTMPredictor(model.decoder.vocab_size, 32), 32).eval()
    x, n = padded([7, 3, 5, 6], seed=5)
    with torch.no_grad():
        enc = model(x, n)
    runs = {"greedy": {"beam": 1}, "beam": {"beam": 4, "nbest": 3},
            "fused": {"beam": 3, "nbest": 2, "fusion": Fusion(lm, 0.4, 0.2, 0.3)}}
    want = {k: attention_beam_search(model, enc, **kw) for k, kw in runs.items()}
    model.to(device), lm.to(device)
    for k, kw in runs.items():
        got = attention_beam_search(model, moved(enc, device), **kw)
        assert [[h.tokens for h in nb] for nb in got] == [[h.tokens for h in nb] for nb in want[k]], k
        for g, w in zip(got, want[k]):
            assert [h.score for h in g] == pytest.approx([h.score for h in w], abs=1e-4)


def test_stast_loss_and_search_on_the_device_equal_the_cpu(device):
    model = stast().eval()
    feats, lens, tgt, tgt_lens, extra = batch()
    with torch.no_grad():
        want_loss = model.loss(feats, lens, tgt, tgt_lens, **extra)
        want = attention_beam_search(model, model(feats, lens), beam=3, nbest=2)
    model.to(device)
    d = lambda t: t.to(device)  # noqa: E731
    with torch.no_grad():
        got_loss = model.loss(d(feats), d(lens), d(tgt), d(tgt_lens), **{k: d(v) for k, v in extra.items()})
        got = attention_beam_search(model, model(d(feats), d(lens)), beam=3, nbest=2)
    assert set(got_loss) == set(want_loss)
    for k in want_loss:
        torch.testing.assert_close(got_loss[k].cpu(), want_loss[k], rtol=2e-3, atol=2e-3)
    assert [[h.tokens for h in nb] for nb in got] == [[h.tokens for h in nb] for nb in want]
