"""LM fusion, ILME and the LM bricks (METHODS.md §3) on random weights."""

import math

import pytest
import torch
from builders import V, aed, padded
from conftest import tiny_transducer

from speechkit.lego.transducer import Joiner, LSTMPredictor, StatelessPredictor, TransformerPredictor
from speechkit.models.lm import LanguageModel
from speechkit.models.transducer import Transducer
from speechkit.pipelines.bricks import load_brick
from speechkit.search.attention import attention_beam_search
from speechkit.search.fusion import Fusion
from speechkit.search.transducer import beam_search

BODIES = {"transformer": lambda v: TransformerPredictor(v, 32, 2, 2, 2),
          "lstm": lambda v: LSTMPredictor(v, 32), "stateless": lambda v: StatelessPredictor(v, 32, 3)}


def lm(vocab, body="lstm", seed=0):
    torch.manual_seed(seed)
    return LanguageModel(BODIES[body](vocab), 32).eval()


def _pairs(nbests):
    return [[(h.tokens, h.score) for h in nb] for nb in nbests]


@torch.no_grad()
def _check_fused_scores(plain, fused, extra) -> int:
    """Every non-empty fused hypothesis also in the plain N-best scores plain + extra(tokens); → how many."""
    checked = 0
    for p_nb, f_nb in zip(plain, fused):
        p_scores = {h.tokens: h.score for h in p_nb}
        for h in f_nb:
            if h.tokens in p_scores and h.tokens:
                assert h.score == pytest.approx(p_scores[h.tokens] + extra(h.tokens), abs=1e-4)
                checked += 1
    return checked


def emitting_transducer(predictor="stateless", seed=3):
    m = tiny_transducer(predictor=predictor, seed=seed).eval()
    with torch.no_grad():
        m.joiner.out.bias[-1] -= 2.0  # a random model that emits labels
    torch.manual_seed(seed)
    x = torch.randn(3, 90, 80)
    return m, m(x, torch.tensor([90, 70, 50]))


@pytest.mark.parametrize("body", list(BODIES))
def test_lm_step_by_step_equals_forward_and_score(body):
    m = lm(30, body)
    y, n = padded([7, 4, 6], vocab=30)
    full = m(y).log_softmax(-1)  # (B, U+1, V+1)
    logp, state = m.start(3, "cpu")
    # feed the rows at different paces through select/where, as beam search does
    for u in range(y.shape[1]):
        torch.testing.assert_close(logp, full[:, u], atol=1e-5, rtol=1e-4)
        emit = torch.ones(3, dtype=torch.bool)
        state = m.select(state, torch.arange(3))
        for skip in range(2):  # a no-op step on alternating rows (where keeps the old state)
            mask = (torch.arange(3) % 2 == skip) if u % 2 else emit
            new_logp, new_state = m.step(y[:, u], state)
            state = m.where(mask, new_state, state)
            logp = torch.where(mask[:, None], new_logp, logp)
            emit = emit & ~mask
            if not emit.any():
                break
    by_hand = torch.stack([sum(full[i, u, y[i, u]] for u in range(k)) + full[i, k, m.eos]
                           for i, k in enumerate(n.tolist())])
    torch.testing.assert_close(m.score(y, n), by_hand, atol=1e-5, rtol=1e-4)


def test_transducer_ilm_is_the_joiner_with_a_zero_encoder_term():
    m, _ = emitting_transducer()
    y, _ = padded([6, 3], vocab=40)
    pred = m.predictor(y)  # (B, U+1, P)
    zeroed = tiny_transducer(seed=3).eval()
    zeroed.load_state_dict(m.state_dict())
    with torch.no_grad():
        zeroed.joiner.enc_proj.weight.zero_()
        zeroed.joiner.enc_proj.bias.zero_()
    logits = zeroed.joiner(torch.randn(2, 5, 32)[:, :, None], pred[:, None])  # (B, T, U+1, V+1), any encoder
    want = logits[..., :40].log_softmax(-1)
    got = m.internal_lm().logprobs(y)  # (B, U+1, V+1)
    for t in range(5):
        torch.testing.assert_close(got[..., :40], want[:, t], atol=1e-5, rtol=1e-4)
    assert not m.internal_lm().has_eos and torch.equal(got[..., 40], torch.zeros(2, 7))  # no end of sentence


@pytest.mark.parametrize("predictor", ["stateless", "lstm"])
def test_transducer_fusion_with_zero_weights_is_plain_beam_search(predictor):
    m, enc = emitting_transducer(predictor)
    plain = beam_search(m, enc, beam=4, nbest=4)
    zero = beam_search(m, enc, beam=4, nbest=4, fusion=Fusion(lm(40, "transformer"), 0.0, 0.0, 0.0))
    assert sum(len(h.tokens) for nb in plain for h in nb) > 0
    assert _pairs(zero) == _pairs(plain)


def test_transducer_fusion_scores_labels_only():
    """Each hypothesis's fused score is its plain score + λ_LM log P_LM(Y) − λ_ILM log P_ILM(Y) + β|Y|,
    with Y its labels: blank steps (most of the 90 frames) add nothing."""
    m, enc = emitting_transducer("lstm")
    ext = lm(40, "lstm", seed=1)
    f = Fusion(ext, lm_weight=2e-3, ilm_weight=1e-3, length_reward=1e-3, lm_eos=True)
    plain = beam_search(m, enc, beam=4, nbest=4)
    fused = beam_search(m, enc, beam=4, nbest=4, fusion=f)

    def extra(tokens):
        y, n = torch.tensor([tokens]), torch.tensor([len(tokens)])
        lm_score, ilm_score = float(ext.score(y, n, eos=True)), float(m.internal_lm().score(y, n))
        return f.lm_weight * lm_score - f.ilm_weight * ilm_score + f.length_reward * len(tokens)

    assert _check_fused_scores(plain, fused, extra) >= 3


def test_attention_fusion_zero_weights_and_score_formula():
    model = aed(seed=2).eval()
    with torch.no_grad():
        model.decoder.out.bias[V] += 2.0  # hypotheses end by themselves (not at the length limit)
    x, n = padded([9, 6], vocab=30)
    enc = model(x, n)
    ext = lm(V, "transformer", seed=4)
    plain = attention_beam_search(model, enc, beam=3)
    zero = attention_beam_search(model, enc, beam=3, fusion=Fusion(ext, 0.0, 0.0, 0.0))
    assert _pairs(zero) == _pairs(plain)
    f = Fusion(ext, lm_weight=1e-3, ilm_weight=1e-3, length_reward=1e-3)
    fused = attention_beam_search(model, enc, beam=3, fusion=f)

    def extra(tokens):
        y = torch.tensor([list(tokens)])
        ilm = model.decoder.internal_lm_logits(torch.cat([torch.tensor([[V]]), y], 1)).log_softmax(-1)[0]
        ilm_score = sum(float(ilm[u, t]) for u, t in enumerate(list(tokens) + [V]))
        lm_score = float(ext.score(y, torch.tensor([y.shape[1]])))
        return f.lm_weight * lm_score - f.ilm_weight * ilm_score + f.length_reward * len(tokens)

    assert _check_fused_scores(plain, fused, extra) >= 3


def test_fusion_rejects_bad_weights():
    with pytest.raises(ValueError, match="no external LM"):
        Fusion(None, lm_weight=0.3)
    with pytest.raises(ValueError, match=">= 0"):
        Fusion(lm(10), lm_weight=0.3, ilm_weight=-0.1)


def test_a_strong_lm_changes_the_transducer_result():
    m, enc = emitting_transducer("stateless")
    ext = lm(40, "stateless", seed=2)
    with torch.no_grad():  # an LM that only likes label 7
        ext.out.bias.fill_(-10.0)
        ext.out.bias[7] = 10.0
    fused = beam_search(m, enc, beam=4, fusion=Fusion(ext, lm_weight=5.0))
    plain = beam_search(m, enc, beam=4)
    share = [sum(t == 7 for t in nb[0].tokens) / max(len(nb[0].tokens), 1) for nb in fused]
    assert min(share) > max(sum(t == 7 for t in nb[0].tokens) / max(len(nb[0].tokens), 1) for nb in plain)
    assert not math.isnan(fused[0][0].score)


def test_mwer_loss_value_and_zero_gradient_when_errors_are_equal():
    from speechkit.train.mwer import mwer_loss

    scores = torch.tensor([[-1.0, -2.0, -3.0, 0.0], [-0.5, -0.1, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    errors = torch.tensor([[2.0, 0.0, 1.0, 9.0], [1.0, 3.0, 7.0, 7.0]])
    loss = mwer_loss(scores, errors, mask)
    p0 = torch.tensor([-1.0, -2.0, -3.0]).softmax(0)
    torch.testing.assert_close(loss[0], (p0 * (errors[0, :3] - 1.0)).sum())
    loss.sum().backward()
    assert scores.grad[0, 3] == 0 and scores.grad[1, 2:].abs().sum() == 0  # padding slots get nothing
    assert scores.grad[0, :3].abs().sum() > 0  # a lower score for more errors is learnt
    equal = torch.tensor([[2.0, 2.0, 2.0, 9.0], [4.0, 4.0, 7.0, 7.0]])
    s = scores.detach().clone().requires_grad_(True)
    mwer_loss(s, equal, mask).sum().backward()
    assert torch.count_nonzero(s.grad) == 0


def test_ilma_trains_only_the_joiner_output_and_keeps_the_blank_row():
    from speechkit.train.ilma import ILMATask

    m = tiny_transducer(seed=6)
    task = ILMATask(m, rho=0.5, lr=1e-2)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = task.configure_optimizers()
    y, n = padded([8, 5, 7], vocab=40, seed=3)
    first = None
    for _ in range(30):
        out = task.losses(y, n)
        loss = (out["ce"] + task.rho * out["kl"]) / 3
        first = first if first is not None else float(out["ce"].detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(task.losses(y, n)["ce"].detach()) < 0.8 * first  # the internal LM learns the text
    after = m.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"joiner.out.weight", "joiner.out.bias"}
    assert torch.equal(after["joiner.out.weight"][m.blank], before["joiner.out.weight"][m.blank])
    assert torch.equal(after["joiner.out.bias"][m.blank], before["joiner.out.bias"][m.blank])
    # KL to the frozen ILM: 0 at the start, > 0 after adaptation
    fresh = ILMATask(tiny_transducer(seed=6), 0.5)
    assert float(fresh.losses(y, n)["kl"].detach()) == pytest.approx(0.0, abs=1e-5)
    assert float(task.losses(y, n)["kl"].detach()) > 0.0


def test_ilm_training_term_is_the_internal_lm_cross_entropy():
    m = tiny_transducer(seed=2).eval()
    m.ilm_weight = 0.5
    y, n = padded([6, 4], vocab=40)
    enc = m(torch.randn(2, 60, 80), torch.tensor([60, 44]))
    out = {k: v.detach() for k, v in m.encoded_loss(enc, y, n).items()}
    logp = m.internal_lm().logprobs(y).detach()  # (B, U+1, V+1)
    want = -sum(float(logp[i, u, y[i, u]]) for i in range(2) for u in range(int(n[i]))) / 2
    assert float(out["ilm"]) == pytest.approx(want, rel=1e-5)
    want = float(out["rnnt"] + m.ctc_weight * out["ctc"] + 0.5 * out["ilm"])
    assert float(out["loss"]) == pytest.approx(want, rel=1e-5)


def test_aed_ilm_training_term_and_internal_lm():
    model = aed(seed=1).eval()  # no dropout: the two computations must agree
    model.ilm_weight = 0.3
    x, n = padded([9, 6], vocab=30)
    y, u = padded([5, 3], vocab=V, seed=4)
    out = {k: v.detach() for k, v in model.encoded_loss(model(x, n), y, u).items()}
    prev, _ = model.decoder.teacher_forcing(y, u)
    logp = model.internal_lm().logprobs(y).detach()  # (B, U+1, V+1)
    torch.testing.assert_close(logp, model.decoder.internal_lm_logits(prev).log_softmax(-1).detach())
    want = -sum(float(logp[i, k, t]) for i in range(2) for k, t in enumerate(y[i, : u[i]].tolist() + [V])) / 2
    assert float(out["ilm"]) == pytest.approx(want, rel=1e-5)
    total = float(model.ce_weight * out["ce"] + model.ctc_weight * out["ctc"] + 0.3 * out["ilm"])
    assert float(out["loss"]) == pytest.approx(total, rel=1e-5)


def test_mwer_scores_carry_gradient_into_the_model_but_not_the_lm():
    import torchaudio.functional as AF

    from speechkit.train.mwer import MWERTask, mwer_loss

    m = tiny_transducer(seed=4)
    task = MWERTask(m, ilm_weight=0.3, length_reward=0.5)
    ext = lm(40, "lstm", seed=5)
    task.lm, task.fusion = ext, Fusion(ext, 0.5, 0.3, 0.5)
    enc = m(torch.randn(2, 60, 80), torch.tensor([60, 48]))
    ys, lens = padded([5, 3, 4, 6], vocab=40, seed=7)  # two hypotheses per utterance
    scores = task.sequence_scores(enc, ys, lens)
    dec = m.decoder_input(enc)
    e2e = -AF.rnnt_loss(m.joiner(dec.hidden.repeat_interleave(2, 0)[:, :, None], m.predictor(ys)[:, None]),
                        ys.int(), dec.lengths.repeat_interleave(2, 0).int(), lens.int(), blank=m.blank,
                        reduction="none")
    want = e2e + 0.5 * ext.score(ys, lens) - 0.3 * m.internal_lm().score(ys, lens) + 0.5 * lens
    torch.testing.assert_close(scores, want, atol=1e-4, rtol=1e-5)
    errors = torch.tensor([[0.0, 2.0], [1.0, 4.0]])
    mwer_loss(scores.view(2, 2), errors, torch.ones(2, 2, dtype=torch.bool)).sum().backward()
    for part in (m.joiner, m.predictor, m.encoder):
        assert sum(float(p.grad.abs().sum()) for p in part.parameters() if p.grad is not None) > 0
    assert all(p.grad is None for p in ext.parameters())


def _token_lm(kind):
    """A ``TokenLM`` of each kind: external LMs and the internal LMs of every model class."""
    from builders import stast

    if kind.startswith("lm-"):
        return lm(30, kind[3:], seed=3)
    if kind == "aed":
        return aed(seed=2).eval().internal_lm()
    if kind == "stast":
        return stast().eval().internal_lm()
    torch.manual_seed(5)
    pred = BODIES[kind.split("-")[1]](40)
    return Transducer(tiny_transducer(seed=5).encoder, pred, Joiner(32, 32, 40, 32)).eval().internal_lm()


@pytest.mark.parametrize("kind", ["lm-transformer", "lm-lstm", "aed", "stast", "transducer-transformer",
                                  "transducer-stateless"])
@torch.no_grad()
def test_token_lm_stepping_equals_the_whole_sequence_call(kind):
    """The one LM protocol (models.base.TokenLM): stepping a batch token by token, through beam-style
    reorderings (select) and rows that stop early (where), gives the log-probs of the whole-sequence call,
    hence the same sequence scores, for the external LM and every model's internal LM."""
    m = _token_lm(kind)
    v = m.vocab_size
    y, n = padded([5, 2, 4], vocab=v, seed=6)
    want = m.token_logprobs(y, n)  # (B, U+1), the end of sentence at U_b
    perm = torch.tensor([2, 0, 1])
    logp, state = m.start(3, "cpu")
    got = []
    for u in range(y.shape[1] + 1):
        nxt = torch.where(n == u, v, y[:, min(u, y.shape[1] - 1)])
        got.append(torch.where(u <= n, logp.gather(1, nxt[:, None])[:, 0], 0.0))
        if u == y.shape[1]:
            break
        state, logp = m.select(state, perm), logp[perm]  # reorder the rows, step, and back
        emit = (u < n)[perm]
        new_logp, new_state = m.step(torch.where(emit, y[perm, u], v), state)
        state, logp = m.where(emit, new_state, state), torch.where(emit[:, None], new_logp, logp)
        back = perm.argsort()
        state, logp = m.select(state, back), logp[back]
    torch.testing.assert_close(torch.stack(got, 1), want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(m.score(y, n), want.sum(1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(m.score(y, n, eos=False), want.sum(1) - want.gather(1, n[:, None])[:, 0])


def test_ilm_loss_is_the_internal_lm_cross_entropy_and_kl():
    from speechkit.models.base import ilm_loss

    m = aed(seed=1).eval()
    y, n = padded([5, 3], vocab=V, seed=2)
    ilm = m.internal_lm()
    out = ilm_loss(ilm, y, n, reference=ilm)
    torch.testing.assert_close(out["ce"], -ilm.score(y, n))
    torch.testing.assert_close(out["kl"], torch.zeros(2), atol=1e-6, rtol=0)
    inp, tgt = m.decoder.teacher_forcing(y, n)
    ce = torch.nn.functional.cross_entropy(m.decoder.internal_lm_logits(inp).flatten(0, 1), tgt.flatten(),
                                           reduction="sum")
    torch.testing.assert_close(out["ce"].sum(), ce)


def test_mwer_checks_its_lm_by_tokenizer_fingerprint_like_decode(tmp_path):
    from pathlib import Path

    from speechkit.nn.brick import BrickError
    from speechkit.tokenizer import train_tokenizer
    from speechkit.train.mwer import MWERTask

    v1 = Path(__file__).parents[1] / "fixtures" / "bricks_v1"
    same = load_brick(v1 / "lm").tokenizer  # the LM brick's own: 24 pieces
    other = train_tokenizer(["the cat sat on the mat", "a dog ran in the park", "we see the sea",
                             "hello there my friend", "good morning to you all", "one two three four"] * 3,
                            tmp_path / "other.model", vocab_size=24)  # as many pieces, other ones

    class Trainer:  # what MWERTask.setup reads of a trainer
        def __init__(self, tok):
            self.datamodule = type("DM", (), {"tokenizer": tok, "tokenizer_path": tok.path})()

    task = MWERTask(tiny_transducer(24), lm=str(v1 / "lm"), lm_weight=0.3, ilm_weight=0.1)
    assert task.lm is None and task.fusion.lm is None  # loaded in setup, where the data's tokenizer is known
    task.trainer = Trainer(other)
    with pytest.raises(BrickError, match="tokenizer"):
        task.setup("validate")
    task.trainer = Trainer(same)
    task.setup("validate")
    assert task.fusion.lm is task.lm and task.fusion.lm_weight == 0.3 and task.fusion.ilm_weight == 0.1
    assert not any(p.requires_grad for p in task.lm.parameters())
