"""The pure-PyTorch pruned RNN-T loss against torchaudio's rnnt_loss (issue 9, first part)."""

import pytest
import torch
import torchaudio.functional as AF

from speechkit.lego.transducer import Joiner
from speechkit.models.pruned_rnnt import prune_ranges, pruned_rnnt_loss, simple_lattice
from speechkit.models.rnnt_lattice import lattice_logprob

B, T, U, V, E, P = 3, 12, 5, 10, 8, 8


def _inputs(seed: int = 0):
    torch.manual_seed(seed)
    joiner = Joiner(E, P, V, 16).double()
    enc = torch.randn(B, T, E, dtype=torch.float64, requires_grad=True)
    pred = torch.randn(B, U + 1, P, dtype=torch.float64, requires_grad=True)
    am = torch.randn(B, T, V + 1, dtype=torch.float64, requires_grad=True)
    lm = torch.randn(B, U + 1, V + 1, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, V, (B, U))
    return joiner, enc, pred, am, lm, y, torch.tensor([12, 9, 7]), torch.tensor([5, 3, 4])


def _torchaudio(logits, y, frames, labels):
    return AF.rnnt_loss(logits.float(), y.int(), frames.int(), labels.int(), blank=V, reduction="none")


def test_simple_loss_is_the_rnnt_loss_of_the_additive_joiner():
    _, _, _, am, lm, y, frames, labels = _inputs()
    px, py = simple_lattice(am, lm, y, V)
    ours = -lattice_logprob(px, py, frames, labels)
    ref = _torchaudio(am[:, :, None] + lm[:, None], y, frames, labels)
    torch.testing.assert_close(ours.float(), ref, rtol=1e-5, atol=1e-4)
    g_ours = torch.autograd.grad(ours.sum(), (am, lm))
    g_ref = torch.autograd.grad(ref.sum(), (am, lm))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-4, atol=1e-5)


def test_smoothed_simple_lattice_interpolates_joint_lm_only_and_am_only_log_probs():
    _, _, _, am, lm, y, *_ = _inputs(3)
    yy = torch.cat([y, y.new_zeros(B, 1)], 1)[:, None].expand(-1, T, -1)  # (B, T, U+1) label at each node

    def arcs(logp):  # logp (B, T, U+1, V+1) → (px, py)
        return logp.gather(3, yy[..., None])[..., 0], logp[..., V]

    joint = arcs((am[:, :, None] + lm[:, None]).log_softmax(-1))
    lm_only = arcs(lm.log_softmax(-1)[:, None].expand(-1, T, -1, -1))
    unigram = lm.softmax(-1).mean((0, 1))
    am_only = arcs((am + unigram.log()).log_softmax(-1)[:, :, None].expand(-1, -1, U + 1, -1))
    for lm_s, am_s in ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (0.25, 0.1)):
        px, py = simple_lattice(am, lm, y, V, lm_only_scale=lm_s, am_only_scale=am_s)
        for i, got in enumerate((px, py)):
            want = (1 - lm_s - am_s) * joint[i] + lm_s * lm_only[i] + am_s * am_only[i]
            torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="smoothing"):
        simple_lattice(am, lm, y, V, lm_only_scale=0.9, am_only_scale=0.2)


def test_loss_schedule_starts_then_ramps_each_term():
    from speechkit.train.module import SpeechTask

    task = SpeechTask(torch.nn.Linear(1, 1), loss_start_steps={"rnnt": 100, "pruned": 100},
                      loss_ramp_steps={"pruned": 50})
    assert task.loss_scales(99) == {"rnnt": 0.0, "pruned": 0.0}
    assert task.loss_scales(100) == {"rnnt": 1.0, "pruned": 1 / 50}
    assert task.loss_scales(124)["pruned"] == pytest.approx(0.5) and task.loss_scales(149)["pruned"] == 1.0
    assert task.loss_scales(5000) == {"rnnt": 1.0, "pruned": 1.0}
    with pytest.raises(ValueError, match="loss_ramp_steps"):
        SpeechTask(torch.nn.Linear(1, 1), loss_ramp_steps={"pruned": 0})


def test_pruned_loss_with_a_full_window_equals_torchaudio_values_and_joiner_gradients():
    joiner, enc, pred, am, lm, y, frames, labels = _inputs(1)
    _, pruned = pruned_rnnt_loss(joiner, enc, pred, am, lm, y, frames, labels, V, s=U + 1)
    ref = _torchaudio(joiner(enc[:, :, None], pred[:, None]), y, frames, labels)
    torch.testing.assert_close(pruned.float(), ref, rtol=1e-5, atol=1e-4)
    params = (enc, pred, *joiner.parameters())
    g_ours = torch.autograd.grad(pruned.sum(), params)
    g_ref = torch.autograd.grad(ref.sum(), params)
    for a, b in zip(g_ours, g_ref):  # torchaudio computes in float32: tolerance 1e-4
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-4, atol=1e-4)


def test_narrower_windows_bound_the_loss_from_above_and_converge():
    joiner, enc, pred, am, lm, y, frames, labels = _inputs(2)
    losses = [pruned_rnnt_loss(joiner, enc, pred, am, lm, y, frames, labels, V, s=s)[1].detach()
              for s in (2, 3, 4, 5, 6)]
    for narrow, wide in zip(losses, losses[1:]):
        assert (narrow >= wide - 1e-9).all()  # fewer alignments: −log P can only grow
    assert torch.isfinite(losses[0]).all() and (losses[0] < 1e3).all()  # s = 2 still reaches the end


@pytest.mark.parametrize("s", [2, 3, 5])
def test_prune_ranges_are_feasible(s):
    torch.manual_seed(s)
    frames, labels = torch.tensor([12, 9, 7]), torch.tensor([5, 3, 4])
    occ = torch.rand(B, T, U + 1)
    start = prune_ranges(occ, occ, frames, labels, s)
    assert (start[:, 0] == 0).all()
    assert (start[:, 1:] >= start[:, :-1]).all() and (start[:, 1:] - start[:, :-1] <= s - 1).all()
    for b in range(B):  # the last node (T_b − 1, U_b) lies in the last frame's window
        last = int(start[b, frames[b] - 1])
        assert last <= labels[b] < last + s


def test_transducer_trains_with_the_pruned_loss_and_warm_up_skips_it():
    from conftest import tiny_transducer

    from speechkit.models.transducer import Transducer

    base = tiny_transducer()
    m = Transducer(base.encoder, base.predictor, base.joiner, prune_range=3).train()
    x, lens = torch.randn(2, 80, 80), torch.tensor([80, 64])
    y, ylens = torch.randint(0, 40, (2, 4)), torch.tensor([4, 3])
    out = m.loss(x, lens, y, ylens)
    assert {"simple", "pruned", "rnnt", "ctc", "loss"} <= set(out)
    torch.testing.assert_close(out["rnnt"], 0.5 * out["simple"] + out["pruned"])
    out["loss"].backward()
    assert m.simple_am.weight.grad.abs().sum() > 0 and m.joiner.out.weight.grad.abs().sum() > 0
    warm = m.loss(x, lens, y, ylens, scales={"pruned": 0})
    torch.testing.assert_close(warm["rnnt"], 0.5 * warm["simple"])
    ramp = m.loss(x, lens, y, ylens, scales={"pruned": 0.3})
    torch.testing.assert_close(ramp["rnnt"], 0.5 * ramp["simple"] + 0.3 * ramp["pruned"])
    with pytest.raises(ValueError, match="lm_only_scale"):
        Transducer(base.encoder, base.predictor, base.joiner, prune_range=3, lm_only_scale=0.8,
                   am_only_scale=0.3)
    with_grad = m.eval().loss(x, lens, y, ylens)["pruned"]
    with torch.no_grad():  # validation computes it without autograd
        torch.testing.assert_close(m.loss(x, lens, y, ylens)["pruned"], with_grad.detach())


@pytest.mark.parametrize("sub_batch", [1, 2])
def test_sub_batched_full_loss_equals_the_whole_batch_values_and_gradients(sub_batch):
    from speechkit.models.transducer import joiner_rnnt_loss

    joiner, enc, pred, _, _, y, frames, labels = _inputs(4)
    joiner = joiner.float()
    enc, pred = (x.detach().float().requires_grad_() for x in (enc, pred))
    params = (enc, pred, *joiner.parameters())
    whole = joiner_rnnt_loss(joiner, enc, pred, y, frames, labels, V)
    torch.testing.assert_close(whole, _torchaudio(joiner(enc[:, :, None], pred[:, None]), y, frames, labels))
    parts = joiner_rnnt_loss(joiner, enc, pred, y, frames, labels, V, sub_batch=sub_batch)
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-5)  # groups are cut to their own T, U
    for a, b in zip(torch.autograd.grad(parts.sum(), params), torch.autograd.grad(whole.sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(joiner_rnnt_loss(joiner, enc, pred, y, frames, labels, V, sub_batch),
                                   whole.detach(), rtol=1e-5, atol=1e-5)
