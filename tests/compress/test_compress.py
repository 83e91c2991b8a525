"""Compression: N:M masks on every model class, SR-STE and LSQ gradients, coverage, export, deploy."""

import math

import pytest
import torch
from builders import aed, middle_encoder, stast, text_encoder
from builders import batch as stast_batch
from conftest import tiny_transducer

from speechkit.compress.apply import (
    CompressConfig,
    QuantConfig,
    SparsityConfig,
    compress_model,
    compressors,
    input_quantizers,
    set_state,
)
from speechkit.compress.deploy import deploy
from speechkit.compress.export import fold, pack_nibbles, pack_nm, unpack_nibbles, unpack_nm
from speechkit.compress.quant import WeightLSQ, lsq
from speechkit.compress.sparsity import NMSparse, group_counts, nm_mask, srste
from speechkit.lego.decoders import AttentionDecoder
from speechkit.lego.encoders import Chain, SpeechEncoder
from speechkit.lego.interface import MarginalHead
from speechkit.lego.transducer import Joiner, LSTMPredictor, StatelessPredictor, TransformerPredictor
from speechkit.models.aed import AttentionModel
from speechkit.models.base import EncoderDecoderModel
from speechkit.models.lm import LanguageModel
from speechkit.models.stast import STAST
from speechkit.models.transducer import Transducer
from speechkit.nn.conformer import Conformer
from speechkit.nn.subsampling import Conv2dSubsampling
from speechkit.pipelines.bricks import load_brick, save_brick

V = 20


def _speech_batch(seed=0, vocab=V):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 48, 80, generator=g), torch.tensor([48, 33]),
            torch.randint(0, vocab, (2, 5), generator=g), torch.tensor([5, 3]))


def _text_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(1, 30, (2, 7), generator=g), torch.tensor([7, 5]),
            torch.randint(0, V, (2, 5), generator=g), torch.tensor([5, 3]))


def _transducer(predictor):
    torch.manual_seed(0)
    enc = SpeechEncoder(Conv2dSubsampling(80, 32, 8), Conformer(32, 1, 2, 2, 5, 0.0), MarginalHead(32, V), 80)
    return Transducer(enc, predictor, Joiner(32, 32, V, 32))


# Every model class of speechkit.models with each of its exchangeable parts: (name, build, batch).
MODELS = {
    "transducer-stateless": (lambda: tiny_transducer(V), _speech_batch),
    "transducer-lstm-conv2d": (lambda: _transducer(LSTMPredictor(V, 32)), _speech_batch),
    "transducer-transformer": (lambda: _transducer(TransformerPredictor(V, 32, 1, 2, 2)), _speech_batch),
    "aed-mt-wemb": (lambda: aed(), _text_batch),
    "aed-mt-beamconv": (lambda: aed(ingestor="beamconv"), _text_batch),
    "aed-chain": (lambda: AttentionModel(Chain([text_encoder(), middle_encoder()]),
                                         AttentionDecoder(V, 32, 1, 2, 2)), _text_batch),
    "stast": (lambda: stast(), lambda: stast_batch()),
    "lm-lstm": (lambda: LanguageModel(LSTMPredictor(V, 32), 32), _text_batch),
    "lm-transformer": (lambda: LanguageModel(TransformerPredictor(V, 32, 1, 2, 2), 32), _text_batch),
    "lm-stateless": (lambda: LanguageModel(StatelessPredictor(V, 32), 32), _text_batch),
}


def test_the_model_list_covers_every_model_class():
    classes = {type(build()) for build, _ in MODELS.values()}
    assert set(EncoderDecoderModel.__subclasses__()) | {LanguageModel} <= classes | {STAST}
    assert {STAST, Transducer, AttentionModel, LanguageModel} <= classes


def _loss(model, batch):
    b = batch()
    return model.loss(*b[:4], **(b[4] if len(b) > 4 else {}))["loss"]


@pytest.mark.parametrize("name", MODELS)
def test_every_compressed_parameter_has_exactly_n_of_m_along_the_reduction_dim(name):
    build, batch = MODELS[name]
    model = build().train()
    before = {n: p.shape for n, p in model.named_parameters()}
    cov = compress_model(model, CompressConfig(sparsity=SparsityConfig(2, 4)))
    _loss(model, batch).backward()
    sparse = compressors(model, NMSparse)
    assert sparse, name
    for key, p in sparse.items():
        mname, _, pname = key.rpartition(".")
        w = getattr(model.get_submodule(mname), pname)  # the weight the layer computes with
        assert w.shape[1] % 4 == 0
        assert (group_counts(w != 0, 4) == 2).all(), key
        assert (group_counts(p.mask, 4) == 2).all(), key
    # the coverage report lists every parameter of the model once, and every omission has a rule
    assert sorted(r[0] for r in cov.rows) == sorted(before)
    for pname, shape, applied, reason in cov.rows:
        assert applied or reason, pname
        if not applied and len(shape) >= 2:
            assert "not divisible by M=4" in reason or "not a weight kind" in reason, (pname, reason)
    assert all(("2:4" in a) == (k in sparse) for k, _, a, _ in cov.rows)


@pytest.mark.parametrize("lam", [0.0, 2e-4])
def test_srste_gradient_is_g_plus_lambda_one_minus_mask_times_w(lam):
    w = torch.randn(6, 16, requires_grad=True)
    mask = nm_mask(w, 2, 4)
    g = torch.randn(6, 16)
    (srste(w, mask, lam) * g).sum().backward()
    torch.testing.assert_close(w.grad, g + lam * (~mask) * w.detach(), rtol=0, atol=0)
    # and through the parametrization of a layer: the dense weight gets it
    lin = torch.nn.Linear(16, 6)
    compress_model(lin, CompressConfig(sparsity=SparsityConfig(2, 4, srste_lambda=lam)))
    x = torch.randn(3, 16)
    lin(x).sum().backward()
    dense = lin.parametrizations.weight.original
    m = lin.parametrizations.weight[0].mask
    torch.testing.assert_close(dense.grad, torch.ones(3, 6).t() @ x + lam * (~m) * dense.detach())


def test_nm_mask_keeps_the_largest_along_input_channels_of_a_conv():
    w = torch.randn(5, 8, 3)  # (C_out, C_in, k): groups along C_in at each (out, k)
    m = nm_mask(w, 1, 4)
    for o in range(5):
        for k in range(3):
            for g in range(2):
                grp = w[o, 4 * g:4 * g + 4, k].abs()
                assert m[o, 4 * g:4 * g + 4, k].tolist() == (grp == grp.max()).tolist()


def test_lsq_step_gradient_matches_the_formula():
    torch.manual_seed(0)
    qn, qp = 128, 127
    v = torch.randn(4, 50) * 3
    v[0, :3] = torch.tensor([500.0, -500.0, 0.2])  # both clips
    v.requires_grad_(True)
    step = torch.tensor([0.02], requires_grad=True)
    gs = 1 / math.sqrt(v.numel() * qp)
    g = torch.randn_like(v)
    (lsq(v, step, qn, qp, gs) * g).sum().backward()
    r = v.detach() / step.detach()
    inside = (r > -qn) & (r < qp)
    clip = torch.where(r <= -qn, torch.tensor(-qn * 1.0), torch.tensor(qp * 1.0))
    d = torch.where(inside, -r + r.round(), clip)
    torch.testing.assert_close(step.grad, (gs * (g * d).sum()).reshape(1), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(v.grad, g * inside)  # straight through inside, zero at the clips
    codes = (lsq(v, step, qn, qp, gs) / step).detach()
    assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.min() >= -qn and codes.max() <= qp


def test_weight_lsq_initialises_per_channel_and_noise_only_in_training():
    w = torch.randn(4, 16) * torch.tensor([[1.0], [2.0], [4.0], [8.0]])
    q = WeightLSQ(tuple(w.shape), bits=8)
    q(w)
    torch.testing.assert_close(q.step.detach(), 2 * w.abs().mean(1) / math.sqrt(127))
    q.noise = 0.5
    q.train()
    assert not torch.equal(q(w), q(w))  # noisy
    q.eval()
    assert torch.equal(q(w), q(w))


def test_lstm_computes_with_the_masked_weights():
    torch.manual_seed(0)
    pred = LSTMPredictor(V, 32).eval()
    compress_model(pred, CompressConfig(sparsity=SparsityConfig(2, 4)))
    y = torch.randint(0, V, (2, 6))
    out = pred(y)
    plain = LSTMPredictor(V, 32).eval()
    plain.load_state_dict({k: v for k, v in pred.state_dict().items() if "parametrizations" not in k},
                          strict=False)  # biases
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0"):
            getattr(plain.lstm, name).copy_(getattr(pred.lstm, name))
        plain.embed.weight.copy_(pred.embed.weight)
    torch.testing.assert_close(out, plain(y))
    assert (group_counts(pred.lstm.weight_hh_l0 != 0, 4) == 2).all()


@pytest.mark.parametrize("shape", [(6, 16), (5, 8, 3), (4, 12, 3, 3)])
def test_pack_unpack_round_trip(shape):
    w = torch.randn(shape)
    mask = nm_mask(w, 2, 4)
    vals, pos = pack_nm(w, mask, 2, 4)
    assert vals.shape[1] == shape[1] // 2 and pos.dtype == torch.uint8
    torch.testing.assert_close(unpack_nm(vals, pos, 2, 4), w * mask, rtol=0, atol=0)
    packed = pack_nibbles(pos)
    assert packed.numel() == (pos.numel() + 1) // 2
    assert torch.equal(unpack_nibbles(packed, pos.shape), pos)


def test_schedule_switches_parts_on_by_step_and_sad_counts_flips():
    from speechkit.train.callbacks import CompressionSchedule, sad

    model = tiny_transducer(V)
    cfg = CompressConfig(sparsity=SparsityConfig(start_step=10, freeze_step=50),
                         quant=QuantConfig(start_step=20, noise=0.4, noise_decay_steps=100))
    compress_model(model, cfg)
    sched = CompressionSchedule(cfg)
    sp = next(iter(compressors(model, NMSparse).values()))
    wq = next(iter(compressors(model, WeightLSQ).values()))
    aq = next(iter(input_quantizers(model).values()))
    sched._apply(model, 5)
    assert not sp.enabled and not wq.enabled and not aq.enabled
    sched._apply(model, 30)
    assert sp.enabled and not sp.frozen and wq.enabled and aq.enabled
    assert wq.noise == pytest.approx(0.4 * math.exp(-0.1))
    sched._apply(model, 60)
    assert sp.frozen
    a = {"x": torch.tensor([[True, False, True, False]])}
    b = {"x": torch.tensor([[False, True, True, False]])}
    assert sad(a, b) == ({"x": 0.5}, 2)


@pytest.mark.parametrize("cfg", [
    CompressConfig(sparsity=SparsityConfig(2, 4), quant=QuantConfig(8, 8)),
    CompressConfig(quant=QuantConfig(4, 8, per_channel=False)),
    CompressConfig(sparsity=SparsityConfig(1, 4))], ids=["2:4+int8", "int4", "1:4"])
def test_exported_brick_computes_what_the_fake_quantized_model_computed(tmp_path, cfg):
    model = tiny_transducer(V, predictor="lstm")
    cov = compress_model(model, cfg)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for i in range(3):  # a few steps so that steps, masks and weights move
        opt.zero_grad()
        model.train()
        _loss(model, lambda i=i: _speech_batch(i)).backward()
        opt.step()
    model.eval()
    x, lens, y, ylens = _speech_batch(7)
    with torch.no_grad():
        ref = model(x, lens)
        ref_loss = model.loss(x, lens, y, ylens)["loss"]
    state, info = fold(model, cfg)
    save_brick(model, tmp_path / "b", {"kind": "Transducer", "compression": info}, state=state)
    dense_bytes = sum(p.numel() * 4 for p in tiny_transducer(V, predictor="lstm").parameters())
    stored = sum(v.numel() * v.element_size() for v in state.values())
    assert stored < 0.75 * dense_bytes, cov.counts()
    b = load_brick(tmp_path / "b")
    loaded, iface = b.module, b.interface
    with torch.no_grad():
        out = loaded(x, lens)
        torch.testing.assert_close(out.hidden, ref.hidden, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loaded.loss(x, lens, y, ylens)["loss"], ref_loss, rtol=1e-5, atol=1e-5)
    assert set(iface["compression"]["params"]) == set(compressors(model, NMSparse)) | set(
        compressors(model, WeightLSQ))
    inputs = iface["compression"]["inputs"]
    assert len(inputs) == len(input_quantizers(model)) and (len(inputs) > 0) == (cfg.quant is not None)


def test_export_before_quantization_started_stores_float_weights_and_loads(tmp_path):
    model = tiny_transducer(V).eval()
    cfg = CompressConfig(sparsity=SparsityConfig(), quant=QuantConfig(start_step=100))
    compress_model(model, cfg)
    set_state(model, quant=False)  # what the schedule does before quant.start_step
    x, lens, _, _ = _speech_batch()
    with torch.no_grad():
        ref = model(x, lens).hidden
        state, info = fold(model, cfg)
    assert not info["inputs"] and all(f["format"] == "2:4+float32" for f in info["params"].values()
                                      if "n" in f)
    save_brick(model, tmp_path / "b", {"compression": info}, state=state)
    loaded = load_brick(tmp_path / "b").module
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, lens).hidden, ref)


def test_deploy_picks_int8_only_where_it_is_correct_and_keeps_outputs_close(tmp_path):
    torch.manual_seed(0)
    model = tiny_transducer(V, dim=64)
    cfg = CompressConfig(quant=QuantConfig(8, 8))
    compress_model(model, cfg)
    model.eval()
    x, lens, _, _ = _speech_batch(3)
    with torch.no_grad():
        model(x, lens)  # initialises the steps
        state, info = fold(model, cfg)
    save_brick(model, tmp_path / "b", {"compression": info}, state=state)
    loaded = load_brick(tmp_path / "b").module
    with torch.no_grad():
        ref = loaded(x, lens).hidden
    plan = deploy(loaded, lambda m: m(x, lens), tolerance=0.05, repeats=3)
    assert {r["choice"] for r in plan.rows} <= {"reference", "fp32", "int8"}
    for r in plan.rows:
        assert "int8" in r["candidates"]
        assert r["choice"] == "reference" or r["candidates"][r["choice"]][1] <= 0.05
    with torch.no_grad():
        out = loaded(x, lens).hidden
    assert ((out - ref).norm() / ref.norm()) < 0.1  # a random model: the per-layer errors compound
    text = plan.to_text()  # every candidate's time and error, per layer
    assert "int8 µs/err" in text and f"{plan.rows[0]['candidates']['int8'][1]:.4f}" in text
    # a zero tolerance admits only exact kernels: int8 is never chosen
    loaded2 = load_brick(tmp_path / "b").module
    plan2 = deploy(loaded2, lambda m: m(x, lens), tolerance=0.0, repeats=1)
    assert {r["choice"] for r in plan2.rows} <= {"reference", "fp32"}
    assert all(r["candidates"]["int8"][1] > 0 and r["candidates"]["fp32"][1] == 0 for r in plan2.rows)


def test_gpu_candidates_compute_the_layer_within_their_precision_on_the_cpu():
    """The GPU menu's arithmetic, run on the CPU where it can be (bf16 dense, fp8 row-wise through
    ``torch._scaled_mm``, int8 through ``torch._int_mm``; 2:4 needs CUDA and is left out here)."""
    from speechkit.compress.deploy import fp8_available, gpu_kernels

    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 96)
    x = torch.randn(64, 128)
    ref = lin(x)
    found = gpu_kernels(lin, ptq=True, fp8=True)
    assert set(found) == {"dense-bf16", "int8", "fp8"}  # no 2:4 mask (and a CPU weight): no 2:4 candidate
    bounds = {"dense-bf16": 0.01, "int8": 0.02, "fp8": 0.06}  # 8 / 7 / 3 mantissa bits
    for name, fn in found.items():
        y = fn(x)
        assert y.shape == ref.shape
        assert float((y.float() - ref).norm() / ref.norm()) < bounds[name], name
    assert not fp8_available(torch.device("cpu")) and "fp8" not in gpu_kernels(lin, ptq=True)


def test_set_state_off_gives_the_dense_model_back():
    model = tiny_transducer(V).eval()
    x, lens, _, _ = _speech_batch()
    with torch.no_grad():
        dense = model(x, lens).hidden
    compress_model(model, CompressConfig(sparsity=SparsityConfig(), quant=QuantConfig()))
    set_state(model, sparsity=False, quant=False)
    with torch.no_grad():
        torch.testing.assert_close(model(x, lens).hidden, dense)
        set_state(model, sparsity=True, quant=True)
        assert not torch.allclose(model(x, lens).hidden, dense)


def test_squat_alternates_a_sam_step_on_weights_with_a_step_size_step():
    from speechkit.compress.quant import squat_step, step_sizes

    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 4)
    compress_model(lin, CompressConfig(quant=QuantConfig(8, 8)))
    x = torch.randn(16, 8)
    lin(x)  # initialises the steps
    w = lin.parametrizations.weight.original
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (lin(x) ** 2).mean()
        loss.backward()
        return loss

    w0, s0 = w.detach().clone(), [s.detach().clone() for s in step_sizes(lin)]
    closure()
    g = w.grad.detach().clone()
    gnorm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in (w, lin.bias)]))
    with torch.no_grad():  # the SAM gradient by hand: at w + ρ g/‖g‖ (bias perturbed too)
        w.add_(0.05 * g / gnorm)
        b_g = lin.bias.grad.detach().clone()
        lin.bias.add_(0.05 * b_g / gnorm)
    closure()
    g_sam = w.grad.detach().clone()
    with torch.no_grad():
        w.copy_(w0)
        lin.bias.sub_(0.05 * b_g / gnorm)
    squat_step(lin, opt, closure, rho=0.05, step=0)
    torch.testing.assert_close(w.detach(), w0 - 0.1 * g_sam)  # moved by the SAM gradient, from w
    assert all(torch.equal(s.detach(), s_) for s, s_ in zip(step_sizes(lin), s0))  # steps untouched
    w1 = w.detach().clone()
    squat_step(lin, opt, closure, rho=0.05, step=1)
    assert torch.equal(w.detach(), w1) and not all(torch.equal(s.detach(), s_)
                                                   for s, s_ in zip(step_sizes(lin), s0))


def test_exclude_rules_leave_layers_dense_and_are_reported():
    model = tiny_transducer(V)
    cfg = CompressConfig(sparsity=SparsityConfig(), quant=QuantConfig(8, 8), exclude=[r"^joiner\.", "head"])
    cov = compress_model(model, cfg)
    rows = {n: (a, r) for n, _, a, r in cov.rows}
    for name, rule in (("joiner.out.weight", r"^joiner\."), ("joiner.enc_proj.weight", r"^joiner\."),
                       ("encoder.head.proj.weight", "head")):
        assert rows[name] == ("", f"excluded by rule {rule!r}"), name
    assert not any(k.startswith(("joiner.", "encoder.head.")) for k in compressors(model, NMSparse))
    assert not hasattr(model.joiner.out, "input_quant")
    assert hasattr(model.encoder.frontend.proj, "input_quant")
    assert "excluded by rule" in cov.to_text()
