"""Manifests, audio and dataset errors: bad input must name the file, line or utterance."""

import json
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from speechkit.audio import AudioError, read_audio, write_audio
from speechkit.data.datamodule import LMDataModule, SpeechDataModule, TextDataModule
from speechkit.data.dataset import SpeechDataset, TextDataset, manifest_tokenizer, utterance_features
from speechkit.data.manifest import ManifestError, Utterance, load_manifest, load_texts, save_manifest
from speechkit.errors import SpeechkitError
from speechkit.features import FbankConfig
from speechkit.metrics import normalize_text
from speechkit.tokenizer import Tokenizer, TokenizerNotFoundError, train_tokenizer

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


@pytest.mark.parametrize("key,value,message", [
    ("duration", True, r"'duration' must be a positive number, got True"),  # bool is an int in Python
    ("offset", False, r"'offset' must be a non-negative number, got False"),
    ("version", True, r"'version' must be a positive integer, got True"),
    ("version", "1", r"'version' must be a positive integer, got '1'"),
    ("duration", "2.5", r"'duration' must be a positive number, got '2.5'"),
    ("text", 5, r"'text' must be a string, got 5"),
    ("lang", ["en"], r"'lang' must be a string"),
    ("kind", 1, r"'kind' must be a string"),
    ("audio", 7, r"'audio' must be a string or null"),
    ("speaker", 3, r"'speaker' must be a string or null"),
    ("domain", {"x": 1}, r"'domain' must be a string or null"),
    ("translation", {"de": 1}, r"'translation' must be an object \{lang: text\} of strings"),
    ("translation", ["de"], r"'translation' must be an object"),
    ("words", [["open", True, 0.5]], r"'words' must be a list of \[word, start_s, end_s\]"),
    ("words", [["open", 0.1]], r"'words' must be a list of"),
    ("words", [[1, 0.1, 0.5]], r"'words' must be a list of"),
    ("words", "open", r"'words' must be a list of"),
])
def test_manifest_field_types_are_checked(tmp_path, key, value, message):
    path = _write(tmp_path / "m.jsonl", [GOOD, {**GOOD, "id": "b", key: value}])
    with pytest.raises(ManifestError, match=rf"m\.jsonl:2: {message}"):
        load_manifest(path)


def test_manifest_accepts_null_optionals_and_int_numbers(tmp_path):
    rec = {**GOOD, "duration": 2, "offset": 0, "version": 1, "speaker": None, "domain": None, "words": None,
           "translation": {"de": "die Datei"}}
    (u,) = load_manifest(_write(tmp_path / "m.jsonl", [rec]))
    assert u.duration == 2 and u.translation == {"de": "die Datei"}


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


EN = ["open the file", "close the window", "save the document now", "print the page please",
      "delete this folder", "copy the text", "move the files", "rename the item"]


def test_unk_heavy_targets_print_one_warning_with_counts(tmp_path, capsys):
    """Cyrillic transcripts read with an English tokenizer become <unk>: one stderr line names the
    manifest, the token and utterance counts and example ids; English transcripts print nothing."""
    tok = train_tokenizer(EN * 10, tmp_path / "en.model", vocab_size=30)
    ru = ["открыть файл", "закрыть окно", "сохранить документ"]
    utts = [Utterance(f"ru{i}", t, audio="x.flac") for i, t in enumerate(ru)]
    utts.append(Utterance("en0", EN[0], audio="x.flac"))
    ids = [tok.encode(normalize_text(u.text)) for u in utts]
    n_unk, n_tok = sum(x.count(tok.unk) for x in ids), sum(map(len, ids))
    assert tok.unk == 0 and n_unk > 0
    SpeechDataset(utts, tok, FbankConfig(), source="ru/train.jsonl")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"warning: ru/train.jsonl: {n_unk} of {n_tok} target tokens")
    assert "in 3 of 4 utterances (e.g. 'ru0', 'ru1', 'ru2')" in err[0] and str(tok.path) in err[0]
    TextDataset([Utterance(f"en{i}", t) for i, t in enumerate(EN)], tok, None, None, source="en.jsonl")
    assert capsys.readouterr().err == ""


def test_one_mostly_unk_utterance_warns_even_below_the_token_share(tmp_path, capsys):
    tok = train_tokenizer(EN * 10, tmp_path / "en.model", vocab_size=30)
    utts = [Utterance(f"en{i}", EN[i % len(EN)]) for i in range(400)] + [Utterance("zh", "打开文件")]
    TextDataset(utts, tok, None, None, source="mixed.jsonl")
    err = capsys.readouterr().err
    assert "mixed.jsonl:" in err and "in 1 of 401 utterances (e.g. 'zh')" in err


def _mt_manifest(tmp_path):
    rows = [{"id": f"u{i}", "text": t, "translation": {"en": t}} for i, t in enumerate(EN * 5)]
    return str(_write(tmp_path / "train.jsonl", rows))


@pytest.mark.parametrize("key", ["tokenizer", "source_tokenizer"])
def test_missing_tokenizer_is_an_error_naming_key_and_path(tmp_path, key):
    train = _mt_manifest(tmp_path)
    paths = {"tokenizer": tmp_path / "en.model", "source_tokenizer": tmp_path / "src.model"}
    for other in set(paths) - {key}:
        train_tokenizer(EN * 10, paths[other], vocab_size=30)
    missing = tmp_path / "typo" / "missing.model"
    paths[key] = missing
    dm = TextDataModule(train, train, str(paths["tokenizer"]), str(paths["source_tokenizer"]),
                        source_vocab_size=30, vocab_size=30, target_lang="en")
    at = re.escape(str(missing))
    for step in (dm.prepare_data, dm.setup):
        with pytest.raises(TokenizerNotFoundError, match=rf"^data\.{key}: tokenizer model not found: {at}; "
                           rf"create it with `speechkit tokenizer .*train\.jsonl.* --vocab-size 30 "
                           rf"--out {at}` or set data\.train_tokenizers: true") as e:
            step()
        assert isinstance(e.value, SpeechkitError) and "\n" not in str(e.value)
    assert not missing.exists() and not missing.parent.exists()


def test_missing_tokenizers_are_trained_when_the_config_asks(tmp_path):
    train = _mt_manifest(tmp_path)
    tgt, src = tmp_path / "tok" / "en.model", tmp_path / "tok" / "src.model"
    dm = TextDataModule(train, train, str(tgt), str(src), source_vocab_size=30, vocab_size=30,
                        target_lang="en", train_tokenizers=True)
    dm.prepare_data()
    assert Tokenizer(tgt).vocab_size == 30 and Tokenizer(src).vocab_size == 30
    dm.setup("fit")
    assert len(dm.sets["train"]) == len(EN) * 5


def test_manifest_tokenizer_trains_on_transcripts_or_translations(tmp_path):
    rows = [{"id": f"u{i}", "text": t, "translation": {"de": f"Satz {t}"}} for i, t in enumerate(EN * 5)]
    train = _write(tmp_path / "train.jsonl", rows)
    en = manifest_tokenizer(train, tmp_path / "en.model", 30)
    de = manifest_tokenizer(train, tmp_path / "de.model", 30, target_lang="de")
    assert en.vocab_size == de.vocab_size == 30 and en.fingerprint != de.fingerprint
    assert en.unk in en.encode("satz") and de.unk not in de.encode("satz")  # no 'z' in the transcripts
    with pytest.raises(ValueError, match="train.jsonl: utterance 'u0' has no 'fr' translation"):
        manifest_tokenizer(train, tmp_path / "fr.model", 30, target_lang="fr")


def test_each_mode_reads_its_own_inputs(tmp_path):
    """Speech: fbank features and the transcript side (STAST); text: source token ids (MT); LM: the
    targets themselves, from plain text too. ``input_info`` is what interface.json records."""
    wave = torch.sin(torch.arange(16000) / 8.0) * 0.1
    write_audio(tmp_path / "a.wav", wave)
    rows = [{"id": f"u{i}", "text": t, "audio": "a.wav", "duration": 1.0, "translation": {"en": t}}
            for i, t in enumerate(EN * 5)]
    train = str(_write(tmp_path / "train.jsonl", rows))
    tok = str(tmp_path / "en.model")
    speech = SpeechDataModule(train, train, tok, cache_dir=None, num_mel_bins=40, transcript_tokenizer=tok,
                              transcript_vocab_size=30, vocab_size=30, train_tokenizers=True,
                              max_valid_utts=3)
    speech.prepare_data()
    speech.setup("fit")
    x, y, _, transcript = speech.sets["train"][0]
    assert x.shape[1] == 40 and speech.input_info()["kind"] == "fbank" and len(speech.sets["valid"]) == 3
    assert torch.equal(transcript, y) and speech.source_tokenizer is None

    mt = TextDataModule(train, train, tok, tok, source_vocab_size=30, vocab_size=30, target_lang="en")
    mt.setup("fit")
    assert mt.input_info() == {"kind": "text", **Tokenizer(tok).info()} and mt.transcript_tokenizer is None

    text = tmp_path / "lm.txt"
    text.write_text("\n".join(EN * 5) + "\n")
    lm = LMDataModule(str(text), train, tok, vocab_size=30)
    lm.setup("fit")
    src, tgt, _ = lm.sets["train"][0]
    assert lm.input_info() == {"kind": "none"} and torch.equal(src, tgt)
    assert len(lm.sets["train"]) == len(EN) * 5
    assert lm.source_tokenizer is None and lm.target_lang is None
