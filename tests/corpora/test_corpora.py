"""Dataset preparations (issue 8) on tiny fixtures in each dataset's real layout (tests/dataset_fixtures.py):
manifests, validation, idempotence, and errors that name what is wrong."""

import json

import pytest
from dataset_fixtures import FIT, TINY_MT, altered, bad_then_skipped, make_librispeech, run_recipe

from speechkit.cli import main
from speechkit.corpora import prepare
from speechkit.corpora.common import LayoutError, PrepareError
from speechkit.corpora.librispeech import PARTS
from speechkit.data.manifest import load_manifest


@pytest.fixture(scope="module")
def librispeech(tmp_path_factory):
    return make_librispeech(tmp_path_factory.mktemp("ls"))


def test_librispeech_manifests_from_the_distributed_layout(librispeech, tmp_path):
    out = tmp_path / "data"
    summary = prepare("librispeech", root=librispeech.parent, out=out, workers=2)
    parts = summary["manifests"]
    assert parts["asr/train-clean-100"]["utterances"] == 4 and parts["asr/train"]["utterances"] == 12
    train_hours = sum(parts[f"asr/{p}"]["hours"] for p in PARTS[:3])
    assert parts["asr/train"]["hours"] == pytest.approx(train_hours, abs=1e-3)
    assert set(parts) == {f"asr/{p}" for p in (*PARTS, "train", "dev")}
    utts = load_manifest(out / "asr/test-clean.jsonl", require_audio=True)
    assert {u.id for u in utts} == {"24-203-0000", "24-203-0001", "108-1245-0000", "108-1245-0001"}
    assert utts[0].speaker == utts[0].id.split("-")[0]
    assert utts[0].text == utts[0].text.upper() and 1.0 < utts[0].duration < 5.0
    assert (out / "lm/train.txt").read_text().count("\n") == 30
    assert summary["details"]["lm"]["sentences"] == 30
    assert parts["asr/dev"]["utterances"] == 8
    file = json.loads((out / "prepare.json").read_text())  # the one schema (corpora.common.write_summary)
    assert list(file) == ["version", "corpus", "params", "manifests", "problems", "details"]
    assert file == {k: v for k, v in summary.items() if k != "written"} and file["corpus"] == "LibriSpeech"
    again = prepare("librispeech", root=librispeech, out=out, workers=2)  # LibriSpeech/ itself as root
    assert again["written"] == [] and again["manifests"] == summary["manifests"]  # idempotent


def test_librispeech_bad_entries_are_named_or_skipped(librispeech, tmp_path):
    with altered(librispeech / "dev-clean/22/201/22-201-0001.flac"):
        bad = r"1 bad entry .*\n  22-201-0001: audio file missing: .*0001"
        summary, problems = bad_then_skipped("librispeech", bad, tmp_path, root=librispeech,
                                             parts=["dev-clean"])
        assert summary["manifests"]["asr/dev-clean"]["utterances"] == 3
        assert problems[0].startswith("22-201-0001")


def test_layout_errors_say_where_the_data_comes_from(tmp_path, capsys):
    with pytest.raises(LayoutError, match=r"(?s)none of the parts .*openslr.org/12.*<chapter>.trans.txt"):
        prepare("librispeech", root=tmp_path)
    with pytest.raises(SystemExit, match="--langs does not apply to the librispeech corpus"):
        main(["prepare", "librispeech", "--root", str(tmp_path), "--langs", "de"])
    with pytest.raises(SystemExit, match=r"error: LibriSpeech: part dev-other not found"):
        main(["prepare", "librispeech", "--root", str(tmp_path), "--parts", "dev-other"])


@pytest.mark.slow
def test_librispeech_recipe_runs_every_stage(librispeech, tmp_path):
    """Every stage (prepare, tokenizer, the transducer, LM, streaming and pruned-loss trainings for two steps
    each — the recipe's configs at toy sizes —, decodes with and without the LM, streaming evaluation,
    export) through `speechkit run`."""
    run_recipe("librispeech", corpus=librispeech.parent, data=tmp_path / "data", exp=tmp_path / "exp",
               vocab=40, fit_args=FIT + " --data.init_args.max_frames=4000",
               lm_args="--config=tests/configs/tiny_librispeech_lm.yaml",
               asr_args="--config=tests/configs/tiny_librispeech_transducer.yaml")
    bricks = ("transducer/brick", "lm/brick", "streaming/brick", "pruned/brick", "transducer_2of4_int8")
    for brick in bricks:
        assert (tmp_path / "exp" / brick / "weights.safetensors").is_file(), brick
    for name in ("test-clean", "test-other", "test-other-ilme", "stream-test-clean", "pruned-test-other"):
        assert (tmp_path / "exp/decode" / f"{name}.jsonl").read_text().count("\n") == 4, name


def test_iwslt14_splits_as_fairseq_prepares_them(tmp_path):
    from dataset_fixtures import DE_EN, make_iwslt14

    make_iwslt14(tmp_path / "raw")
    summary = prepare("iwslt14", root=tmp_path / "raw", out=tmp_path / "data")
    m = summary["manifests"]  # 5 talks × (title + description + 10 sentences) = 60 pairs, every 23rd is valid
    assert (m["mt/de-en/train"]["utterances"], m["mt/de-en/valid"]["utterances"]) == (57, 3)
    assert m["mt/de-en/test"]["utterances"] == 15  # 5 test sets × 3 segments
    train = load_manifest(tmp_path / "data/mt/de-en/train.jsonl")
    assert all("<" not in u.text and "<" not in u.translation["en"] for u in train)
    assert train[0].text == "TED Talk Das Wetter ist heute schön." and train[0].lang == "de"
    assert {(u.text, u.translation["en"]) for u in train} >= set(DE_EN[1:])
    test = load_manifest(tmp_path / "data/mt/de-en/test.jsonl")
    assert test[0].id == "IWSLT14.TED.dev2010-0000" and test[0].translation == {"en": DE_EN[0][1]}


def test_wmt16_and_parallel_file_errors(tmp_path, capsys):
    from dataset_fixtures import make_wmt16

    raw = make_wmt16(tmp_path / "raw")
    m = prepare("wmt16", root=raw, out=tmp_path / "data")["manifests"]
    assert [m[f"mt/ro-en/{s}"]["utterances"] for s in ("train", "valid", "test")] == [64, 4, 4]
    ro = raw / "training/europarl-v8.ro-en.ro"
    lines = ro.read_text().splitlines()
    with altered(ro, "\n".join(lines[:2] + [""] + lines[3:]) + "\n"):  # line 3 empty on one side
        bad = r"1 bad entry .*--skip-bad.*\n.*europarl-v8-0000003: empty source text"
        with pytest.raises(PrepareError, match=bad):
            prepare("wmt16", root=raw, out=tmp_path / "data")
        main(["prepare", "wmt16", "--root", str(raw), "--out", str(tmp_path / "data"), "--skip-bad"])
        out, err = capsys.readouterr()
        assert '"utterances": 63' in out and "left out 1 entry" in err and "europarl-v8-0000003" in err
    en = raw / "SETIMES.en-ro.en"
    en.write_text(en.read_text() + "one more line\n")
    with pytest.raises(PrepareError, match=r"SETIMES.en-ro.ro has 32 lines but .*SETIMES.en-ro.en has 33"):
        prepare("wmt16", root=raw, out=tmp_path / "data")
    en.unlink()
    with pytest.raises(LayoutError, match=r"(?s)SETIMES.en-ro.en not found under .*opus.nlpl.eu"):
        prepare("wmt16", root=raw, out=tmp_path / "data")


@pytest.mark.slow
def test_mt_recipes_iwslt14_then_wmt16_zero_shot_reuse(tmp_path):
    """IWSLT14 De→En, then WMT16 Ro→En on its English vocabulary, and the Ro→En encoder composed with the
    De→En decoder: every stage through `speechkit run`, two training steps each."""
    from dataset_fixtures import make_iwslt14, make_wmt16

    make_iwslt14(tmp_path / "iwslt14")
    make_wmt16(tmp_path / "wmt16")
    iw = {"data": tmp_path / "data/iwslt14", "exp": tmp_path / "exp/iwslt14", "vocab": 40, "src_vocab": 40,
          "fit_args": TINY_MT}
    run_recipe("iwslt14", corpus=tmp_path / "iwslt14", **iw)
    run_recipe("wmt16", corpus=tmp_path / "wmt16", data=tmp_path / "data/wmt16", exp=tmp_path / "exp/wmt16",
         vocab=40, src_vocab=40, fit_args=TINY_MT, tokenizer=iw["data"] / "tokenizer/en40.model",
         decoder=iw["exp"] / "transformer/brick")
    for hyps in ("iwslt14/decode/test.jsonl", "wmt16/decode/test.jsonl", "wmt16/decode/test-zero-shot.jsonl"):
        lines = (tmp_path / "exp" / hyps).read_text().splitlines()
        assert len(lines) == (15 if "iwslt" in hyps else 4), hyps
    assert (tmp_path / "exp/wmt16/zero_shot/weights.safetensors").is_file()
