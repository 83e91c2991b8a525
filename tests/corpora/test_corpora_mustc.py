"""MuST-C (speechkit.corpora.mustc) on a tiny copy in its distributed layout: manifests, validation,
idempotence, named errors, and the whole recipe (recipes/mustc) through `speechkit run`."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from dataset_fixtures import FIT, SENTENCES, bad_then_skipped, run_recipe

from speechkit.corpora import prepare
from speechkit.corpora.common import LayoutError, PrepareError
from speechkit.corpora.espeak import speak
from speechkit.data.manifest import load_manifest

TRANSLATIONS = {
    "de": ["der schnelle braune Fuchs springt über den faulen Hund", "sie verkauft Muscheln am Meer",
           "ein Stich zur rechten Zeit erspart neun", "es ist nicht alles Gold was glänzt",
           "öffne die Datei und lies sie", "der frühe Vogel fängt den Wurm", "keine Nachricht ist gut",
           "Übung macht den Meister", "die Zeit fliegt wie ein Pfeil", "wo Rauch ist ist auch Feuer"],
    "fr": ["le renard brun saute par-dessus le chien paresseux",
           "elle vend des coquillages au bord de la mer",
           "un point à temps en vaut cent", "tout ce qui brille n'est pas or", "ouvre le fichier et lis-le",
           "l'avenir appartient à ceux qui se lèvent tôt", "pas de nouvelles bonnes nouvelles",
           "c'est en forgeant qu'on devient forgeron", "le temps file comme une flèche",
           "il n'y a pas de fumée sans feu"],
}
SPLITS = ("train", "dev", "tst-COMMON", "tst-HE")
GAP = 0.3  # seconds of silence before each sentence of a talk
TINY_ST = FIT + " --data.init_args.max_frames=4000"


def make_talk(sentences: list[int], path) -> list[dict]:
    """One talk wav: each sentence spoken after GAP s of silence; its YAML segments (offset, duration)."""
    rate, pieces, segs, t = 16000, [], [], 0.0
    for k in sentences:
        wave, _ = speak(SENTENCES[k], "en-us")
        pieces += [np.zeros(int(GAP * rate), np.float32), wave]
        segs.append({"duration": round(len(wave) / rate, 6), "offset": round(t + GAP, 6)})
        t += GAP + len(wave) / rate
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.concatenate(pieces), rate, subtype="PCM_16")
    return segs


def make_mustc(root, langs=("de", "fr"), per_talk=3):
    """``root/en-<tgt>/data/<split>/{wav,txt}`` as MUSTC_v1.0_en-<tgt>.tar.gz unpacks: two talks per split."""
    for s, split in enumerate(SPLITS):
        lines, k = [], 0
        for talk in (10 * s + 1, 10 * s + 2):
            ids = [(k + i) % len(SENTENCES) for i in range(per_talk)]
            k += per_talk
            first = root / f"en-{langs[0]}/data/{split}/wav/ted_{talk}.wav"
            for seg, i in zip(make_talk(ids, first), ids):
                lines.append((seg, i, talk))
            for lang in langs[1:]:
                other = root / f"en-{lang}/data/{split}/wav/ted_{talk}.wav"
                other.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(first, other)
        for lang in langs:
            txt = root / f"en-{lang}/data/{split}/txt"
            txt.mkdir(parents=True, exist_ok=True)
            (txt / f"{split}.yaml").write_text("".join(
                f"- {{duration: {seg['duration']}, offset: {seg['offset']}, rW: 9, uW: 0, "
                f"speaker_id: spk.{talk}, wav: ted_{talk}.wav}}\n" for seg, _, talk in lines))
            (txt / f"{split}.en").write_text("".join(SENTENCES[i].capitalize() + ".\n" for _, i, _ in lines))
            (txt / f"{split}.{lang}").write_text("".join(TRANSLATIONS[lang][i] + "\n" for _, i, _ in lines))
    return root


@pytest.fixture(scope="module")
def mustc(tmp_path_factory):
    return make_mustc(tmp_path_factory.mktemp("mustc"))


def test_mustc_manifests_from_the_distributed_layout(mustc, tmp_path):
    out = tmp_path / "data"
    summary = prepare("mustc", root=mustc, out=out, workers=2)
    m = summary["manifests"]
    assert set(m) == {f"{task}/en-{t}/{s}" for task in ("st", "mt") for t in ("de", "fr") for s in SPLITS}
    assert all(v["utterances"] == 6 for v in m.values())
    st = load_manifest(out / "st/en-fr/tst-COMMON.jsonl", require_audio=True)
    assert [u.id for u in st] == [f"ted_{t}_{i}" for t in (21, 22) for i in range(3)]
    assert st[0].text == SENTENCES[0].capitalize() + "."
    assert st[0].translation == {"fr": TRANSLATIONS["fr"][0]}
    assert st[3].speaker == "spk.22" and st[3].audio.endswith("en-fr/data/tst-COMMON/wav/ted_22.wav")
    assert st[0].offset == pytest.approx(0.3) and st[1].offset > st[0].offset + st[0].duration
    with sf.SoundFile(st[2].audio) as f:  # the last segment ends where the talk's audio ends
        assert st[2].offset + st[2].duration == pytest.approx(f.frames / f.samplerate, abs=1e-3)
    mt = load_manifest(out / "mt/en-de/train.jsonl")
    assert mt[0].audio is None and mt[0].text == st[0].text
    assert mt[0].translation == {"de": TRANSLATIONS["de"][0]}
    assert m["st/en-de/train"]["hours"] == pytest.approx(sum(u.duration for u in load_manifest(
        out / "st/en-de/train.jsonl")) / 3600, abs=1e-3)
    again = prepare("mustc", root=mustc, out=out, workers=2)
    assert again["written"] == [] and again["manifests"] == m  # idempotent
    one = prepare("mustc", root=mustc / "en-de", out=tmp_path / "one")  # one en-<tgt>/ folder as the root
    assert set(one["params"]["langs"]) == {"de"} and len(one["manifests"]) == 8


def test_mustc_bad_entries_are_named_or_skipped(mustc, tmp_path):
    yml = mustc / "en-de/data/dev/txt/dev.yaml"
    good = yml.read_text()
    lines = good.splitlines(keepends=True)
    lines[1] = lines[1].replace("offset: ", "offset: 100")  # the 2nd segment starts past the end
    yml.write_text("".join(lines))
    try:
        summary, problems = bad_then_skipped("mustc", r"1 bad entry .*\n  ted_11_1: segment 100.* ends after",
                                             tmp_path, root=mustc, langs=["de"])
        assert summary["manifests"]["st/en-de/dev"]["utterances"] == 5
        assert summary["manifests"]["mt/en-de/dev"]["utterances"] == 5
        assert problems[0].startswith("ted_11_1: segment")
        yml.write_text("".join(lines[:-1]))  # one segment fewer than transcript lines
        with pytest.raises(PrepareError, match=r"dev.yaml has 5 segments, .*dev.en 6 lines and .*dev.de 6"):
            prepare("mustc", root=mustc, out=tmp_path, langs=["de"])
        yml.write_text(good.replace("wav: ted_12.wav}", "}", 1))
        with pytest.raises(PrepareError, match=r"dev.yaml:4: segment without wav"):
            prepare("mustc", root=mustc, out=tmp_path, langs=["de"])
    finally:
        yml.write_text(good)


def test_mustc_layout_errors_say_where_the_data_comes_from(mustc, tmp_path):
    with pytest.raises(LayoutError, match=r"(?s)no en-<tgt>/data/ folder .*ict.fbk.eu/must-c.*<split>.yaml"):
        prepare("mustc", root=tmp_path)
    with pytest.raises(LayoutError, match=r"language pair en-es not found"):
        prepare("mustc", root=mustc, langs=["es"])
    (tmp_path / "en-it/data/train/txt").mkdir(parents=True)
    with pytest.raises(LayoutError, match=r"the en-it dev split not found: .*en-it/data/dev"):
        prepare("mustc", root=tmp_path)
    for split in ("dev", "tst-COMMON"):
        (tmp_path / f"en-it/data/{split}").mkdir()
    with pytest.raises(LayoutError, match=r"the train segment list not found: .*txt/train.yaml"):
        prepare("mustc", root=tmp_path)


@pytest.mark.slow
def test_mustc_recipe_runs_every_stage(mustc, tmp_path):
    """prepare, tokenizers, ASR (transducer), MT (LegoNN), STAST warm-started from the ASR brick (two steps
    each, the recipes' configs at toy sizes), decodes of STAST, the cascade, ASR and MT on tst-COMMON, and
    their scores: En→Fr through `speechkit run` (`--set tgt=fr`)."""
    run_recipe("mustc", corpus=mustc, tgt="fr", data=tmp_path / "data", exp=tmp_path / "exp", vocab=40,
         src_vocab=40, fit_args=TINY_ST, asr_args="--config=tests/configs/tiny_librispeech_transducer.yaml",
         mt_args="--config=tests/configs/tiny_iwslt14_transformer.yaml",
         st_args="--config=tests/configs/tiny_mustc_stast.yaml")
    exp = tmp_path / "exp"
    for brick in ("asr", "mt", "stast"):
        assert (exp / brick / "brick/weights.safetensors").is_file(), brick
    assert json.loads((exp / "stast/brick/interface.json").read_text()).get("target_lang") == "fr"
    run_config = (exp / "stast/lightning_logs/version_0/config.yaml").read_text()
    assert f"init_from:\n      encoder: {exp}/asr/brick#encoder" in run_config  # warm start
    for name, word in (("st", "renard"), ("cascade", "renard"), ("asr", "quick"), ("mt", "renard")):
        rows = [json.loads(x) for x in (exp / f"decode/{name}-tst-COMMON.jsonl").read_text().splitlines()]
        assert len(rows) == 6 and word in rows[0]["ref"].lower(), name
    assert (tmp_path / "data/tokenizer/en-fr/fr40.model").is_file()
    assert (tmp_path / "data/tokenizer/en-fr/en40.model").is_file()
