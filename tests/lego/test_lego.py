"""LegoNN bricks: ingestors, length control, chains, attention decoders, beam search, compose."""

import math

import pytest
import torch
from builders import D, V, aed, middle_encoder, padded, text_encoder

from speechkit.lego.decoders import AttentionDecoder
from speechkit.lego.encoders import Chain
from speechkit.lego.interface import BeamConv, LengthController, WEmb
from speechkit.lego.transducer import Joiner, StatelessPredictor
from speechkit.models.transducer import Transducer
from speechkit.nn.brick import BrickError
from speechkit.pipelines.bricks import load_brick, save_brick
from speechkit.pipelines.compose import compose, save_composed
from speechkit.search.attention import attention_beam_search
from speechkit.search.dispatch import search
from speechkit.tokenizer import train_tokenizer


@pytest.mark.parametrize("ingestor", [WEmb(V, D, 1, 2, 2, kernel_size=3), BeamConv(V, D, 3, 1, 2, 2)])
def test_ingestor_shapes_and_padding_invariance(ingestor):
    ingestor.eval()
    torch.manual_seed(0)
    logits = torch.randn(3, 9, V + 1) * 3
    lengths = torch.tensor([9, 5, 2])
    out, out_len = ingestor(logits, lengths)
    assert out.shape == (3, 9, D) and out_len.tolist() == [9, 5, 2]
    for i, n in enumerate(lengths.tolist()):
        alone, _ = ingestor(logits[i:i + 1, :n], lengths[i:i + 1])
        torch.testing.assert_close(out[i, :n], alone[0], atol=1e-5, rtol=1e-4)
        assert out[i, n:].abs().max() == 0 if n < 9 else True
    with pytest.raises(ValueError, match="expects 21 marginals"):
        ingestor(torch.randn(1, 4, V + 5), torch.tensor([4]))


def test_gradient_crosses_wemb_but_not_beamconv():
    for ingestor, crosses in ((WEmb(V, D, 1, 2, 2), True), (BeamConv(V, D, 3, 1, 2, 2), False)):
        logits = torch.randn(2, 6, V + 1, requires_grad=True)
        out, _ = ingestor(logits, torch.tensor([6, 4]))
        out.pow(2).sum().backward()
        got = logits.grad is not None and logits.grad.abs().sum() > 0
        assert got == crosses, type(ingestor).__name__
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ingestor.parameters())


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.5, 3.0])
def test_length_controller_gives_exactly_k_and_respects_padding(alpha):
    lc = LengthController(D, alpha, 2).eval()
    torch.manual_seed(0)
    x = torch.randn(3, 7, D)
    lengths = torch.tensor([7, 4, 1])
    y, k = lc(x, lengths)
    expect = [max(1, math.ceil(alpha * n)) for n in lengths.tolist()]
    assert k.tolist() == expect and y.shape == (3, max(expect), D)
    for i, n in enumerate(lengths.tolist()):
        noisy = x.clone()
        noisy[i, n:] = 1e3  # loud garbage in the padding
        y2, _ = lc(noisy, lengths)
        alone, _ = lc(x[i:i + 1, :n], lengths[i:i + 1])
        torch.testing.assert_close(y2[i, : expect[i]], alone[0], atol=1e-5, rtol=1e-4)
        assert y[i, expect[i]:].abs().max() == 0 if expect[i] < y.shape[1] else True


def test_chain_of_three_bricks_lengths_and_one_ctc_per_interface():
    model = aed(Chain([text_encoder(alpha=3.0), middle_encoder(alpha=0.5)])).eval()
    x, n = padded([5, 3])
    enc = model(x, n)
    assert enc.lengths.tolist() == [8, 5]  # ceil(0.5·ceil(3·T))
    assert len(enc.previous) == 1 and enc.previous[0].lengths.tolist() == [15, 9]
    assert model.encoder.output_lengths(n).tolist() == [8, 5]
    targets, tl = torch.randint(0, V, (2, 4)), torch.tensor([4, 2])
    single = aed(model.encoder.bricks[0]).eval()
    chained, alone = model.encoded_loss(enc, targets, tl), single.encoded_loss(single(x, n), targets, tl)
    assert chained["ctc"] > alone["ctc"]  # the middle interface adds its own CTC term
    with pytest.raises(ValueError, match="no marginal head"):
        Chain([text_encoder(head=False), middle_encoder()])(x, n)


def test_teacher_forcing_layout():
    dec = AttentionDecoder(V, D, 1, 2, 2)
    inp, out = dec.teacher_forcing(torch.tensor([[3, 4, 5], [6, 7, 0]]), torch.tensor([3, 2]))
    assert inp.tolist() == [[V, 3, 4, 5], [V, 6, 7, 0]]
    assert out.tolist() == [[3, 4, 5, V], [6, 7, V, -100]]


def test_attention_model_learns_a_batch_and_beam_search_finds_it():
    torch.manual_seed(0)
    model = aed()
    x, n = padded([6, 4, 5])
    targets = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0], [7, 8, 9, 0]])
    tl = torch.tensor([4, 2, 3])
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(60):
        loss = model.loss(x, n, targets, tl)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    enc = model(x, n)
    greedy = [nb[0] for nb in attention_beam_search(model, enc, beam=1)]
    assert [g.tokens for g in greedy] == [(1, 2, 3, 4), (5, 6), (7, 8, 9)]
    nbest = attention_beam_search(model, enc, beam=4, nbest=4)
    for nb, g in zip(nbest, greedy):
        ranks = [h.score / (len(h.tokens) + 1) for h in nb]
        assert len(nb) == 4 and len({h.tokens for h in nb}) == 4
        assert ranks == sorted(ranks, reverse=True)
        assert ranks[0] >= g.score / (len(g.tokens) + 1) - 1e-5  # never worse than greedy


def test_attention_decoder_internal_lm_is_the_decoder_with_zero_context():
    torch.manual_seed(0)
    dec = AttentionDecoder(vocab_size=11, dim=32, layers=2, heads=4).eval()
    prev = torch.cat([torch.full((3, 1), 11), torch.randint(0, 11, (3, 6))], 1)
    memory, lengths = torch.randn(3, 9, 32), torch.tensor([9, 4, 7])
    ilm = dec.internal_lm_logits(prev)
    assert ilm.shape == (3, 7, 12)
    assert not torch.allclose(ilm, dec(memory, lengths, prev), atol=1e-3)  # the context matters...
    with torch.no_grad():
        for layer in dec.layers:  # ...and with every cross-attention output zeroed it is all there is
            layer.multihead_attn.out_proj.weight.zero_()
            layer.multihead_attn.out_proj.bias.zero_()
    torch.testing.assert_close(dec(memory, lengths, prev), ilm)
    torch.testing.assert_close(dec.internal_lm_logits(prev[:, :4]), ilm[:, :4])  # causal


def test_attention_beam_search_batched_equals_one_by_one():
    model = aed(seed=3).eval()
    x, n = padded([6, 2, 4], seed=5)
    batched = attention_beam_search(model, model(x, n), beam=3, nbest=3)
    for i in range(3):
        alone = attention_beam_search(model, model(x[i:i + 1, : n[i]], n[i:i + 1]), beam=3, nbest=3)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in batched[i]], abs=1e-4)


def test_lego_transducer_reads_ingested_marginals_and_swaps_encoders():
    torch.manual_seed(0)
    model = Transducer(text_encoder(), StatelessPredictor(V, D), Joiner(D, D, V, D),
                       ingestor=WEmb(V, D, 1, 2, 2))
    x, n = padded([5, 3])
    out = model.loss(x, n, torch.randint(0, V, (2, 3)), torch.tensor([3, 2]))
    assert torch.isfinite(out["rnnt"]) and torch.isfinite(out["ctc"])
    out["loss"].backward()
    assert model.encoder.head.proj.weight.grad.abs().sum() > 0
    model.eval()
    other = text_encoder(seed=7).eval()  # any encoder with the same head vocabulary fits
    swapped = Transducer(other, model.predictor, model.joiner, ingestor=model.ingestor).eval()
    assert len(search(swapped, swapped(x, n))) == 2


def _tok(path, letters):
    """A character tokenizer with exactly V pieces (18 letters, "▁", <unk>)."""
    texts = [" ".join(letters[i:i + 3] for i in range(j, 18, 3)) for j in range(3)] * 5
    return train_tokenizer(texts, path, vocab_size=V, model_type="char")


def _brick(model, directory, tok, ratio=None):
    ratio = ratio or {"p5": 1.5, "median": 2.0, "p95": 3.0, "mean": 2.0}
    iface = {"kind": type(model).__name__, "input": {"kind": "text", **tok.info()}, "input_kind": "tokens",
             "target_lang": "en", "length_ratio": ratio}
    save_brick(model, directory, iface, {"target": tok, "source": tok})
    return directory


def test_compose_joins_reloads_identically_and_refuses_mismatches(tmp_path):
    tok = _tok(tmp_path / "en.model", "abcdefghijklmnopqr")
    other = _tok(tmp_path / "xx.model", "ijklmnopqrstuvwxyz")
    a = _brick(aed(seed=1).eval(), tmp_path / "a", tok)
    b = _brick(aed(seed=2).eval(), tmp_path / "b", tok)
    c = _brick(aed(seed=3).eval(), tmp_path / "c", other)
    model, iface = compose([str(a)], str(b))
    src = load_brick(a).module
    dst = load_brick(b).module
    x, n = padded([5, 3])
    enc = model(x, n)
    torch.testing.assert_close(enc.logits, src(x, n).logits)  # the encoder of a ...
    assert model.decoder.out.weight.data_ptr() == dst.decoder.out.weight.data_ptr() or torch.equal(
        model.decoder.out.weight, dst.decoder.out.weight)  # ... with the decoder of b
    out = save_composed(model, iface, tmp_path / "ab")
    again = load_brick(out).module
    h1 = [nb[0].tokens for nb in search(model, model(x, n), beam=2)]
    h2 = [nb[0].tokens for nb in search(again, again(x, n), beam=2)]
    assert h1 == h2
    with pytest.raises(BrickError) as e:
        compose([str(c)], str(b))
    assert other.fingerprint in str(e.value) and tok.fingerprint in str(e.value)
    mono = _brick(aed(text_encoder(head=False), ingestor=None).eval(), tmp_path / "mono", tok)
    with pytest.raises(BrickError, match="hidden states"):
        compose([str(a)], str(mono))
    assert compose([str(a)], str(mono), allow_hidden=True)[0] is not None


def test_compose_adjusts_alpha_out_of_range_and_keeps_it_on_disk(tmp_path):
    tok = _tok(tmp_path / "en.model", "abcdefghijklmnopqr")
    a = _brick(aed(text_encoder(alpha=3.0), seed=1).eval(), tmp_path / "a", tok,
               {"p5": 2.0, "median": 3.0, "p95": 4.5, "mean": 3.0})
    b = _brick(aed(seed=2).eval(), tmp_path / "b", tok, {"p5": 1.2, "median": 1.5, "p95": 2.0, "mean": 1.5})
    msgs = []
    model, iface = compose([str(a)], str(b), log=msgs.append)
    assert any("setting alpha 3.000 → 1.500" in m for m in msgs)
    assert model.encoder.length.alpha == pytest.approx(1.5) and iface["length_ratio"]["median"] == 1.5
    again = load_brick(save_composed(model, iface, tmp_path / "ab")).module
    assert again.encoder.length.alpha == pytest.approx(1.5)
    msgs.clear()
    compose([str(b)], str(b), log=msgs.append)  # in range: untouched, silent
    assert msgs == []


def test_compose_chain_with_middle_stage(tmp_path):
    tok = _tok(tmp_path / "en.model", "abcdefghijklmnopqr")
    a = _brick(aed(seed=1).eval(), tmp_path / "a", tok)
    chain = _brick(aed(Chain([text_encoder(seed=4), middle_encoder(alpha=0.75)]), seed=4).eval(),
                   tmp_path / "chain", tok)
    b = _brick(aed(seed=2).eval(), tmp_path / "b", tok)
    model, iface = compose([str(a), f"{chain}#1"], str(b), log=lambda m: None)
    assert isinstance(model.encoder, Chain) and len(model.encoder.bricks) == 2
    assert iface["length_ratio"]["median"] == pytest.approx(1.5)  # 2.0 · 0.75
    with pytest.raises(BrickError, match="no stage"):
        compose([str(a), f"{chain}#5"], str(b))
    with pytest.raises(BrickError, match="not marginals"):
        compose([str(a), str(a)], str(b))


def test_init_from_copies_a_part_of_a_brick_and_freeze_stops_training(tmp_path):
    from speechkit.train.module import SpeechTask

    tok = _tok(tmp_path / "en.model", "abcdefghijklmnopqr")
    src = _brick(aed(seed=1).eval(), tmp_path / "src", tok)
    task = SpeechTask(aed(seed=2), init_from={"encoder": f"{src}#encoder"}, freeze=["encoder"])
    loaded = load_brick(src).module
    for (name, a), b in zip(task.model.encoder.state_dict().items(), loaded.encoder.state_dict().values()):
        assert torch.equal(a, b), name
    assert not any(p.requires_grad for p in task.model.encoder.parameters())
    assert all(p.requires_grad for p in task.model.decoder.parameters())
    with pytest.raises(BrickError, match="do not match"):
        SpeechTask(aed(text_encoder(src_vocab=31)), init_from={"encoder": f"{src}#encoder"})


@pytest.mark.parametrize("cross", [False, True])
@torch.no_grad()
def test_transformer_layers_step_equals_the_causal_forward(cross):
    """``TransformerLayers.step`` (one position per call against the key/value cache) equals the whole
    causal forward, through beam reorderings (select) and rows that pause (where); with cross-attention
    each memory (with its padding) is shared by a beam of 2 rows."""
    from speechkit.nn.masks import causal_mask, padding_mask
    from speechkit.nn.transformer import TransformerLayers

    torch.manual_seed(0)
    layers = TransformerLayers(2, D, 4, 64, cross=cross).eval()
    x = torch.randn(4, 7, D)
    memory, mem_lens = (torch.randn(2, 5, D), torch.tensor([5, 3])) if cross else (None, None)
    rows_memory = None if memory is None else memory.repeat_interleave(2, 0)  # (4, K, D) one per row
    pad = None if memory is None else padding_mask(mem_lens.repeat_interleave(2, 0), 5)
    want = layers(x, causal=causal_mask(7), memory=rows_memory, memory_pad=pad)  # (4, 7, D)
    state = layers.initial_state(4, "cpu", memory, mem_lens)
    perm = torch.tensor([1, 0, 3, 2])  # swaps within each beam
    got = torch.zeros_like(want)
    late = torch.isin(perm, torch.tensor([0, 3]))  # rows 0 and 3 sit out a step (where keeps their state)
    for u in range(7):
        for go in (~late, late):
            state = state.select(perm)
            out, new = layers.step(x[perm, u], state)
            state = new.where(go, state)
            got[perm[go], u] = out[go]
            state = state.select(perm.argsort())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_attention_decoder_step_equals_the_full_prefix_and_its_internal_lm():
    torch.manual_seed(0)
    dec = AttentionDecoder(vocab_size=11, dim=32, layers=2, heads=4).eval()
    prev = torch.cat([torch.full((3, 1), 11), torch.randint(0, 11, (3, 6))], 1)
    memory, lengths = torch.randn(3, 9, 32), torch.tensor([9, 4, 7])
    for mem, want in (((memory, lengths), dec(memory, lengths, prev)), ((), dec.internal_lm_logits(prev))):
        state, steps = dec.initial_state(3, "cpu", *mem), []
        for u in range(prev.shape[1]):
            logits, state = dec.step(prev[:, u], state)
            steps.append(logits)
        torch.testing.assert_close(torch.stack(steps, 1), want, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_attention_beam_search_scores_are_the_full_prefix_log_probs():
    """The incremental search scores each hypothesis as the decoder run on its whole prefix does."""
    model = aed(seed=2).eval()
    model.decoder.out.bias[V] += 2.0  # hypotheses end by themselves
    x, n = padded([9, 6], vocab=30)
    enc = model(x, n)
    mem, mem_lens = model.decoder.memory(enc)
    checked = 0
    for i, nb in enumerate(attention_beam_search(model, enc, beam=3, nbest=3)):
        for h in nb:
            prev = torch.tensor([[V, *h.tokens]])
            logp = model.decoder(mem[i:i + 1], mem_lens[i:i + 1], prev).log_softmax(-1)[0]  # (L, V+1)
            assert h.score == pytest.approx(sum(float(logp[u, t]) for u, t in enumerate([*h.tokens, V])),
                                            abs=1e-4)
            checked += 1
    assert checked == 6
