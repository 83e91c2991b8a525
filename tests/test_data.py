"""Manifests, audio and dataset errors: bad input must name the file, line or utterance."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from speechkit.audio import AudioError, read_audio, write_audio
from speechkit.data.dataset import SpeechDataset, utterance_features
from speechkit.data.manifest import ManifestError, Utterance, load_manifest, load_texts, save_manifest
from speechkit.features import FbankConfig
from speechkit.tokenizer import Tokenizer, train_tokenizer

GOOD = {"id": "a", "text": "open the file", "audio": "a.flac", "duration": 1.0}


def _write(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


@pytest.mark.parametrize("bad,message", [
    ("{not json", "invalid JSON"),
    ({"id": "b", "audio": "b.flac"}, "missing required key 'text'"),
    ({"id": "b", "text": "   ", "audio": "b.flac"}, "empty transcript"),
    ({"id": "b", "text": "x", "audio": "b.flac", "duraton": 1.0}, r"unknown key\(s\) \['duraton'\]"),
    ({"id": "b", "text": "x", "audio": "b.flac", "duration": -2}, "'duration' must be a positive"),
    ({"id": "a", "text": "x", "audio": "b.flac"}, "duplicate id 'a' \\(first on line 1\\)"),
    ({"id": "b", "text": "x"}, "has no 'audio' path"),
    ([1, 2], "expected a JSON object"),
])
def test_manifest_errors_name_file_and_line(tmp_path, bad, message):
    path = _write(tmp_path / "m.jsonl", [GOOD, "", bad])
    with pytest.raises(ManifestError, match=rf"m\.jsonl:3: .*{message}"):
        load_manifest(path, require_audio=True)


def test_manifest_roundtrip_and_relative_audio(tmp_path):
    utts = [Utterance(id="x1", text="hello world", audio=str(tmp_path / "audio" / "x1.flac"),
                      duration=1.5, translation={"de": "hallo welt"}, words=[["hello", 0.1, 0.5]])]
    save_manifest(utts, tmp_path / "asr" / "train.jsonl")
    line = json.loads((tmp_path / "asr" / "train.jsonl").read_text())
    assert line["kind"] == "utterance" and line["audio"] == "../audio/x1.flac"
    (back,) = load_manifest(tmp_path / "asr" / "train.jsonl")
    assert back.audio == str((tmp_path / "audio" / "x1.flac").resolve())
    assert back.translation == {"de": "hallo welt"} and back.words == [["hello", 0.1, 0.5]]


def test_missing_and_empty_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_manifest(tmp_path / "nope.jsonl")
    with pytest.raises(ManifestError, match="empty"):
        load_manifest(_write(tmp_path / "e.jsonl", [""]))


def test_audio_errors_name_the_file(tmp_path):
    with pytest.raises(AudioError, match="not found: .*missing.flac"):
        read_audio(tmp_path / "missing.flac")
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC\x00garbage" * 10)
    with pytest.raises(AudioError, match="cannot read audio .*corrupt.flac"):
        read_audio(corrupt)
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="empty: .*empty.wav"):
        read_audio(empty)
    tiny = tmp_path / "tiny.wav"
    sf.write(str(tiny), np.zeros(100, dtype=np.float32), 16000)
    u = Utterance(id="t", text="hi", audio=str(tiny))
    with pytest.raises(AudioError, match="'t'.*tiny.wav.*shorter than one frame"):
        utterance_features(u, FbankConfig())


def test_audio_resampled_to_model_rate(tmp_path):
    t = np.arange(8000) / 8000
    write_audio(tmp_path / "a.wav", 0.5 * np.sin(2 * np.pi * 440 * t), rate=8000)
    wave = read_audio(tmp_path / "a.wav")
    assert wave.shape == (16000,) and wave.dtype == torch.float32
    spectrum = torch.fft.rfft(wave).abs()
    assert abs(int(spectrum.argmax()) - 440) <= 1  # 1 s at 16 kHz: bin = Hz


def test_transcript_empty_after_normalisation_is_an_error(tmp_path):
    tok = train_tokenizer(["open the file now please"] * 50, tmp_path / "t.model", vocab_size=14)
    utts = [Utterance(id="ok", text="open", audio="x"), Utterance(id="bad", text="?!...", audio="x")]
    with pytest.raises(ValueError, match="train.jsonl: utterance 'bad' has an empty transcript"):
        SpeechDataset(utts, Tokenizer(tok.path), FbankConfig(), source="train.jsonl")


def test_tokenizer_fingerprint_and_blank(tmp_path):
    a = train_tokenizer(["open the file now please"] * 50, tmp_path / "a.model", vocab_size=14)
    b = train_tokenizer(["open the window now please"] * 50, tmp_path / "b.model", vocab_size=14)
    assert a.fingerprint != b.fingerprint and len(a.fingerprint) == 16
    assert a.blank == a.vocab_size == 14
    assert a.decode(a.encode("open the file")) == "open the file"


def test_load_texts_reads_manifests_and_plain_text(tmp_path):
    txt = tmp_path / "domain.txt"
    txt.write_text("first sentence\n\n  second one  \n")
    utts = load_texts(txt)
    assert [(u.id, u.text, u.audio) for u in utts] == [("domain-1", "first sentence", None),
                                                      ("domain-3", "second one", None)]
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ManifestError, match="empty.txt: no text"):
        load_texts(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_texts(tmp_path / "missing.txt")


def test_a_segment_at_offset_zero_reads_only_its_duration(tmp_path):
    """Segments of long recordings (MuST-C, TED-LIUM, Europarl-ST) may start at 0.0 s."""
    path = tmp_path / "talk.wav"
    write_audio(path, np.random.default_rng(0).uniform(-0.5, 0.5, 48000).astype(np.float32))  # 3 s
    cfg = FbankConfig()
    first = utterance_features(Utterance("a", "x", str(path), offset=0.0, duration=1.0), cfg)
    later = utterance_features(Utterance("b", "x", str(path), offset=1.0, duration=1.0), cfg)
    whole = utterance_features(Utterance("c", "x", str(path)), cfg)
    assert first.shape[0] == later.shape[0] < whole.shape[0] // 2
