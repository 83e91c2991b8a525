"""Common Voice (speechkit/corpora/commonvoice.py, recipes/commonvoice) on a tiny release in the real
layout: cv-corpus-<version>/<lang>/ with split TSVs (a newer release's columns for German, an older
release's for English) and 48-kHz MP3 clips of espeak speech; then the recipe through `speechkit run`."""

import json
from pathlib import Path

import pytest
import soundfile as sf
import torch
from dataset_fixtures import FIT, altered, bad_then_skipped, run_recipe

from speechkit.audio import resample
from speechkit.cli import main
from speechkit.corpora import prepare
from speechkit.corpora.common import LayoutError, PrepareError
from speechkit.corpora.espeak import speak
from speechkit.data.manifest import load_manifest
from speechkit.metrics import normalize_text

RELEASE = "cv-corpus-17.0-2024-03-15"
DE = ['"Guten Morgen", sagte sie.', "Die Straße ist heute sehr schön.", "Wir fahren morgen nach Berlin.",
      "Das Wetter bleibt kühl und nass.", "Er liest gern ein gutes Buch.", "Können Sie mir bitte helfen?",
      "Die Kinder spielen im Garten.", "Ich trinke jeden Tag Kaffee.", "Der Zug kommt um acht Uhr an.",
      "Sie öffnet das große Fenster."]
EN = ["The weather is nice today.", "Please close the door.", "We walked along the river.",
      "It's a long way home.", "She plays the violin."]
# the German TSVs in a 2024 release's columns, the English ones in an older release's (path without .mp3)
DE_HEADER = ("client_id path sentence_id sentence sentence_domain up_votes down_votes age gender accents "
             "variant locale segment").split()
EN_HEADER = "client_id path sentence up_votes down_votes age gender accent".split()
SPLIT_SIZES = {"train": 6, "dev": 2, "test": 2}  # German; English has 3, 1, 1


def _row(header: list[str], lang: str, n: int, text: str, speaker: str, ext: str) -> str:
    values = {"client_id": speaker, "path": f"common_voice_{lang}_{1000 + n}{ext}", "sentence": text,
              "sentence_id": f"{n:064x}", "up_votes": "2", "down_votes": "0", "locale": lang}
    return "\t".join(values.get(col, "") for col in header)


def make_commonvoice(root: Path) -> Path:
    """``root/cv-corpus-17.0-2024-03-15/{de,en}/`` as the per-language archives unpack: split TSVs,
    validated/invalidated/other.tsv, clips/*.mp3 (48 kHz), clip_durations.tsv; returns the release."""
    release = root / RELEASE
    for lang, sentences, header, voice, ext in (("de", DE, DE_HEADER, "de", ".mp3"),
                                                ("en", EN, EN_HEADER, "en-us", "")):
        folder, n, durations = release / lang, 0, ["clip\tduration[ms]"]
        (folder / "clips").mkdir(parents=True)
        for split, size in SPLIT_SIZES.items():
            rows = ["\t".join(header)]
            for _ in range(size if lang == "de" else size // 2):
                speaker = f"{lang}{n % 3}" + "ab" * 60  # client ids are long hashes
                rows.append(_row(header, lang, n, sentences[n], speaker, ext))
                wave, _ = speak(sentences[n], voice)
                wave48 = resample(torch.from_numpy(wave), 16000, 48000).numpy()
                clip = folder / "clips" / f"common_voice_{lang}_{1000 + n}.mp3"
                sf.write(clip, wave48, 48000, format="MP3")
                durations.append(f"{clip.name}\t{round(1000 * len(wave) / 16000)}")
                n += 1
            (folder / f"{split}.tsv").write_text("\n".join(rows) + "\n")
        for name in ("validated", "invalidated", "other"):
            (folder / f"{name}.tsv").write_text("\t".join(header) + "\n")
        (folder / "clip_durations.tsv").write_text("\n".join(durations) + "\n")
    return release


@pytest.fixture(scope="module")
def cv(tmp_path_factory):
    return make_commonvoice(tmp_path_factory.mktemp("cv"))


def test_commonvoice_manifests_from_the_distributed_layout(cv, tmp_path):
    out = tmp_path / "data"
    summary = prepare("commonvoice", root=cv.parent, out=out, langs=["de", "en"], workers=2)
    m = summary["manifests"]
    counts = {k: v["utterances"] for k, v in m.items()}
    assert counts == {"asr/de/train": 6, "asr/de/dev": 2, "asr/de/test": 2,
                      "asr/en/train": 3, "asr/en/dev": 1, "asr/en/test": 1}
    de = load_manifest(out / "asr/de/train.jsonl", require_audio=True)
    assert de[0].text == '"Guten Morgen", sagte sie.' and de[0].lang == "de"  # quotes kept (QUOTE_NONE)
    assert de[0].id == "common_voice_de_1000" and de[0].speaker == "de0" + "ab" * 60
    assert Path(out / "asr/de" / de[0].audio).resolve() == cv / "de/clips/common_voice_de_1000.mp3"
    truth = dict(line.split("\t") for line in (cv / "de/clip_durations.tsv").read_text().splitlines()[1:])
    for u in de:  # durations from the MP3 headers
        assert u.duration == pytest.approx(int(truth[f"{u.id}.mp3"]) / 1000, abs=0.06), u.id
    assert m["asr/de/train"]["hours"] == pytest.approx(sum(u.duration for u in de) / 3600, abs=1e-3)
    en = load_manifest(out / "asr/en/test.jsonl", require_audio=True)
    assert en[0].audio.endswith("common_voice_en_1004.mp3") and en[0].lang == "en"  # path had no .mp3
    again = prepare("commonvoice", root=cv, out=out, langs=["de", "en"], workers=2)
    assert again["written"] == [] and again["manifests"] == m  # idempotent
    one = prepare("commonvoice", root=cv / "en", out=tmp_path / "en", workers=2)  # a <lang>/ folder as root
    assert set(one["manifests"]) == {"asr/en/train", "asr/en/dev", "asr/en/test"}


def test_commonvoice_bad_entries_are_named_or_skipped(cv, tmp_path):
    dev = cv / "de/dev.tsv"
    with altered(cv / "de/clips/common_voice_de_1008.mp3"), \
            altered(dev, dev.read_text() + "x\tcommon_voice_de_9\tshort row\n"):
        summary, problems = bad_then_skipped(
            "commonvoice", r"(?s)2 bad entries.*de/dev.tsv:4: 3 fields, the header has 13"
            r".*common_voice_de_1008: audio file missing: .*1008.mp3", tmp_path, root=cv, langs=["de"])
        assert summary["manifests"]["asr/de/test"]["utterances"] == 1
        assert len(problems) == 2


def test_commonvoice_layout_and_column_errors(cv, tmp_path):
    with pytest.raises(ValueError, match=r"holds 2 languages \(de, en\): choose with --langs"):
        prepare("commonvoice", root=cv)
    with pytest.raises(LayoutError, match=r"(?s)language\(s\) fr not found .*found: de, en.*mozilla.org"):
        prepare("commonvoice", root=cv, langs=["fr"])
    with pytest.raises(SystemExit, match=r"(?s)no language folder .*clips/<path> +common_voice_<lang>"):
        main(["prepare", "commonvoice", "--root", str(tmp_path)])
    (tmp_path / "xx/clips").mkdir(parents=True)
    for split in ("train", "dev", "test"):
        (tmp_path / "xx" / f"{split}.tsv").write_text("client_id\tfilename\tsentence\nc\ta.mp3\thello\n")
    with pytest.raises(PrepareError, match=r"xx/train.tsv: no path column in its header line"):
        prepare("commonvoice", root=tmp_path / "xx")


@pytest.mark.slow
def test_commonvoice_recipe_runs_every_stage(cv, tmp_path):
    """prepare → tokenizer → the transducer (LibriSpeech's config at toy size, two steps) → decode →
    score, for German chosen by --set lang=de."""
    exp = tmp_path / "exp"
    sets = {"corpus": cv, "lang": "de", "data": tmp_path / "data", "exp": exp, "vocab": 40,
            "fit_args": FIT + " --data.init_args.max_frames=4000",
            "asr_args": "--config=tests/configs/tiny_librispeech_transducer.yaml"}
    run_recipe("commonvoice", **sets)
    assert (tmp_path / "data/tokenizer/de_unigram40.model").is_file()
    assert (exp / "transducer/brick/weights.safetensors").is_file()
    rows = [json.loads(line) for line in (exp / "decode/test.jsonl").read_text().splitlines()]
    assert [r["ref"] for r in rows] == [normalize_text(t) for t in DE[8:]]
    assert not (tmp_path / "data/asr/en").exists()  # only the chosen language
