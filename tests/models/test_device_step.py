"""One training step of every model family on the device equals the CPU's: transducer (full and pruned
loss), AED with a LegoNN ingestor, MT, STAST and LM — loss terms and gradients (``device`` fixture: the
cuda case is marked gpu and compared with the CPU run). Gradients, not weights after an Adam step: Adam's
first step moves every weight by ±lr, so a gradient of ~0 turns rounding into a sign flip."""

import copy

import pytest
import torch
from builders import V, aed, batch, padded, stast, text_encoder
from conftest import tiny_transducer

from speechkit.lego.transducer import LSTMPredictor
from speechkit.models.lm import LanguageModel
from speechkit.models.transducer import Transducer


def family(name):
    """→ (model in train mode with dropout off, loss arguments)."""
    torch.manual_seed(0)
    if name in ("transducer", "pruned"):
        m = tiny_transducer(seed=1)
        if name == "pruned":  # the same parts, trained with the pruned loss
            m = Transducer(m.encoder, m.predictor, m.joiner, prune_range=3)
        x, n = torch.randn(3, 64, 80), torch.tensor([64, 50, 33])
        y, u = torch.randint(0, 40, (3, 6)), torch.tensor([6, 4, 5])
        args, kw = (x, n, y, u), {}
    elif name in ("aed", "mt"):
        m = aed(seed=3) if name == "aed" else aed(text_encoder(seed=4), ingestor=None, seed=4)
        x, n = padded([7, 3, 5])
        y, u = padded([4, 2, 3], vocab=V, seed=2)
        args, kw = (x, n, y, u), {}
    elif name == "stast":
        m = stast()
        feats, lens, tgt, tgt_lens, kw = batch()
        args = (feats, lens, tgt, tgt_lens)
    else:
        m = LanguageModel(LSTMPredictor(30, 32), 32)
        y, u = padded([6, 4, 5])
        args, kw = (y, u, y, u), {}
    for mod in m.modules():  # dropout off: the two runs draw no random masks
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
        elif isinstance(getattr(mod, "dropout", None), float):  # attention dropout (nn.conformer)
            mod.dropout = 0.0
    if hasattr(m, "encoder") and getattr(m.encoder, "specaugment", None) is not None:
        m.encoder.specaugment = None
    return m.train(), args, kw


def step(m, args, kw):
    losses = m.loss(*args, **kw)
    losses["loss"].mean().backward()
    grads = {k: p.grad.cpu() for k, p in m.named_parameters() if p.grad is not None}
    return {k: v.detach().cpu() for k, v in losses.items()}, grads


@pytest.mark.parametrize("name", ["transducer", "pruned", "aed", "mt", "stast", "lm"])
def test_a_training_step_on_the_device_equals_the_cpu(device, name):
    m, args, kw = family(name)
    on_device = copy.deepcopy(m).to(device)
    want_loss, want_grads = step(m, args, kw)
    got_loss, got_grads = step(on_device, [a.to(device) for a in args],
                               {k: v.to(device) for k, v in kw.items()})
    assert set(got_loss) == set(want_loss) and set(got_grads) == set(want_grads) and len(want_grads) > 4
    for k in want_loss:
        torch.testing.assert_close(got_loss[k], want_loss[k], rtol=2e-3, atol=2e-3)
    for k, g in want_grads.items():
        assert g.abs().max() > 0 or name == "pruned", k
        torch.testing.assert_close(got_grads[k], g, rtol=2e-3, atol=2e-3 * float(g.abs().max()) + 1e-7)
