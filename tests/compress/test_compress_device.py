"""Compression on the device (``device`` fixture: the cuda case is marked gpu, compared with the CPU):
SR-STE + QAT training steps on a model compressed where it lives, folding, the exported brick loaded
onto the device, one-shot compression and the deploy runtime's candidates there."""

import copy

import pytest
import torch
from conftest import tiny_transducer

from speechkit.compress.apply import CompressConfig, QuantConfig, SparsityConfig, compress_model
from speechkit.compress.deploy import deploy
from speechkit.compress.export import fold, load_folded, one_shot
from speechkit.pipelines.bricks import load_brick, save_brick

V = 20


def speech_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 48, 80, generator=g), torch.tensor([48, 33]),
            torch.randint(0, V, (2, 5), generator=g), torch.tensor([5, 3]))


def trained(device, cfg):
    """A tiny transducer moved to ``device``, then compressed there, then three SR-STE + QAT steps."""
    model = tiny_transducer(V, predictor="lstm").to(device)
    model.encoder.specaugment = None
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        elif isinstance(getattr(m, "dropout", None), float):
            m.dropout = 0.0
    compress_model(model, cfg)
    opt = torch.optim.SGD(model.parameters(), 1e-2)
    losses = []
    for i in range(3):
        opt.zero_grad()
        loss = model.train().loss(*(t.to(device) for t in speech_batch(i)))["loss"]
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return model.eval(), losses


def test_compression_training_fold_and_export_on_the_device_equal_the_cpu(device, tmp_path):
    cfg = CompressConfig(sparsity=SparsityConfig(2, 4), quant=QuantConfig(8, 8))
    want_model, want_losses = trained(torch.device("cpu"), cfg)
    model, losses = trained(device, cfg)
    assert losses == pytest.approx(want_losses, rel=1e-3)
    (want_state, want_info), (state, info) = fold(want_model, cfg), fold(model, cfg)
    assert info == want_info and set(state) == set(want_state)
    for k, v in want_state.items():
        assert state[k].device.type == "cpu"
        if v.is_floating_point():
            torch.testing.assert_close(state[k], v, rtol=1e-3, atol=1e-3)
        else:  # int8 codes: at most one step apart where rounding fell the other way
            assert (state[k].int() - v.int()).abs().max() <= 1 and (state[k] != v).float().mean() < 0.01, k
    save_brick(model, tmp_path / "b", {"kind": "Transducer", "compression": info}, state=state)
    loaded = load_brick(tmp_path / "b", device).module
    x, lens, _, _ = (t.to(device) for t in speech_batch(7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, lens).hidden, model(x, lens).hidden, rtol=1e-3, atol=1e-3)


ONE_SHOT = {"2:4": CompressConfig(sparsity=SparsityConfig(2, 4)),
            "int8": CompressConfig(quant=QuantConfig(8, None)),
            "2:4+int8": CompressConfig(sparsity=SparsityConfig(2, 4), quant=QuantConfig(8, None))}


@pytest.mark.parametrize("cfg", ONE_SHOT.values(), ids=ONE_SHOT.keys())
def test_one_shot_and_deploy_on_the_device(device, cfg):
    torch.manual_seed(0)
    dense = tiny_transducer(V, dim=64).eval()
    model = copy.deepcopy(dense).to(device)
    state, info = one_shot(model, cfg)
    want_state, _ = one_shot(copy.deepcopy(dense), cfg)
    for k, v in want_state.items():
        torch.testing.assert_close(state[k].float(), v.float(), rtol=1e-3, atol=1e-3)
    fresh = load_folded(copy.deepcopy(dense).to(device), state, info)
    x, lens, _, _ = (t.to(device) for t in speech_batch(3))
    with torch.no_grad():
        ref = fresh(x, lens).hidden
    plan = deploy(fresh, lambda m: m(x, lens), tolerance=0.05, repeats=2, graphs=True)  # CPU: eager times
    assert plan.device == device.type and plan.rows
    expected = {"reference", "fp32", "int8"} if device.type == "cpu" else {
        "reference", "dense-bf16", "2:4-cusparselt", "2:4-cutlass", "int8", "fp8"}
    assert {r["choice"] for r in plan.rows} <= expected
    for r in plan.rows:
        assert r["choice"] == "reference" or r["candidates"][r["choice"]][1] <= 0.05
    with torch.no_grad():
        out = fresh(x, lens).hidden
    assert out.device.type == device.type and ((out.float() - ref.float()).norm() / ref.float().norm()) < 0.1
