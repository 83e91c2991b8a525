"""STAST: the CTC shrink, the adaptation distances and the shared ST/MT parameters."""

import pytest
import torch
import torch.nn.functional as F
from builders import SRC, TGT, D, batch, stast

from speechkit.lego.decoders import AttentionDecoder
from speechkit.lego.encoders import SequenceEncoder, SpeechEncoder
from speechkit.lego.interface import Encoded, MarginalHead, Shrink
from speechkit.models.stast import STAST, adaptation_distance, resample
from speechkit.nn.conformer import Conformer
from speechkit.nn.subsampling import FrameStack
from speechkit.nn.transformer import TokenEmbedding, TransformerStack
from speechkit.search.dispatch import search
from speechkit.search.transducer import ctc_greedy

BLANK = SRC


def path_logits(paths: list[list[int]], vocab: int = SRC) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, T, V+1) whose argmax is each given frame label path (padding: random labels)."""
    t = max(map(len, paths))
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(len(paths), t, vocab + 1, generator=g)
    for i, p in enumerate(paths):
        labels = p + torch.randint(0, vocab + 1, (t - len(p),), generator=g).tolist()  # garbage padding
        logits[i, torch.arange(t), labels] += 20.0
    return logits, torch.tensor([len(p) for p in paths])


def test_shrink_averages_runs_and_matches_ctc_segments():
    b = BLANK
    logits, lengths = path_logits([[3, 3, b, 3, 5, 5, 5, b, b, 7]])
    hidden = torch.arange(10, dtype=torch.float)[None, :, None].repeat(1, 1, 2)  # frame t holds value t
    out, n = Shrink()(hidden, logits, lengths)
    # segments: frames {0,1} label 3; {3} label 3 again (after a blank); {4,5,6} label 5; {9} label 7
    assert n.tolist() == [4]
    assert out[0, :, 0].tolist() == [0.5, 3.0, 5.0, 9.0]
    assert n.tolist() == [len(h) for h in ctc_greedy(Encoded(hidden, lengths, logits))]


def test_shrink_posterior_weighting_is_exact():
    b = BLANK
    logits = torch.full((1, 3, SRC + 1), -30.0)
    logits[0, 0, 2], logits[0, 0, b] = 1.0, 0.0  # label 2 with p = e/(e+1)
    logits[0, 1, 2] = 3.0  # label 2 with p ≈ 1
    logits[0, 2, b] = 5.0
    hidden = torch.tensor([[[1.0], [4.0], [100.0]]])
    out, n = Shrink("posterior")(hidden, logits, torch.tensor([3]))
    p = logits.softmax(-1).amax(-1)[0]
    assert n.tolist() == [1]
    torch.testing.assert_close(out[0, 0, 0], (p[0] * 1 + p[1] * 4) / (p[0] + p[1]))


def test_shrink_length_equals_segment_count_and_is_batch_and_padding_invariant():
    torch.manual_seed(0)
    lengths = torch.tensor([23, 9, 1, 16])
    logits = torch.randn(4, 23, SRC + 1) * 3
    logits[..., BLANK] += 1.5
    hidden = torch.randn(4, 23, D, requires_grad=True)
    shrink = Shrink()
    out, n = shrink(hidden, logits, lengths)
    assert n.tolist() == [max(len(h), 1) for h in ctc_greedy(Encoded(hidden, lengths, logits))]
    assert out.shape == (4, int(n.max()), D)
    for i, m in enumerate(lengths.tolist()):
        alone, k = shrink(hidden[i:i + 1, :m], logits[i:i + 1, :m], lengths[i:i + 1])
        assert k.item() == n[i].item()
        torch.testing.assert_close(out[i, :k.item()], alone[0])
        assert out[i, k.item():].abs().sum() == 0  # padded segments are zero
    out.sum().backward()  # gradients reach the frames that survive, not the padding
    for i, m in enumerate(lengths.tolist()):
        assert hidden.grad[i, m:].abs().sum() == 0


def test_shrink_falls_back_to_mean_pooling_when_everything_is_blank():
    logits, lengths = path_logits([[BLANK] * 4, [1, BLANK, 2]])
    hidden = torch.arange(8, dtype=torch.float).view(2, 4, 1)
    out, n = Shrink()(hidden, logits, lengths)
    assert n.tolist() == [1, 2]
    assert out[0, 0, 0].item() == pytest.approx(1.5)  # mean of frames 0..3
    assert out[1, :2, 0].tolist() == [4.0, 6.0]


def test_resample_matches_interpolate_row_by_row():
    torch.manual_seed(0)
    x = torch.randn(5, 9, D, requires_grad=True)
    lengths, targets = torch.tensor([9, 4, 1, 6, 3]), torch.tensor([5, 4, 3, 11, 1])
    out = resample(x, lengths, targets)
    assert out.shape == (5, 11, D)
    for i, (n, m) in enumerate(zip(lengths.tolist(), targets.tolist())):
        ref = F.interpolate(x[i, :n].T[None], size=m, mode="linear", align_corners=True)[0].T
        torch.testing.assert_close(out[i, :m], ref)
        assert out[i, m:].abs().sum() == 0
    assert torch.equal(out[1, :4], x[1, :4])  # already of its target length: unchanged
    out.sum().backward()
    assert x.grad[0, :9].abs().sum() > 0 and x.grad[1, 4:].abs().sum() == 0  # padding gets no gradient


def test_adaptation_distances():
    torch.manual_seed(0)
    text, tl = torch.randn(3, 5, D), torch.tensor([5, 3, 4])
    for kind in ("mse_mean", "token_mse"):
        assert adaptation_distance(kind, text, tl, text, tl).abs().max() < 1e-6  # identical → 0
        assert (adaptation_distance(kind, torch.randn(3, 6, D), torch.tensor([6, 2, 5]), text, tl) > 0).all()
    # token_mse resamples the speech side: a sequence stretched ×2 by repetition is close to itself
    stretched = text.repeat_interleave(2, 1)
    near = adaptation_distance("token_mse", stretched, tl * 2, text, tl)
    far = adaptation_distance("token_mse", stretched.flip(1), tl * 2, text, tl)
    assert (near < far).all()
    aligned = adaptation_distance("contrastive", text, tl, text, tl)
    shuffled = adaptation_distance("contrastive", text[[1, 2, 0]], tl[[1, 2, 0]], text, tl)
    assert aligned.sum() < shuffled.sum()
    with pytest.raises(ValueError, match="adapt_distance"):
        adaptation_distance("cosine", text, tl, text, tl)


@pytest.mark.parametrize("distance", ["mse_mean", "token_mse", "contrastive"])
def test_st_and_mt_paths_share_parameters(distance):
    model = stast(adapt_distance=distance)
    mt = model.mt_model()
    assert mt.encoder is model.text_encoder and mt.decoder is model.decoder
    feats, lens, tgt, tgt_lens, tr = batch()
    shared = list(model.text_encoder.body.named_parameters()) + list(model.decoder.named_parameters())
    for term in ("st", "mt"):  # each CE term alone trains the shared modules
        model.zero_grad()
        off = {"st", "mt", "ctc", "adapt"} - {term}
        out = model.loss(feats, lens, tgt, tgt_lens, scales=dict.fromkeys(off, 0), **tr)
        out["loss"].backward()
        assert set(out) == {term, "loss"}
        for name, p in shared:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{term} does not train {name}"
        acoustic_grad = sum(p.grad.abs().sum() for p in model.encoder.body.parameters() if p.grad is not None)
        assert (acoustic_grad > 0) == (term == "st")
    model.zero_grad()
    out = model.loss(feats, lens, tgt, tgt_lens, **tr)
    assert set(out) == {"st", "mt", "ctc", "adapt", "loss"} and torch.isfinite(out["loss"])
    # the MT model built from the shared modules computes the text path's loss
    model.eval()
    torch.testing.assert_close(mt.eval().loss(tr["transcripts"], tr["transcript_lens"], tgt, tgt_lens)["ce"],
                               model.loss(feats, lens, tgt, tgt_lens, **tr,
                                          scales=dict.fromkeys(("st", "ctc", "adapt"), 0))["mt"])


def test_adaptation_stop_gradient_keeps_the_text_side_fixed():
    model = stast()
    feats, lens, tgt, tgt_lens, tr = batch()
    model.loss(feats, lens, tgt, tgt_lens, scales=dict.fromkeys(("st", "mt", "ctc"), 0),
               **tr)["loss"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.text_encoder.frontend.parameters())
    assert sum(p.grad.abs().sum() for p in model.adapter.parameters()) > 0


def test_search_and_baselines():
    feats, lens, *_ = batch()
    for model in (stast(), stast(shrink=False, mt_weight=0, adapt_weight=0, ctc_weight=0)):
        model.eval()
        enc = model(feats, lens)
        expect = model.encoder.output_lengths(lens) if model.shrink is None else enc.lengths
        assert enc.lengths.tolist() == expect.tolist()
        hyps = search(model, enc, beam=2)
        assert len(hyps) == 3 and all(all(t < TGT for t in nb[0].tokens) for nb in hyps)
    with pytest.raises(ValueError, match="vocab_size"):
        STAST(SpeechEncoder(FrameStack(80, D, 2), Conformer(D, 1, 2, 2, 5), MarginalHead(D, SRC + 1)),
              SequenceEncoder(TokenEmbedding(SRC, D), TransformerStack(D, 1, 2, 2)),
              AttentionDecoder(TGT, D, 1, 2, 2), acoustic_dim=D, shrink=Shrink())


@torch.no_grad()
def test_stast_internal_lm_is_the_shared_decoder_s_and_fuses():
    from speechkit.search.fusion import Fusion

    model = stast().eval()
    model.decoder.out.bias[TGT] += 0.7  # hypotheses end by themselves (not at the length limit)
    feats, lens, tgt, tgt_lens, _ = batch()
    torch.testing.assert_close(model.internal_lm().score(tgt, tgt_lens),
                               model.mt_model().internal_lm().score(tgt, tgt_lens))
    enc = model(feats, lens)
    plain = search(model, enc, beam=3, nbest=3)
    fused = search(model, enc, beam=3, nbest=3, fusion=Fusion(ilm_weight=0.05))
    checked = 0
    for p_nb, f_nb in zip(plain, fused):  # every hypothesis in both: fused = plain − λ_ILM log P_ILM(Y)
        p = {h.tokens: h.score for h in p_nb}
        for h in f_nb:
            if h.tokens in p:
                y = torch.tensor([h.tokens or (0,)])
                want = p[h.tokens] - 0.05 * float(model.internal_lm().score(y, torch.tensor([len(h.tokens)])))
                assert h.score == pytest.approx(want, abs=1e-4)
                checked += 1
    assert checked >= 3
