"""Property tests of the encoder, transducer search and brick I/O on random weights."""

import pytest
import torch
from conftest import tiny_transducer

from speechkit.nn.brick import BrickError
from speechkit.pipelines.bricks import load_brick, save_brick
from speechkit.search.transducer import beam_search, ctc_greedy, greedy_search


@pytest.mark.parametrize("frontend", ["stack", "conv2d"])
def test_encoder_padding_invariance(frontend):
    m = tiny_transducer(frontend=frontend).eval()
    torch.manual_seed(1)
    x = torch.randn(1, 97, 80)
    alone = m(x, torch.tensor([97]))
    padded = torch.cat([x, 100 * torch.randn(1, 60, 80)], dim=1)  # loud garbage padding
    other = torch.randn(1, 157, 80)
    batch = m(torch.cat([padded, other]), torch.tensor([97, 157]))
    n = int(alone.lengths[0])
    assert int(batch.lengths[0]) == n
    torch.testing.assert_close(batch.hidden[0, :n], alone.hidden[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batch.logits[0, :n], alone.logits[0], atol=1e-5, rtol=1e-4)
    assert batch.hidden[0, n:].abs().max() == 0  # padded frames are zeroed


@pytest.mark.parametrize("predictor", ["stateless", "lstm"])
def test_greedy_batched_equals_one_by_one(predictor):
    m = tiny_transducer(predictor=predictor, seed=3).eval()
    # bias the joiner away from blank so the random model emits labels
    with torch.no_grad():
        m.joiner.out.bias[-1] -= 3.0
    torch.manual_seed(2)
    lens = [120, 64, 93, 40]
    x = torch.randn(len(lens), max(lens), 80)
    batched = greedy_search(m, m(x, torch.tensor(lens)))
    single = [greedy_search(m, m(x[i:i + 1, :n], torch.tensor([n])))[0] for i, n in enumerate(lens)]
    assert batched == single
    assert sum(len(h) for h in batched) > 0


def test_beam_search_nbest_sorted_and_beam1_matches_greedy_when_one_label_per_frame():
    m = tiny_transducer(seed=5).eval()
    torch.manual_seed(4)
    x = torch.randn(2, 80, 80)
    enc = m(x, torch.tensor([80, 60]))
    nb = beam_search(m, enc, beam=4, nbest=3)
    for hyps in nb:
        assert 1 <= len(hyps) <= 3
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({h.tokens for h in hyps}) == len(hyps)  # merged: no duplicates
    for symbols in (1, 3):  # a one-slot beam is greedy search, for any number of labels per frame
        one = beam_search(m, enc, beam=1, max_symbols=symbols)
        assert [list(h[0].tokens) for h in one] == greedy_search(m, enc, max_symbols=symbols)


@pytest.mark.parametrize("predictor,symbols", [("stateless", 1), ("lstm", 1), ("stateless", 3)])
def test_beam_search_batched_equals_one_by_one(predictor, symbols):
    m = tiny_transducer(predictor=predictor, seed=3).eval()
    with torch.no_grad():
        m.joiner.out.bias[-1] -= 3.0  # emit labels
    torch.manual_seed(2)
    lens = [120, 64, 93, 40]
    x = torch.randn(len(lens), max(lens), 80)
    batched = beam_search(m, m(x, torch.tensor(lens)), beam=3, nbest=3, max_symbols=symbols)
    for i, n in enumerate(lens):
        alone = beam_search(m, m(x[i:i + 1, :n], torch.tensor([n])), beam=3, nbest=3, max_symbols=symbols)[0]
        assert [h.tokens for h in batched[i]] == [h.tokens for h in alone]
        assert [h.score for h in batched[i]] == pytest.approx([h.score for h in alone], rel=1e-4)
    assert all(len(nb) == 3 and nb[0].tokens for nb in batched)


def test_ctc_greedy_collapses_repeats_and_blanks():
    from speechkit.lego.interface import Encoded

    v = 3  # blank = 3
    path = torch.tensor([[0, 0, 3, 0, 1, 1, 3, 3, 2]])
    logits = torch.nn.functional.one_hot(path, v + 1).float()
    assert ctc_greedy(Encoded(logits, torch.tensor([9]), logits)) == [[0, 0, 1, 2]]
    assert ctc_greedy(Encoded(logits, torch.tensor([4]), logits)) == [[0, 0]]
    assert ctc_greedy(Encoded(logits, torch.tensor([2]), logits)) == [[0]]


def test_brick_save_load_identical_outputs(tmp_path, model):
    torch.manual_seed(0)
    with torch.no_grad():
        model.encoder.cmvn.set_stats(torch.randn(80) * 50, torch.rand(80) * 1e4 + 3000, 50)
    save_brick(model, tmp_path / "b", {"kind": "test"})
    b = load_brick(tmp_path / "b")
    loaded, iface = b.module, b.interface
    assert iface["kind"] == "test"
    assert not (tmp_path / "b").joinpath("weights.pt").exists()
    x, n = torch.randn(2, 90, 80), torch.tensor([90, 70])
    a, b = model(x, n), loaded(x, n)
    assert torch.equal(a.hidden, b.hidden) and torch.equal(a.logits, b.logits)
    assert greedy_search(model, a) == greedy_search(loaded, b)
    assert bool(loaded.encoder.cmvn.initialized)


def test_brick_refuses_foreign_class_and_mismatched_weights(tmp_path, model):
    d = save_brick(model, tmp_path / "b", {"kind": "test"})
    cfg = (d / "config.yaml").read_text()
    (d / "config.yaml").write_text(cfg.replace("speechkit.models.transducer.Transducer", "os.system", 1))
    with pytest.raises(BrickError, match="outside"):
        load_brick(d)
    (d / "config.yaml").write_text(cfg.replace("layers: 2", "layers: 3", 1))
    with pytest.raises(BrickError, match="weights do not match"):
        load_brick(d)


def test_transducer_loss_decreases_on_one_batch():
    m = tiny_transducer(seed=1).train()
    torch.manual_seed(0)
    x, n = torch.randn(3, 100, 80), torch.tensor([100, 90, 70])
    y, yl = torch.randint(0, 40, (3, 6)), torch.tensor([6, 5, 4])
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    first = None
    for _ in range(30):
        loss = m.loss(x, n, y, yl)["loss"]
        first = first if first is not None else loss.detach().item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.detach().item() < 0.5 * first


def test_mismatched_vocab_parts_are_refused():
    from speechkit.lego.transducer import Joiner
    from speechkit.models.transducer import Transducer

    m = tiny_transducer()
    with pytest.raises(ValueError, match="disagree"):
        Transducer(m.encoder, m.predictor, Joiner(32, 32, 41, 32))


def test_skipped_loss_terms_are_not_computed():
    m = tiny_transducer(seed=2).train()
    x, n = torch.randn(2, 64, 80), torch.tensor([64, 50])
    y, yl = torch.randint(0, 40, (2, 4)), torch.tensor([4, 3])
    out = m.loss(x, n, y, yl, scales={"rnnt": 0})
    assert set(out) == {"ctc", "loss"}
    torch.testing.assert_close(out["loss"], m.ctc_weight * out["ctc"])
    out["loss"].backward()
    assert all(p.grad is None for p in m.predictor.parameters())  # the transducer was not run


def test_every_preset_in_the_catalogue_builds():
    from pathlib import Path

    import yaml

    from speechkit.lego.interface import Encoded
    from speechkit.nn.brick import build

    presets = sorted((Path(__file__).parents[2] / "modules").rglob("*.yaml"))
    assert len(presets) >= 6
    for p in presets:
        brick = build(yaml.safe_load(p.read_text()), where=str(p)).eval()
        if p.parent.name == "decoders":  # reads marginals of its vocabulary, emits V+1 logits per step
            marg = torch.randn(1, 12, brick.vocab_size + 1)
            mem, n = brick.memory(Encoded(torch.zeros(1, 12, 1), torch.tensor([12]), marg))
            assert brick(mem, n, torch.tensor([[brick.eos, 3, 4]])).shape == (1, 3, brick.vocab_size + 1)
            continue
        inputs = {"fbank": torch.randn(1, 64, 80), "tokens": torch.randint(0, 100, (1, 16)),
                  "marginals": torch.randn(1, 16, 129)}[brick.input_kind]
        enc = brick(inputs, torch.tensor([inputs.shape[1]]))
        assert enc.logits.shape[-1] == brick.vocab_size + 1, p
        assert enc.lengths.tolist() == brick.output_lengths(torch.tensor([inputs.shape[1]])).tolist()


@pytest.mark.parametrize("name", ["stateless1", "stateless3", "lstm", "transformer"])
def test_predictor_step_by_step_equals_forward(name):
    from speechkit.lego.transducer import LSTMPredictor, StatelessPredictor, TransformerPredictor

    torch.manual_seed(0)
    pred = {"stateless1": StatelessPredictor(20, 16, 1), "stateless3": StatelessPredictor(20, 16, 3),
            "lstm": LSTMPredictor(20, 16), "transformer": TransformerPredictor(20, 16, 2, 2)}[name].eval()
    y = torch.randint(0, 20, (3, 6))
    want = pred(y)  # (B, U+1, P)
    out, state = pred.step(torch.full((3,), 20), pred.initial_state(3, None))
    got = [out]
    for u in range(6):
        out, state = pred.step(y[:, u], state)
        got.append(out)
    torch.testing.assert_close(torch.stack(got, 1), want, atol=1e-5, rtol=1e-4)
