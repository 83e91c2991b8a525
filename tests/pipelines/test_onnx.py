"""Bricks exported to ONNX decode like speechkit: transducers in sherpa-onnx's offline layout (sherpa-onnx and
onnxruntime), attention models and language models through onnxruntime."""

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch

from speechkit.audio import read_audio
from speechkit.data.manifest import load_manifest
from speechkit.features import FbankConfig, fbank
from speechkit.pipelines.bricks import load_brick, save_brick
from speechkit.pipelines.onnx import sherpa_recognizer
from speechkit.pipelines.onnx_export import OnnxExportError, export_onnx
from speechkit.search.transducer import greedy_search

TOKENIZER = "tests/fixtures/bricks_v1/transducer/tokenizer.model"  # 24 pieces
BLANK_BIAS = 3.0
INTERFACE = {"kind": "Transducer", "input": FbankConfig().to_dict(), "input_kind": "fbank",
             "target_lang": None}


def _waves(corpus, n: int = 8) -> list[torch.Tensor]:
    utts = load_manifest(corpus / "asr" / "train.jsonl")[:n]
    return [read_audio(u.audio) for u in utts]


def _brick(tmp_path, waves, predictor: str = "stateless"):
    """A random tiny transducer whose joiner is scaled up so its greedy search emits many different
    labels and blanks (a strong equality test: every argmax must agree), CMVN from the test audio."""
    from conftest import tiny_transducer

    m = tiny_transducer(vocab=24, frontend="conv", predictor=predictor, seed=3).eval()
    feats = torch.cat([fbank(w) for w in waves])
    m.encoder.cmvn.set_stats(feats.sum(0), feats.square().sum(0), feats.shape[0])
    with torch.no_grad():
        m.joiner.out.weight.mul_(6.0)
        m.joiner.out.bias[-1] += BLANK_BIAS  # about half the frames blank
    return save_brick(m, tmp_path / f"brick_{predictor}", INTERFACE, {"target": TOKENIZER})


def _speechkit_pieces(brick, wave) -> list[str]:
    feats = fbank(wave)
    with torch.no_grad():
        enc = brick.module.encoder(feats[None], torch.tensor([feats.shape[0]]))
        ids = greedy_search(brick.module, enc, max_symbols=1)[0]  # sherpa-onnx: one label per frame
    return [p.replace("▁", " ") for p in brick.tokenizers["target"].pieces(list(ids))]


def test_sherpa_onnx_decodes_an_exported_brick_to_speechkits_greedy_tokens(tmp_path, tiny_corpus):
    waves = _waves(tiny_corpus)
    brick = load_brick(_brick(tmp_path, waves))
    res = export_onnx(brick, tmp_path / "onnx", int8=True)
    want = {"encoder.onnx", "decoder.onnx", "joiner.onnx", "tokens.txt", "encoder.int8.onnx"}
    assert want <= set(res["files"])
    tokens = (tmp_path / "onnx" / "tokens.txt").read_text().splitlines()
    assert tokens[0] == "<blk> 0" and len(tokens) == 25 == res["vocab_size"]
    rec = sherpa_recognizer(tmp_path / "onnx")
    emitted, labels, frames = set(), 0, 0
    for wave in waves:
        stream = rec.create_stream()
        stream.accept_waveform(16000, wave.numpy())
        rec.decode_stream(stream)
        ours = _speechkit_pieces(brick, wave)
        assert stream.result.tokens == ours
        emitted |= set(ours)
        labels += len(ours)
        frames += int(brick.module.encoder.output_lengths(torch.tensor([fbank(wave).shape[0]])))
    assert 0.2 * frames < labels < 0.9 * frames and len(emitted) >= 5  # labels and blanks, many labels
    int8 = sherpa_recognizer(tmp_path / "onnx", int8=True)
    stream = int8.create_stream()
    stream.accept_waveform(16000, waves[0].numpy())
    int8.decode_stream(stream)
    assert stream.result.tokens  # int8 weights decode too (not the same labels: a random model's margins)


def test_exported_encoder_equals_torch_on_a_padded_batch(tmp_path, tiny_corpus, capsys):
    from speechkit.cli import main

    waves = _waves(tiny_corpus, 3)
    path = _brick(tmp_path, waves)
    main(["export", str(path), "--onnx", str(tmp_path / "onnx"), "--json"])
    assert json.loads(capsys.readouterr().out)["context_size"] == 2
    brick = load_brick(path)
    feats = [fbank(w) for w in waves]
    lens = torch.tensor([f.shape[0] for f in feats])
    x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True, padding_value=-23.0259)  # sherpa's padding
    session = ort.InferenceSession(str(tmp_path / "onnx" / "encoder.onnx"))
    out, out_lens = session.run(None, {"x": x.numpy(), "x_lens": lens.numpy()})
    with torch.no_grad():
        enc = brick.module.encoder(x, lens)
        ref = brick.module.joiner.enc_proj(enc.hidden)
    np.testing.assert_array_equal(out_lens, enc.lengths.numpy())
    for i, n in enumerate(out_lens):  # valid frames equal; padding is the runtime's to ignore
        np.testing.assert_allclose(out[i, :n], ref[i, :n].numpy(), rtol=1e-4, atol=1e-4)
    info = json.loads((tmp_path / "onnx" / "speechkit.json").read_text())
    assert info["features"]["snip_edges"] is True and info["blank"] == 0


def test_export_refuses_what_sherpa_onnx_cannot_run_naming_the_brick(tmp_path, tiny_corpus):
    from speechkit.cli import main

    lstm = _brick(tmp_path, _waves(tiny_corpus, 2), predictor="lstm")
    with pytest.raises(OnnxExportError, match=f"{lstm}.*LSTMPredictor"):
        export_onnx(lstm, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    with pytest.raises(SystemExit) as e:
        main(["export", str(lstm), "--onnx", str(tmp_path / "out")])
    assert "LSTMPredictor" in str(e.value) and "\n" not in str(e.value)  # one error line
    with pytest.raises(SystemExit, match="one of them"):
        main(["export", str(lstm), "--out", str(tmp_path / "a"), "--onnx", str(tmp_path / "b")])


def test_decode_runtimes_give_the_torch_runtimes_hypotheses(tmp_path, tiny_corpus):
    """`decode --runtime onnx` runs speechkit's own searches on the exported graphs: the same hypotheses
    as torch, greedy and beam; `--runtime sherpa-onnx` equals torch's greedy at one label per frame."""
    from speechkit.pipelines.decode import DecodeOptions, decode_to_file
    from speechkit.pipelines.onnx import decode_runtime_to_file

    manifest = tiny_corpus / "asr" / "train.jsonl"
    path = _brick(tmp_path, _waves(tiny_corpus))
    export_onnx(path, tmp_path / "onnx", int8=True)

    def hyps(summary):
        return [json.loads(line)["hyp"] for line in open(summary["hyps"])]

    for opts in (DecodeOptions(progress=False), DecodeOptions(beam=3, progress=False),
                 DecodeOptions(max_symbols=1, progress=False)):
        torch_run, sc = decode_to_file(path, manifest, opts, tmp_path / "torch.jsonl", max_utts=12)
        onnx_run, sc_onnx = decode_runtime_to_file(tmp_path / "onnx", manifest, "onnx", opts,
                                                   tmp_path / "onnx.jsonl", max_utts=12)
        assert hyps(onnx_run) == hyps(torch_run) and sc_onnx.wer == sc.wer
    quiet = DecodeOptions(progress=False)
    sherpa, _ = decode_runtime_to_file(tmp_path / "onnx", manifest, "sherpa-onnx", quiet,
                                       tmp_path / "sherpa.jsonl", max_utts=12)
    assert hyps(sherpa) == hyps(torch_run)  # the last torch run: greedy, one label per frame
    int8, _ = decode_runtime_to_file(tmp_path / "onnx", manifest, "onnx-int8", quiet, tmp_path / "int8.jsonl",
                                     max_utts=12)
    assert int8["utts"] == torch_run["utts"] == len(hyps(sherpa)) > 0


def test_decode_runtime_on_a_folder_export_did_not_write_is_one_error_line(tmp_path):
    from speechkit.cli import main

    (tmp_path / "x").mkdir()
    args = ["decode", str(tmp_path / "x"), str(tmp_path / "m.jsonl"), "--runtime", "onnx"]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert "speechkit.json" in str(e.value) and str(tmp_path / "x") in str(e.value)
    with pytest.raises(SystemExit, match="internal LM, --ilm-weight, is not exported"):
        main([*args, "--ilm-weight", "1"])


def test_a_streaming_brick_streams_through_onnxruntime_with_the_torch_events(tmp_path, tiny_corpus, capsys):
    """encoder_chunk.onnx (one chunk, explicit key/value/conv caches and frame offset) behind the same
    Recognizer: partials and finals equal torch's at two chunk sizes; `stream --runtime onnx` runs it."""
    from builders import streaming_transducer

    from speechkit.cli import main
    from speechkit.pipelines.onnx import load_onnx
    from speechkit.search.stream import Recognizer, StreamOptions

    m = streaming_transducer(vocab=24)
    with torch.no_grad():
        m.joiner.out.weight.mul_(6.0)
        m.joiner.out.bias[-1] += BLANK_BIAS
    path = save_brick(m, tmp_path / "stream", INTERFACE, {"target": TOKENIZER})
    res = export_onnx(path, tmp_path / "onnx")
    assert "encoder_chunk.onnx" in res["files"]
    torch_b, onnx_b = load_brick(path), load_onnx(tmp_path / "onnx")
    for wave in _waves(tiny_corpus, 3):
        for chunk in (2, 5):
            events = [[(e.kind, e.text) for e in Recognizer(b.module, b.tokenizer, b.fbank(),
                                                              StreamOptions(chunk=chunk)).run(wave)]
                      for b in (torch_b, onnx_b)]
            assert events[0] == events[1] and events[0][-1][0] == "final"
    wav = load_manifest(tiny_corpus / "asr" / "train.jsonl")[0].audio
    main(["stream", str(tmp_path / "onnx"), wav, "--runtime", "onnx", "--json"])
    assert "final" in capsys.readouterr().out
    offline = export_onnx(_brick(tmp_path, _waves(tiny_corpus, 1)), tmp_path / "offline")
    assert "encoder_chunk.onnx" not in offline["files"]
    with pytest.raises(SystemExit, match="offline cannot stream: .*does not stream"):
        main(["stream", str(tmp_path / "offline"), wav, "--runtime", "onnx"])


FIXTURES = "tests/fixtures/bricks_v1"


def _hyps(summary) -> list[str]:
    return [json.loads(line)["hyp"] for line in open(summary["hyps"])]


@pytest.mark.parametrize("kind", ["aed", "mt"])
def test_attention_bricks_decode_through_onnxruntime_to_the_torch_hypotheses(tmp_path, kind):
    """A speech AED brick (LegoNN: BeamConv ingestor) and a text MT brick (length controller): encoder.onnx
    (memory projected for cross-attention, CTC logits) and decoder.onnx (one step, explicit caches) give
    torch's hypotheses, greedy and beam 3, and the CTC interface's greedy path; int8 decodes too."""
    from speechkit.pipelines.decode import DecodeOptions, brick_manifest, decode_to_file
    from speechkit.pipelines.onnx import decode_runtime_to_file, load_onnx
    from speechkit.search.transducer import ctc_greedy

    brick, manifest = f"{FIXTURES}/{kind}", f"{FIXTURES}/manifest.jsonl"
    res = export_onnx(brick, tmp_path / "onnx", int8=True)
    assert res["layout"] == "onnxruntime attention" and "decoder.int8.onnx" in res["files"]
    for opts in (DecodeOptions(progress=False), DecodeOptions(beam=3, nbest=2, progress=False)):
        ref, sc = decode_to_file(brick, manifest, opts, tmp_path / "torch.jsonl")
        got, sc_onnx = decode_runtime_to_file(tmp_path / "onnx", manifest, "onnx", opts,
                                              tmp_path / "onnx.jsonl")
        assert _hyps(got) == _hyps(ref) and sc_onnx.to_dict() == sc.to_dict()
    assert len(set(_hyps(ref))) > 1  # different utterances, different hypotheses: not a constant
    int8, _ = decode_runtime_to_file(tmp_path / "onnx", manifest, "onnx-int8", DecodeOptions(progress=False),
                                     tmp_path / "int8.jsonl")
    assert int8["utts"] == ref["utts"]
    torch_b, onnx_b = load_brick(brick), load_onnx(tmp_path / "onnx")
    ds = brick_manifest(torch_b, manifest)
    from speechkit.data.dataset import collate

    batch = collate([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        want = torch_b.module(batch["inputs"], batch["input_lens"])
    got = onnx_b.module(batch["inputs"], batch["input_lens"])
    assert got.logits is not None and ctc_greedy(got) == ctc_greedy(want)


def test_language_models_export_and_fuse_through_onnxruntime(tmp_path, tiny_corpus):
    """lm.onnx equals the torch LM (Transformer and LSTM bodies) on whole sequences and step by step with
    beam reordering; `decode --runtime onnx --lm LM_EXPORT` equals the torch runtime with the torch LM."""
    from speechkit.lego.transducer import LSTMPredictor
    from speechkit.models.lm import LanguageModel
    from speechkit.pipelines.decode import DecodeOptions, decode_to_file, make_fusion
    from speechkit.pipelines.onnx import decode_runtime_to_file, load_onnx, runtime_fusion

    lstm = LanguageModel(LSTMPredictor(24, 32, layers=2), 32).eval()
    lm_iface = json.loads(open(f"{FIXTURES}/lm/interface.json").read())
    lstm_path = save_brick(lstm, tmp_path / "lstm_lm", lm_iface, {"target": TOKENIZER})
    g = torch.Generator().manual_seed(0)
    y, n = torch.randint(0, 24, (3, 6), generator=g), torch.tensor([6, 2, 0])
    for path in (f"{FIXTURES}/lm", lstm_path):
        assert export_onnx(path, tmp_path / "x")["layout"] == "onnxruntime language model"
        ref, got = load_brick(path).module, load_onnx(tmp_path / "x").module
        with torch.no_grad():
            torch.testing.assert_close(got.logprobs(y), ref.logprobs(y), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(got.score(y, n), ref.score(y, n), rtol=1e-4, atol=1e-4)
            (_, sr), (_, so) = ref.start(3, "cpu"), got.start(3, "cpu")
            for t in range(4):  # beam reordering, and rows that do not advance (where)
                order, mask = torch.tensor([t % 3, 0, 2]), torch.tensor([True, t % 2 == 0, True])
                sr, so = ref.select(sr, order), got.select(so, order)
                nr, sr2 = ref.step(y[:, t], sr)
                no, so2 = got.step(y[:, t], so)
                torch.testing.assert_close(no, nr, rtol=1e-4, atol=1e-4)
                sr, so = ref.where(mask, sr2, sr), got.where(mask, so2, so)
        shutil.rmtree(tmp_path / "x")
    manifest = tiny_corpus / "asr" / "train.jsonl"
    asr = _brick(tmp_path, _waves(tiny_corpus))
    export_onnx(asr, tmp_path / "asr_onnx")
    export_onnx(lstm_path, tmp_path / "lm_onnx")
    opts = DecodeOptions(beam=3, progress=False, fusion=make_fusion(asr, lstm_path, 0.5, 0.0, 0.5))
    ref, _ = decode_to_file(asr, manifest, opts, tmp_path / "torch.jsonl", max_utts=8)
    fusion = runtime_fusion(tmp_path / "asr_onnx", tmp_path / "lm_onnx", 0.5, 0.5)
    opts = DecodeOptions(beam=3, progress=False, fusion=fusion)
    got, _ = decode_runtime_to_file(tmp_path / "asr_onnx", manifest, "onnx", opts, tmp_path / "o.jsonl",
                                    max_utts=8)
    plain, _ = decode_to_file(asr, manifest, DecodeOptions(beam=3, progress=False), tmp_path / "p.jsonl",
                              max_utts=8)
    assert _hyps(got) == _hyps(ref) != _hyps(plain)  # the LM changed hypotheses, alike in both runtimes


@pytest.mark.parametrize("shrink", [True, False])
def test_stast_exports_with_its_data_dependent_shrink(tmp_path, shrink):
    """STAST's CTC shrink gives a data-dependent number of segments: the exported encoder keeps it symbolic
    (a batch of other lengths than the trace's), and beam search on the graphs equals torch's."""
    from builders import stast

    from speechkit.pipelines.onnx import load_onnx
    from speechkit.search.attention import attention_beam_search

    path = save_brick(stast(shrink=shrink).eval(), tmp_path / "stast", INTERFACE)
    export_onnx(path, tmp_path / "onnx")
    ref, got = load_brick(path).module, load_onnx(tmp_path / "onnx").module
    g = torch.Generator().manual_seed(5)
    x, n = torch.randn(3, 57, 80, generator=g), torch.tensor([57, 33, 20])
    with torch.no_grad():
        want = attention_beam_search(ref, ref(x, n), beam=3, nbest=3)
    enc = got(x, n)
    out = attention_beam_search(got, enc, beam=3, nbest=3)
    assert [[h.tokens for h in nb] for nb in out] == [[h.tokens for h in nb] for nb in want]
    scores = [h.score for nb in want for h in nb]
    assert [h.score for nb in out for h in nb] == pytest.approx(scores, abs=1e-4)
    assert enc.hidden.shape[1] == int(enc.lengths.max()) < (57 if shrink else 30)  # segments, not frames


def test_int8_export_of_a_compressed_brick_carries_its_own_codes(tmp_path, tiny_corpus):
    """A brick whose weights are stored as int8 codes (QAT or one-shot): its *.int8.onnx quantises exactly
    those weights, per output channel, to the brick's codes and steps (not onnxruntime's max-abs ones),
    and decodes close to the float graph."""
    from onnx import numpy_helper

    from speechkit.compress.apply import CompressConfig, QuantConfig
    from speechkit.compress.quant import integer_codes
    from speechkit.pipelines.bricks import export_brick

    waves = _waves(tiny_corpus, 3)
    dense = _brick(tmp_path, waves)
    export_brick(dense, tmp_path / "int8", CompressConfig(quant=QuantConfig(8, None)))
    brick = load_brick(tmp_path / "int8")
    files = export_onnx(brick, tmp_path / "onnx", int8=True)["files"]
    assert {"encoder.int8.onnx", "joiner.int8.onnx"} <= set(files)
    enc = brick.module.encoder
    coded = [m for part in (enc.frontend, enc.body) for m in part.modules() if isinstance(m, torch.nn.Linear)]
    meta = json.loads((tmp_path / "onnx" / "speechkit.json").read_text())
    # the encoder graph's matmuls (+ the joiner's encoder projection inside it) carry the brick's codes;
    # onnxruntime's dynamic quantisation leaves Gemm (the decoder's and joiner's 2-D layers) in float
    assert meta["int8_codes"] == len(coded) + 1 > 10
    import onnx

    graph = onnx.load(str(tmp_path / "onnx" / "encoder.int8.onnx")).graph
    inits = [numpy_helper.to_array(i) for i in graph.initializer]
    for layer in (coded[0], coded[-1], brick.module.joiner.enc_proj):  # codes transposed as MatMul reads them
        w = layer.weight.detach()
        want = integer_codes(w, layer.compressed["weight"]["scale"].expand(w.shape[0])[:, None], 8).t()
        assert any(v.dtype == np.int8 and v.shape == tuple(want.shape) and np.array_equal(v, want.numpy())
                   for v in inits)
    x = torch.stack([fbank(waves[0])[:150]])
    lens = torch.tensor([150])
    f32, i8 = (ort.InferenceSession(str(tmp_path / "onnx" / f"encoder{s}.onnx")) for s in ("", ".int8"))
    a = f32.run(None, {"x": x.numpy(), "x_lens": lens.numpy()})[0]
    b = i8.run(None, {"x": x.numpy(), "x_lens": lens.numpy()})[0]
    assert 0 < np.linalg.norm(a - b) < 0.3 * np.linalg.norm(a)  # int8 activations of a random toy: ~0.17
