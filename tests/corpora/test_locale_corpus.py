"""The built-in locale corpus: gettext catalogs + espeak-ng, built small into tmp_path."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import soundfile as sf

from speechkit.corpora.common import PREPARE_VERSION
from speechkit.corpora.espeak import split_words
from speechkit.corpora.locale import (
    DEFAULT_HELDOUT,
    SPLITS,
    clean_english,
    clean_translation,
    prepare_locale,
    read_catalogs,
)
from speechkit.data.manifest import load_manifest
from speechkit.metrics import normalize_text

LANGS = ("de", "fr")


def _manifests(out: Path) -> dict[str, list]:
    return {str(p.relative_to(out)): load_manifest(p) for p in sorted(out.rglob("*.jsonl"))
            if p.name != "synth_cache.jsonl"}


def test_cleaning():
    assert clean_english("_Open File") == "Open File"
    assert clean_english("Save _As", "Speichern _unter") == "Save As"
    assert clean_english("fts_read failed", "fts_read fehlgeschlagen") is None
    assert clean_english("new_column_name value") is None
    assert clean_english("Don\u2019t  panic!") == "Don't panic!"
    for bad in ("File %s not found", "Open", "see http://x.org now", "use --force here",
                "bad {name} here", "two\nlines here", "version 2 only", "load libfoo.so now"):
        assert clean_english(bad) is None, bad
    assert clean_translation("_Datei  öffnen") == "Datei öffnen"
    assert clean_translation("%s fehlt") is None and clean_translation("Zeile 2") is None
    text = "Mark as (read-only) - don't!"
    assert [text[a:b] for a, b in split_words(text)] == ["Mark", "as", "read-only", "don't"]


def _asr(out: Path) -> dict[str, tuple[str, object]]:
    """{id: (split, utterance)} over every ASR manifest present."""
    return {u.id: (s, u) for s in SPLITS if (out / "asr" / f"{s}.jsonl").exists()
            for u in load_manifest(out / "asr" / f"{s}.jsonl")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("locale")
    return out, prepare_locale(out, max_utts=40, langs=LANGS, workers=2, progress=False)


def _utterances(summary: dict, sub: str) -> int:
    """Utterances in all of ``sub``'s manifests (e.g. ``asr``: the whole corpus)."""
    return sum(v["utterances"] for k, v in summary["manifests"].items() if k.rsplit("/", 1)[0] == sub)


def test_counts_and_manifests(corpus):
    out, summary = corpus
    details = summary["details"]
    assert summary["version"] == PREPARE_VERSION and summary["corpus"] == "locale"
    assert _utterances(summary, "asr") == 40 and details["synthesized_this_run"] == 40
    assert details["heldout_catalogs"] and "git" in details["heldout_catalogs"]
    assert json.loads((out / "prepare.json").read_text()) == summary
    mans = _manifests(out)
    assert set(mans) == {f"{name}.jsonl" for name in summary["manifests"]}  # empty splits: no file
    for name, entry in summary["manifests"].items():
        utts = mans[f"{name}.jsonl"]
        assert entry["utterances"] == len(utts) > 0, name
        assert entry["hours"] == round(sum(u.duration or 0 for u in utts) / 3600, 3), name
    for x in LANGS:
        assert _utterances(summary, f"st/en-{x}") == details["translations"][x] > 0
        for u in mans.get(f"mt/{x}-en/train.jsonl", []):
            assert u.lang == x and u.audio is None and set(u.translation) == {"en"}


def test_audio_and_word_times(corpus):
    out, _ = corpus
    utts = [u for _, u in _asr(out).values()]
    exact = 0
    for u in utts:
        info = sf.info(u.audio)
        assert info.samplerate == 16000 and abs(info.frames / 16000 - u.duration) < 1e-6
        assert u.id.startswith("locale-") and u.speaker and u.domain
        prev = 0.0
        for _, start, end in u.words:
            assert prev <= start <= end <= u.duration
            prev = end
        assert normalize_text(" ".join(w for w, _, _ in u.words)) == normalize_text(u.text)
        exact += len(u.words) == len(split_words(u.text))
    assert exact >= 0.9 * len(utts)


def test_heldout_and_stable_splits(corpus):
    out, summary = corpus
    split_of = {i: (s, u.domain) for i, (s, u) in _asr(out).items()}
    for s, domain in split_of.values():
        assert s.startswith("heldout_") == domain.startswith(DEFAULT_HELDOUT)

    t = time.time()
    again = prepare_locale(out, max_utts=40, langs=LANGS, workers=2, progress=False)
    assert again["details"]["synthesized_this_run"] == 0 and time.time() - t < 15
    assert again["manifests"] == summary["manifests"]

    small = prepare_locale(out, max_utts=20, langs=LANGS, workers=2, progress=False)
    assert small["details"]["synthesized_this_run"] == 0 and _utterances(small, "asr") == 20
    sub = {i: (s, u.domain) for i, (s, u) in _asr(out).items()}
    assert len(sub) == 20 and all(split_of[i] == v for i, v in sub.items())


def test_missing_catalogs(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        prepare_locale(tmp_path / "out", locale_dir=tmp_path, progress=False)


def test_unreadable_catalog_is_a_problem_line(tmp_path):
    bad = tmp_path / "de" / "LC_MESSAGES" / "broken.mo"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a catalog")
    cats, problems = read_catalogs(tmp_path, ["de"])
    assert cats == {"de": {}} and problems == [f"{bad}: unreadable catalog (OSError), skipped"]
