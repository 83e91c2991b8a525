"""Streaming: chunked encoder = full encoder under the same chunk mask, stateful search = one-shot search,
the recognizer = offline decoding under the same mask, endpointing, word confidence / time metrics, and
``speechkit stream`` through a subprocess (files, stdin PCM, bad, closed and empty stdin, --json), and
its outputs and calibration kept out of a read-only brick."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from builders import read_only, stream_brick, stream_tokenizer, streaming_transducer

from speechkit.audio import read_audio, write_audio
from speechkit.data.manifest import load_manifest
from speechkit.features import FbankConfig, fbank
from speechkit.lego.encoders import SpeechEncoder
from speechkit.lego.interface import MarginalHead
from speechkit.lego.transducer import Joiner, StatelessPredictor
from speechkit.models.transducer import Transducer
from speechkit.nn.conformer import Conformer, chunk_mask
from speechkit.nn.subsampling import FrameStack
from speechkit.pipelines.bricks import save_brick
from speechkit.pipelines.stream_eval import CALIBRATION, auc, ece, fit_calibration, word_pairs
from speechkit.search.fusion import Fusion
from speechkit.search.stream import MIN_TIMED_AUDIO_S, Recognizer, StreamOptions, Word, timing
from speechkit.search.transducer import BeamSearch, GreedySearch, beam_search


@pytest.mark.parametrize("chunk,left,block", [(3, 6, 12), (3, 6, 5), (4, None, 7), (1, 2, 4), (8, 4, 100)])
def test_chunked_encoder_equals_full_encoder_under_the_same_mask(chunk, left, block):
    m = streaming_transducer(left=left)
    m.encoder.body.chunk = chunk
    feats = torch.randn(2, 93, 80)
    full = m.encoder(feats, torch.tensor([93, 93]))
    state, outs = m.encoder.stream_state(2), []
    for i in range(0, 93, block):  # any feeding pattern: the encoder buffers to its chunk grid
        enc, state = m.encoder.forward_chunk(feats[:, i: i + block], state, final=i + block >= 93)
        assert enc.hidden.shape[1] % chunk == 0 or i + block >= 93
        outs.append(enc)
    hidden = torch.cat([e.hidden for e in outs], 1)
    assert hidden.shape == full.hidden.shape
    torch.testing.assert_close(hidden, full.hidden, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.cat([e.logits for e in outs], 1), full.logits, atol=1e-4, rtol=1e-4)


def test_chunk_mask_hides_the_future_and_limits_the_past():
    m = chunk_mask(10, 4, 2)
    assert m[0, :4].all() and not m[0, 4:].any()  # first chunk: itself only
    assert m[5].tolist() == [False, False, True, True, True, True, True, True, False, False]
    body = Conformer(16, 2, 2, 2, 5, 0.0, causal=True, chunk=4, left_context=None).eval()
    x = torch.randn(1, 12, 16)
    y = x.clone()
    y[:, 8:] = torch.randn(1, 4, 16)  # a later chunk changes …
    a, b = body(x, torch.tensor([12])), body(y, torch.tensor([12]))
    torch.testing.assert_close(a[:, :8], b[:, :8])  # … nothing before it
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_dynamic_chunk_training_draws_chunks_and_needs_causal_conv():
    with pytest.raises(ValueError, match="causal"):
        Conformer(16, 1, 2, 2, 5, causal=False, chunk_sizes=[4])
    body = Conformer(16, 1, 2, 2, 5, 0.0, causal=True, chunk_sizes=[2, 8], full_context_prob=0.0).train()
    drawn = {body._train_chunk() for _ in range(50)}
    assert drawn == {2, 8}
    always_full = Conformer(16, 1, 2, 2, 5, causal=True, chunk_sizes=[2], full_context_prob=1.0)
    assert always_full._train_chunk() is None
    with pytest.raises(ValueError, match="no streaming mode"):
        Conformer(16, 1, 2, 2, 5).initial_state(1)


@pytest.mark.parametrize("predictor", ["stateless", "lstm"])
def test_stateful_search_in_pieces_equals_one_shot(predictor):
    m = streaming_transducer(predictor=predictor)
    m.encoder.body.chunk = 4
    feats = torch.randn(1, 160, 80)
    enc = m.encoder(feats, torch.tensor([160]))
    for make in (lambda: GreedySearch(m, 1), lambda: BeamSearch(m, 1, beam=3),
                 lambda: BeamSearch(m, 1, beam=3, fusion=Fusion(ilm_weight=0.3, length_reward=0.5))):
        whole, parts = make(), make()
        whole.advance(enc)
        for i in range(0, enc.hidden.shape[1], 3):
            parts.advance(type(enc)(enc.hidden[:, i: i + 3], torch.tensor([min(3, 40 - i)]),
                                    enc.logits[:, i: i + 3]))
        a, b = whole.best(final=True)[0], parts.best(final=True)[0]
        assert a.tokens and (a.tokens, a.frames) == (b.tokens, b.frames)  # probs, scores: up to rounding
        assert a.probs == pytest.approx(b.probs, rel=1e-4)
        assert (a.score is None and b.score is None) or a.score == pytest.approx(b.score, rel=1e-4)
        assert len(a.frames) == len(a.tokens) == len(a.probs)
        assert list(a.frames) == sorted(a.frames) and all(0 < p <= 1 for p in a.probs)


@pytest.mark.parametrize("chunk,beam", [(2, 1), (5, 1), (4, 3)])
def test_recognizer_final_equals_offline_decoding_under_the_same_chunk(tiny_corpus, tmp_path, chunk, beam):
    """Streaming = offline decoding of the same model under the same chunk size (exactly, as text and
    times); different chunk sizes change the encoder's context and so may change the text: that is
    the documented difference (recipes/locale/RESULTS.md "Streaming" measures it)."""
    tok = stream_tokenizer(tmp_path, tiny_corpus)
    m = streaming_transducer(vocab=tok.vocab_size)
    cfg = FbankConfig()
    for u in load_manifest(tiny_corpus / "asr" / "dev.jsonl")[:3]:
        wave = read_audio(u.audio)
        opts = StreamOptions(chunk=chunk, beam=beam, max_symbols=2, endpoint_trailing=99, endpoint_silence=99)
        rec = Recognizer(m, tok, cfg, opts)
        events = [e for i in range(0, wave.numel(), 1234) for e in rec.accept(wave[i: i + 1234])]
        events += rec.finish()
        finals = [e for e in events if e.kind == "final"]
        assert len(finals) == 1 and all(e.kind == "partial" for e in events[:-1])
        m.encoder.body.chunk = chunk
        feats = fbank(wave, cfg)[None]
        enc = m.encoder(feats, torch.tensor([feats.shape[1]]))
        if beam > 1:
            want = beam_search(m, enc, beam, max_symbols=2)[0][0]
        else:
            want = GreedySearch(m, 1, max_symbols=2)
        if beam == 1:
            want.advance(enc)
            want = want.best()[0]
        assert finals[0].text == tok.decode(list(want.tokens))
        assert [w.start for w in finals[0].words] == sorted(w.start for w in finals[0].words)


def test_endpoints_split_long_input_and_drop_silence(tiny_corpus, tmp_path):
    tok = stream_tokenizer(tmp_path, tiny_corpus)
    m = streaming_transducer(vocab=tok.vocab_size)
    wave = torch.randn(16000 * 3) * 0.1
    with torch.no_grad():
        m.joiner.out.bias[:] = -10.0
        m.joiner.out.bias[5] = 10.0  # always token 5: segments only end by length
    rec = Recognizer(m, tok, FbankConfig(), StreamOptions(chunk=4, max_segment=1.0))
    finals = [e for e in rec.accept(wave) + rec.finish() if e.kind == "final"]
    assert len(finals) >= 3 and [e.segment for e in finals] == list(range(len(finals)))
    assert all(b.start > a.start for a, b in zip(finals, finals[1:]))
    assert all(f.start <= w.start for f in finals for w in f.words)
    with torch.no_grad():
        m.joiner.out.bias[:] = -10.0
        m.joiner.out.bias[-1] = 10.0  # always blank: nothing to report, ever
    rec = Recognizer(m, tok, FbankConfig(), StreamOptions(chunk=4, endpoint_silence=0.5))
    assert rec.accept(wave) + rec.finish() == []
    assert rec.seg_start > 0  # the empty segment was dropped along the way


def test_word_alignment_auc_ece_and_calibration():
    ref = [["Only", 0.0, 0.3], ["display", 0.35, 0.8], ["NAME.", 0.8, 1.2]]
    hyp = [Word("only", 0.1, 0.3, 0.9), Word("displays", 0.4, 0.8, 0.2), Word("name", 0.9, 1.1, 0.8)]
    pairs = word_pairs(ref, hyp)
    assert [(w.word, ok, s) for w, ok, s in pairs] == [("only", True, 0.0), ("displays", False, None),
                                                       ("name", True, 0.8)]
    assert auc([0.9, 0.8, 0.2], [True, True, False]) == 1.0
    assert auc([0.1, 0.8, 0.9], [True, True, False]) == 0.0
    assert auc([0.5, 0.5], [True, False]) == 0.5
    assert auc([0.5], [True]) is None
    assert ece([0.9, 0.9], [True, False]) == pytest.approx(0.4)
    results = [{"ref_words": ref, "words": hyp}] * 5
    cal = fit_calibration(results)
    assert cal["time_shift"] == pytest.approx(-0.1)  # hypothesis starts are 0.1 s late
    a, b = cal["confidence"]
    assert a > 0  # higher posterior → higher calibrated confidence


# ---- the command line --------------------------------------------------------------------------

def _cmd(*args):
    return [sys.executable, "-m", "speechkit.cli", "stream", *map(str, args)]


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_stream_cli_file_equals_stdin_pcm_and_json_parses(tiny_corpus, tmp_path):
    brick = stream_brick(tmp_path, tiny_corpus)
    u = load_manifest(tiny_corpus / "asr" / "dev.jsonl")[0]
    args = ("--chunk", 4, "--json", "--endpoint-trailing", 0.4)
    p = subprocess.run(_cmd(brick, u.audio, *args), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    from_file = _events(p.stdout)
    pcm = (read_audio(u.audio) * 32768).round().clamp(-32768, 32767).short().numpy().tobytes()
    p = subprocess.run(_cmd(brick, "-", *args, "--block-ms", 37), input=pcm, capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr
    from_stdin = _events(p.stdout.decode())
    assert from_file[-1]["kind"] == from_stdin[-1]["kind"] == "summary"
    strip = [{k: v for k, v in e.items() if k not in ("source", "end")} for e in from_file[:-1]]
    assert strip == [{k: v for k, v in e.items() if k not in ("source", "end")} for e in from_stdin[:-1]]
    finals = [e for e in from_file if e["kind"] == "final"]
    assert finals and {"text", "words", "segment", "start"} <= set(finals[0])
    w = finals[0]["words"][0]
    assert {"word", "start", "end", "confidence"} == set(w) and 0 <= w["confidence"] <= 1


def test_stream_cli_bad_stdin_gives_a_clear_error_and_the_results_so_far(tiny_corpus, tmp_path):
    brick = stream_brick(tmp_path, tiny_corpus)
    u = load_manifest(tiny_corpus / "asr" / "dev.jsonl")[0]
    pcm = (read_audio(u.audio) * 32767).short().numpy().tobytes()
    p = subprocess.run(_cmd(brick, "--chunk", 4, "--json"), input=pcm[:-1], capture_output=True, timeout=300)
    assert p.returncode != 0 and b"truncated" in p.stderr and b"stdin" in p.stderr
    events = _events(p.stdout.decode())
    assert any(e["kind"] == "final" for e in events)  # what was received is not lost
    wav = b"RIFF\x24\x00\x00\x00WAVEfmt " + pcm  # a WAV file piped in
    p = subprocess.run(_cmd(brick, "--json"), input=wav, capture_output=True, timeout=300)
    assert p.returncode != 0 and b"WAV header, not raw PCM" in p.stderr


def test_stream_cli_refuses_a_non_streaming_brick(tmp_path, tiny_corpus):
    tok = stream_tokenizer(tmp_path, tiny_corpus)
    torch.manual_seed(0)
    v = tok.vocab_size
    enc = SpeechEncoder(FrameStack(80, 16, 4), Conformer(16, 1, 2, 2, 5), MarginalHead(16, v), 80)
    m = Transducer(enc, StatelessPredictor(tok.vocab_size, 16), Joiner(16, 16, tok.vocab_size, 16))
    brick = save_brick(m, tmp_path / "b", {"kind": "Transducer", "input": FbankConfig().to_dict()},
                       {"target": tok})
    p = subprocess.run(_cmd(brick, "-"), input="", capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "cannot stream" in p.stderr and "causal" in p.stderr


def test_stream_cli_evaluates_a_manifest(tiny_corpus, tmp_path):
    brick = stream_brick(tmp_path, tiny_corpus)
    train = tiny_corpus / "asr" / "train.jsonl"
    p = subprocess.run(_cmd(brick, "--manifest", train, "--max-utts", 3, "--chunk", 4, "--json", "--beam", 2,
                            "--out", tmp_path / "hyps.jsonl"), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "no calibration for chunk4-beam2-transducer" in p.stderr
    s = json.loads(p.stdout.splitlines()[-1])
    assert s["utts"] == 3 and s["wer"] >= 0 and 0 < s["rtf"] and s["chunk_ms"] == 160
    rows = [json.loads(x) for x in open(tmp_path / "hyps.jsonl")]
    assert len(rows) == 3 and {"id", "ref", "hyp", "words", "ref_words"} <= set(rows[0])


def _error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_stream_cli_closed_or_empty_stdin_and_empty_file_are_one_error_line(tiny_corpus, tmp_path):
    brick = stream_brick(tmp_path, tiny_corpus)
    closed = subprocess.run(["bash", "-c", 'exec "$@" <&-', "_", *_cmd(brick, "-", "--json")],
                            capture_output=True, text=True, timeout=300)  # file descriptor 0 closed
    empty = subprocess.run(_cmd(brick, "-", "--json"), input="", capture_output=True, text=True, timeout=300)
    for p in closed, empty:
        assert p.returncode != 0 and p.stdout == "", p.stdout  # no events, no summary with an absurd RTF
        errors = _error_lines(p.stderr)
        assert len(errors) == 1 and errors[0].startswith("error: no audio received on stdin"), p.stderr
    assert "closed" in closed.stderr and "0 bytes" in empty.stderr
    silent = tmp_path / "silent.wav"
    write_audio(silent, torch.zeros(0))
    p = subprocess.run(_cmd(brick, silent), capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and _error_lines(p.stderr) == [f"error: audio is empty: {silent} (offset=0.0, "
                                                            "duration=None)"]


def test_timing_reports_no_rtf_for_almost_no_audio(tiny_corpus, tmp_path):
    tok = stream_tokenizer(tmp_path, tiny_corpus)
    m = streaming_transducer(vocab=tok.vocab_size)
    rec = Recognizer(m, tok, FbankConfig(), StreamOptions(chunk=4))
    rec.accept(torch.full((2,), 0.01))
    rec.finish()
    assert rec.audio_s < MIN_TIMED_AUDIO_S and rec.compute_s > 0 and timing([rec])["rtf"] is None
    rec.run(torch.randn(16000) * 0.05)
    assert 0 < timing([rec])["rtf"] < 1000


def _main(capsys, *args) -> tuple[str, str]:
    from speechkit.cli import main

    main([str(a) for a in args])
    out = capsys.readouterr()
    return out.out, out.err


def test_stream_manifest_and_calibration_leave_a_read_only_brick_untouched(tiny_corpus, tmp_path, capsys,
                                                                           monkeypatch):
    import speechkit.pipelines.stream_eval as se

    brick = stream_brick(tmp_path, tiny_corpus)
    entry = {"time_shift": -0.05, "confidence": [2.0, 0.5], "words": 9}
    monkeypatch.setattr(se, "fit_calibration", lambda results: entry)  # an untrained model gets no word right
    train = tiny_corpus / "asr" / "train.jsonl"
    audio = load_manifest(train)[0].audio
    common = ("--chunk", 4, "--threads", torch.get_num_threads())
    with read_only(brick) as unchanged:
        out, _ = _main(capsys, "stream", brick, "--manifest", train, "--max-utts", 2, "--calibrate", "--json",
                       *common)
        s = json.loads(out.splitlines()[-1])
        assert Path(s["hyps"]) == tmp_path / "stream-train-chunk4-beam1-transducer.jsonl" and s["utts"] == 2
        assert Path(s["calibration_file"]) == tmp_path / CALIBRATION
        assert json.loads((tmp_path / CALIBRATION).read_text()) == {"chunk4-beam1-transducer":
                                                                    {**entry, "dev": str(train)}}
        _, err = _main(capsys, "stream", brick, audio, *common)  # a plain run reads the table beside it
        assert "no calibration" not in err
        mine = tmp_path / "mine.json"
        out, _ = _main(capsys, "stream", brick, "--manifest", train, "--max-utts", 1, "--calibrate", "--json",
                       "--calibration", mine, "--out", tmp_path / "h.jsonl", *common)
        assert json.loads(out.splitlines()[-1])["calibration_file"] == str(mine) and mine.is_file()
        assert unchanged(), "something was written inside the brick"
    (tmp_path / CALIBRATION).unlink()
    _, err = _main(capsys, "stream", brick, audio, *common)
    assert "no calibration for chunk4-beam1-transducer" in err
    (brick / CALIBRATION).write_text(json.dumps({"chunk4-beam1-transducer": entry}))  # shipped in a brick
    _, err = _main(capsys, "stream", brick, audio, *common)
    assert "no calibration" not in err
    with pytest.raises(SystemExit, match="calibration table not found"):
        _main(capsys, "stream", brick, audio, "--calibration", tmp_path / "nothing.json", *common)


@pytest.mark.parametrize("beam,timestamps", [(1, "transducer"), (3, "ctc")])
def test_recognizer_on_the_device_gives_the_cpu_events(device, tiny_corpus, tmp_path, beam, timestamps):
    tok = stream_tokenizer(tmp_path, tiny_corpus)
    m = streaming_transducer(vocab=tok.vocab_size)
    with torch.no_grad():
        m.joiner.out.bias[-1] -= 2.0  # a random model that emits
    wave = read_audio(load_manifest(tiny_corpus / "asr" / "dev.jsonl")[0].audio)
    opts = StreamOptions(chunk=4, beam=beam, max_symbols=2, timestamps=timestamps, endpoint_trailing=0.5)
    want = Recognizer(m, tok, FbankConfig(), opts).run(wave)
    got = Recognizer(m.to(device), tok, FbankConfig(), opts).run(wave)
    assert [e.text for e in want if e.kind == "final"]
    assert [(e.kind, e.text, [(w.word, w.start, w.end) for w in e.words]) for e in got] == \
        [(e.kind, e.text, [(w.word, w.start, w.end) for w in e.words]) for e in want]
    for a, b in zip(got, want):
        assert [w.confidence for w in a.words] == pytest.approx([w.confidence for w in b.words], abs=1e-3)
