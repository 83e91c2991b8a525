"""Europarl-ST v1.1 preparation (speechkit/corpora/europarl_st.py) on a tiny copy in the distributed layout,
and the whole recipes/europarl_st through `speechkit run` (toy-size configs, two training steps each)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from dataset_fixtures import FIT, run_recipe
from safetensors.torch import load_file

from speechkit.cli import main
from speechkit.corpora import prepare
from speechkit.corpora.common import LayoutError, PrepareError
from speechkit.corpora.espeak import speak
from speechkit.data.manifest import load_manifest

TRIPLES = [  # (en, de, fr)
    ("the house is open today", "das haus ist heute offen", "la maison est ouverte aujourd'hui"),
    ("we vote on the report", "wir stimmen über den bericht ab", "nous votons sur le rapport"),
    ("the debate is closed", "die aussprache ist geschlossen", "le débat est clos"),
    ("thank you very much", "vielen dank", "merci beaucoup"),
    ("the commission agrees", "die kommission stimmt zu", "la commission est d'accord"),
    ("this is an important question", "das ist eine wichtige frage", "c'est une question importante"),
    ("we need more time", "wir brauchen mehr zeit", "nous avons besoin de plus de temps"),
    ("the council has decided", "der rat hat entschieden", "le conseil a décidé"),
    ("i support this proposal", "ich unterstütze diesen vorschlag", "je soutiens cette proposition"),
    ("the vote will take place tomorrow", "die abstimmung findet morgen statt", "le vote aura lieu demain"),
    ("madam president", "frau präsidentin", "madame la présidente"),
    ("the budget is too small", "der haushalt ist zu klein", "le budget est trop petit"),
]
SPLITS = ("train", "dev", "test")
GAP = 0.3  # seconds of silence before each segment


def _speech(audios: Path, speech: str, texts: list[str], voice: str) -> list[tuple[float, float]]:
    """``audios/<speech>.flac`` (the texts spoken one after another, GAP s apart) and an .m4a placeholder
    beside it, as distributed; the (start, end) of each text, in seconds rounded to 10 ms."""
    waves, times, t = [], [], 0.0
    for text in texts:
        wave, _ = speak(text, voice)
        waves += [np.zeros(int(GAP * 16000), np.float32), wave]
        start = t + GAP
        t = start + len(wave) / 16000
        times.append((round(start, 2), round(t, 2)))
    audios.mkdir(parents=True, exist_ok=True)
    sf.write(str(audios / f"{speech}.flac"), np.concatenate(waves), 16000)
    (audios / f"{speech}.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00")  # not decodable
    return times


def _split(folder: Path, src: str, tgt: str, segs: list[tuple[str, float, float, str, str]]) -> None:
    """One ``<src>/<tgt>/<split>/`` folder: segments.lst (+ texts) and the speech-level files."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "segments.lst").write_text("".join(f"{s} {a:.2f} {b:.2f}\n" for s, a, b, _, _ in segs))
    (folder / f"segments.{src}").write_text("".join(x + "\n" for *_, x, _ in segs))
    (folder / f"segments.{tgt}").write_text("".join(y + "\n" for *_, y in segs))
    speeches = list(dict.fromkeys(s for s, *_ in segs))
    (folder / "speeches.lst").write_text("".join(f"{s}\n" for s in speeches))
    for lang, k in ((src, 3), (tgt, 4)):
        (folder / f"speeches.{lang}").write_text(
            "".join(" ".join(g[k] for g in segs if g[0] == s) + "\n" for s in speeches))


def _pick(rows: dict, speeches: tuple, i: int, j: int) -> list:
    """(speech, start, end, text i, text j) of each segment of ``speeches`` (0 en, 1 de, 2 fr)."""
    return [(*r[:3], r[3 + i], r[3 + j]) for sp in speeches for r in rows[sp]]


def make_europarl_st(root: Path) -> Path:
    """``root/v1.1`` with en-de, en-fr (English speech) and de-en (German speech): two speeches per pair and
    split of two segments each; en-de and en-fr share their first speech (A), as real pairs share
    speeches, so the English ASR union has three speeches (6 segments) per split. Returns the times:
    {speech: [(start, end), …]}."""
    v, times, k = root / "v1.1", {}, 0
    for split in SPLITS:
        a, b, c, d1, d2 = (f"{lang}.2009{n}{SPLITS.index(split)}.3-{i}" for lang, n, i in
                           (("en", 1, 11), ("en", 2, 12), ("en", 3, 13), ("de", 4, 14), ("de", 5, 15)))
        rows = {}
        for speech, voice in ((a, "en-us"), (b, "en-us"), (c, "en-us"), (d1, "de"), (d2, "de")):
            trip = [TRIPLES[(k + j) % len(TRIPLES)] for j in range(2)]
            k += 2
            lang = speech[:2]
            times[speech] = _speech(v / lang / "audios", speech, [t[0 if lang == "en" else 1] for t in trip],
                                    voice)
            rows[speech] = [(speech, s, e, *t) for (s, e), t in zip(times[speech], trip)]
        _split(v / "en/de" / split, "en", "de", _pick(rows, (a, b), 0, 1))
        _split(v / "en/fr" / split, "en", "fr", _pick(rows, (a, c), 0, 2))
        _split(v / "de/en" / split, "de", "en", _pick(rows, (d1, d2), 1, 0))
    return times


@pytest.fixture(scope="module")
def europarl(tmp_path_factory):
    root = tmp_path_factory.mktemp("europarl_st")
    return root, make_europarl_st(root)


def test_manifests_from_the_distributed_layout(europarl, tmp_path):
    """ST per pair, the English ASR union (de-duplicated over en-de and en-fr), text-only MT; segment
    offsets/durations as in segments.lst; a second run writes nothing."""
    root, times = europarl
    out = tmp_path / "data"
    summary = prepare("europarl_st", root=root, out=out)
    assert summary["params"]["langs"] == ["de-en", "en-de", "en-fr"] and summary["problems"] == []
    counts = {k: v["utterances"] for k, v in summary["manifests"].items()}
    for split in SPLITS:
        for pair in ("en-de", "en-fr", "de-en"):
            assert counts[f"st/{pair}/{split}"] == counts[f"mt/{pair}/{split}"] == 4
        assert counts[f"asr/en/{split}"] == 6 and counts[f"asr/de/{split}"] == 4
    st = load_manifest(out / "st/en-de/train.jsonl", require_audio=True)
    first = st[0]
    speech = Path(first.audio).stem
    start, end = times[speech][0]
    assert first.audio.endswith(".flac")
    assert first.id == f"{speech}_{round(start * 100):07d}_{round(end * 100):07d}"
    assert (first.offset, first.duration, first.lang) == (start, round(end - start, 3), "en")
    assert first.text == TRIPLES[0][0] and first.translation == {"de": TRIPLES[0][1]}
    fr = load_manifest(out / "st/en-fr/train.jsonl")
    assert fr[0].id == first.id and fr[0].translation == {"fr": TRIPLES[0][2]}  # speech A in both pairs
    asr = load_manifest(out / "asr/en/train.jsonl")
    assert len({u.id for u in asr}) == 6 and all(u.translation == {} for u in asr)
    assert {u.id for u in st} | {u.id for u in fr} == {u.id for u in asr}
    de = load_manifest(out / "st/de-en/dev.jsonl")
    assert de[0].lang == "de" and set(de[0].translation) == {"en"} and de[0].text in [t[1] for t in TRIPLES]
    mt = load_manifest(out / "mt/en-de/test.jsonl")
    assert all(u.audio is None and u.translation["de"] for u in mt)
    again = prepare("europarl_st", root=root / "v1.1", out=out, langs=["en-de", "en-fr", "de-en"])
    assert again["written"] == [] and again["manifests"] == summary["manifests"]
    only = prepare("europarl_st", root=root, out=tmp_path / "only", langs=["en-fr"])
    assert sorted(only["manifests"]) == sorted(f"{k}/{s}" for k in ("st/en-fr", "mt/en-fr", "asr/en")
                                               for s in SPLITS)
    assert only["manifests"]["asr/en/dev"]["utterances"] == 4


def test_m4a_only_speeches_are_named_with_the_conversion_or_skipped(europarl, tmp_path, capsys):
    """A speech whose FLAC was not made (only the distributed .m4a): an error naming the file and giving
    the ffmpeg command, through the CLI too; --skip-bad leaves its segments out and lists it."""
    root = tmp_path / "copy"
    shutil.copytree(europarl[0] / "v1.1", root / "v1.1")
    gone = root / "v1.1/en/audios/en.200920.3-12.flac"  # speech B of train: in en-de only
    gone.unlink()
    m4a = gone.with_suffix(".m4a")
    with pytest.raises(PrepareError, match="ffmpeg") as e:
        prepare("europarl_st", root=root, out=tmp_path / "data", langs=["en-de"])
    assert str(m4a) in str(e.value) and "--skip-bad" in str(e.value)
    with pytest.raises(SystemExit, match=m4a.name):
        main(["prepare", "europarl_st", "--root", str(root), "--out", str(tmp_path / "d"), "--langs=en-de"])
    summary = prepare("europarl_st", root=root, out=tmp_path / "data", langs=["en-de"], skip_bad=True)
    assert len(summary["problems"]) == 1 and str(m4a) in summary["problems"][0]
    assert summary["manifests"]["st/en-de/train"]["utterances"] == 2  # speech A's two segments
    assert summary["manifests"]["asr/en/train"]["utterances"] == 2
    assert summary["manifests"]["mt/en-de/train"]["utterances"] == 4  # text is unaffected
    assert json.loads((tmp_path / "data/prepare.json").read_text())["problems"] == summary["problems"]


def test_layout_and_segment_errors_name_what_is_wrong(europarl, tmp_path):
    with pytest.raises(LayoutError, match=r"mllp\.upv\.es/europarl-st(.|\n)*segments\.lst"):
        prepare("europarl_st", root=tmp_path, out=tmp_path / "data")
    with pytest.raises(LayoutError, match="pair en-es not found"):
        prepare("europarl_st", root=europarl[0], out=tmp_path / "data", langs=["en-es"])
    with pytest.raises(ValueError, match="source-target pairs"):
        prepare("europarl_st", root=europarl[0], out=tmp_path / "data", langs=["de"])
    root = tmp_path / "copy"
    shutil.copytree(europarl[0] / "v1.1/en", root / "v1.1/en")
    lst = root / "v1.1/en/de/dev/segments.lst"
    lst.write_text(lst.read_text().replace(" ", " x", 1))
    with pytest.raises(PrepareError, match=r"segments\.lst:1: expected '<speech_id> <start> <end>'"):
        prepare("europarl_st", root=root, out=tmp_path / "data", langs=["en-de"])
    lst.write_text("".join(lst.read_text().splitlines(keepends=True)[1:]))
    with pytest.raises(PrepareError, match=r"has 3 lines but .*segments\.en has 4"):
        prepare("europarl_st", root=root, out=tmp_path / "data", langs=["en-de"])




@pytest.mark.slow
def test_recipe_runs_every_stage(europarl, tmp_path):
    """prepare, tokenizers, the LegoNN ASR / De→En MT / En→De MT / ST trainings (two steps each, the recipe's
    configs at toy sizes), both zero-shot compositions, the fine-tuned composition, and every decode
    (own decoders, composed bricks, cascade) and score, through `speechkit run`."""
    exp = tmp_path / "exp"
    sets = {"corpus": europarl[0], "data": tmp_path / "data", "exp": exp, "vocab": 28, "de_vocab": 24,
            "beam": 2, "fit_args": FIT, "mt_args": "--config=tests/configs/tiny_iwslt14_transformer.yaml",
            "asr_args": "--config=tests/configs/tiny_europarl_st_lego_asr.yaml "
                        "--data.init_args.max_frames=4000"}
    sets["langs"] = "en-de,en-fr,de-en"  # en-fr too: the English ASR data is the union over both pairs
    run_recipe("europarl_st", **sets)
    for brick in ("asr/brick", "mt_de_en/brick", "mt_en_de/brick", "st/brick", "compose/asr_enc+mt_dec",
                  "compose/st_enc+mt_dec", "finetune/brick"):
        assert (exp / brick / "weights.safetensors").is_file(), brick
    composed = json.loads((exp / "compose/asr_enc+mt_dec/interface.json").read_text())
    assert composed["composed_from"]["decoder"] == str(exp / "mt_de_en/brick")
    bricks = ("asr/brick", "mt_de_en/brick", "st/brick", "compose/asr_enc+mt_dec", "finetune/brick")
    w = {b: load_file(exp / b / "weights.safetensors") for b in bricks}

    def near(a: str, b: str, prefix: str) -> bool:  # the weights of b under prefix, found again in a
        keys = [k for k in w[b] if k.startswith(prefix)]
        return bool(keys) and all(torch.allclose(w[a][k].float(), w[b][k].float(), atol=1e-3) for k in keys)

    assert near("compose/asr_enc+mt_dec", "mt_de_en/brick", "decoder.")  # the MT decoder, unchanged
    assert near("compose/asr_enc+mt_dec", "asr/brick", "encoder.")
    assert near("finetune/brick", "compose/asr_enc+mt_dec", "")  # started from the composition (2 tiny steps)
    assert near("st/brick", "asr/brick", "encoder.body.") and near("st/brick", "asr/brick", "encoder.cmvn.")
    for name in ("asr", "asr-zero-shot", "asr-finetuned", "mt-de-en", "mt-en-de", "st", "st-zero-shot",
                 "st-cascade"):
        rows = [json.loads(line) for line in (exp / "decode" / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == (6 if name.startswith("asr") else 4), name
    refs = {r["ref"] for r in map(json.loads, (exp / "decode/st-zero-shot.jsonl").read_text().splitlines())}
    assert refs <= {t[1] for t in TRIPLES}  # German references: the translations of st/en-de/test
