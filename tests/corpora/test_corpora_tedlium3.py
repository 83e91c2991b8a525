"""TED-LIUM 3 (speechkit/corpora/tedlium3.py, recipes/tedlium3) on a tiny copy in the release's layout:
talks as NIST SPHERE files of concatenated espeak sentences, STM segments at their times (one ignored in
scoring, a <unk>, split contractions), the LM corpus; then the whole recipe through `speechkit run`."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from dataset_fixtures import FIT, altered, run_recipe, say

from speechkit.cli import main
from speechkit.corpora import prepare
from speechkit.corpora.common import LayoutError, PrepareError
from speechkit.corpora.tedlium3 import clean_transcript
from speechkit.data.manifest import load_manifest

RATE = 16000
# (STM transcript as TED-LIUM writes it, what is spoken); per split, per talk
TALKS = {
    "train": {
        "AlGore_2009": [("i 've been working on this idea", "i've been working on this idea"),
                        ("it 's a story about the ocean", "it's a story about the ocean"),
                        ("the <unk> was very large", "the was very large")],
        "JaneDoe_2012X": [("we need more water", "we need more water"),
                          ("that 's what we found", "that's what we found"),
                          ("thank you very much", "thank you very much")],
        "BobSmith_2015": [("the planet is warming", "the planet is warming"),
                          ("they 're building a new school", "they're building a new school")],
    },
    "dev": {"EveStone_2010": [("so let me show you", "so let me show you"),
                              ("this is the result", "this is the result")]},
    "test": {"TomLee_2011": [("i 'm going to talk about cities", "i'm going to talk about cities"),
                             ("people live together", "people live together")],
             "AnnKing_2013": [("here is a picture", "here is a picture"),
                              ("you can see it moving", "you can see it moving")]},
}
LM_TEXT = ["we 'll talk about the climate </s>", "the ocean is deep </s>", "<unk> </s>",
           "people build cities </s>"]
LEAD, GAP = 0.5, 0.4  # seconds of silence before the first sentence and between sentences


def make_tedlium3(root: Path) -> Path:
    """``root/TEDLIUM_release-3/`` as OpenSLR 51 unpacks: legacy/<split>/{sph,stm}/, LM/*.en.gz, and a
    segment times table ``times.json`` (talk → [(start, end)], the fixture's own answer key)."""
    ted, times = root / "TEDLIUM_release-3", {}
    for split, talks in TALKS.items():
        for talk, sentences in talks.items():
            waves, lines, pos = [np.zeros(int(LEAD * RATE), np.float32)], [], LEAD
            for k, (stm_text, spoken) in enumerate(sentences):
                tmp = root / "tmp.wav"
                dur = say(spoken, tmp)
                waves += [sf.read(tmp, dtype="float32")[0], np.zeros(int(GAP * RATE), np.float32)]
                start, end = round(pos, 2), round(pos + dur, 2)
                lines.append(f"{talk} 1 {talk} {start:.2f} {end:.2f} <o,f0,male> {stm_text}")
                times.setdefault(talk, []).append((start, end))
                if k == 0:  # the gap after the first sentence is marked as not scored
                    lines.append(f"{talk} 1 {talk} {end:.2f} {end + GAP:.2f} <o,f0,male> "
                                 "ignore_time_segment_in_scoring")
                pos += dur + GAP
            (ted / "legacy" / split / "sph").mkdir(parents=True, exist_ok=True)
            sf.write(ted / "legacy" / split / "sph" / f"{talk}.sph", np.concatenate(waves), RATE,
                     format="NIST", subtype="PCM_16")
            (ted / "legacy" / split / "stm").mkdir(parents=True, exist_ok=True)
            (ted / "legacy" / split / "stm" / f"{talk}.stm").write_text("\n".join(lines) + "\n")
    (ted / "LM").mkdir()
    for name, part in (("commoncrawl-9pc.en.gz", LM_TEXT[:2]), ("news-commentary-v8.en.gz", LM_TEXT[2:])):
        with gzip.open(ted / "LM" / name, "wt") as f:
            f.write("\n".join(part) + "\n")
    (ted / "readme.txt").write_text("This is the TED-LIUM corpus release 3\n")
    (root / "tmp.wav").unlink()
    (root / "times.json").write_text(json.dumps(times))
    return ted


@pytest.fixture(scope="module")
def tedlium(tmp_path_factory):
    return make_tedlium3(tmp_path_factory.mktemp("ted"))


def test_transcripts_are_cleaned_as_kaldi_and_espnet_do():
    assert clean_transcript("i 've seen the(2) <unk> {NOISE} thing it 's") == "i've seen the thing it's"
    assert clean_transcript("we 'll go </s>") == "we'll go" and clean_transcript("<unk> </s>") == ""
    assert clean_transcript("and so on (AlGore_2009)") == "and so on"


def test_tedlium3_manifests_from_the_distributed_layout(tedlium, tmp_path):
    out = tmp_path / "data"
    summary = prepare("tedlium3", root=tedlium.parent, out=out, workers=2)
    m = summary["manifests"]
    assert [m[f"asr/{s}"]["utterances"] for s in ("train", "dev", "test")] == [8, 2, 4]
    skipped = summary["details"]["skipped"]  # the ignore_time_segment_in_scoring ones
    assert skipped == {"train": 3, "dev": 1, "test": 2}
    times = json.loads((tedlium.parent / "times.json").read_text())
    train = load_manifest(out / "asr/train.jsonl", require_audio=True)
    gore = [u for u in train if u.speaker == "AlGore_2009"]
    assert [u.text for u in gore] == [s for _, s in TALKS["train"]["AlGore_2009"]]  # <unk> gone, 've joined
    spans = [(u.offset, round(u.offset + u.duration, 2)) for u in gore]
    assert spans == [tuple(t) for t in times["AlGore_2009"]]  # offsets and durations from the STM times
    assert gore[0].id == f"AlGore_2009-{round(spans[0][0] * 100):07d}-{round(spans[0][1] * 100):07d}"
    assert Path(out / "asr" / gore[0].audio).resolve() == tedlium / "legacy/train/sph/AlGore_2009.sph"
    hours = sum(u.duration for u in train) / 3600
    assert m["asr/train"]["hours"] == pytest.approx(hours, abs=1e-3) and 1.0 < gore[1].duration < 4.0
    lm = (out / "lm/train.txt").read_text().splitlines()
    assert lm[:8] == [u.text for u in train]  # the transcripts, then the LM corpus without </s> and <unk>
    assert lm[8:] == ["we'll talk about the climate", "the ocean is deep", "people build cities"]
    assert summary["details"]["lm"]["sentences"] == 11
    stamp = (out / "lm/train.txt").stat().st_mtime_ns
    again = prepare("tedlium3", root=tedlium, out=out, workers=2)  # TEDLIUM_release-3/ itself as root
    assert again["written"] == [] and again["manifests"] == m  # idempotent
    assert (out / "lm/train.txt").stat().st_mtime_ns == stamp
    capped = prepare("tedlium3", root=tedlium, out=tmp_path / "capped", lm_sentences=2)  # 1 line per LM file
    assert (tmp_path / "capped/lm/train.txt").read_text().splitlines()[8:] == [lm[8], lm[10]]
    assert capped["details"]["lm"]["sentences"] == 10


def test_tedlium3_bad_entries_are_named_or_skipped(tedlium, tmp_path):
    stm = tedlium / "legacy/dev/stm/EveStone_2010.stm"
    past_end = "EveStone_2010 1 EveStone_2010 30.00 31.00 <o,f0,male> past the end\n"
    with altered(tedlium / "legacy/test/sph/AnnKing_2013.sph"), altered(stm, stm.read_text() + past_end):
        bad = r"(?s)3 bad entries.*EveStone_2010-0003000-0003100: segment 30.00\+1.00 s ends after"
        with pytest.raises(PrepareError, match=bad + r".*AnnKing_2013-.*audio file missing"):
            prepare("tedlium3", root=tedlium, out=tmp_path)
        assert not (tmp_path / "lm/train.txt").exists()  # nothing written before the error
        summary = prepare("tedlium3", root=tedlium, out=tmp_path, skip_bad=True)
        assert summary["manifests"]["asr/test"]["utterances"] == 2
        assert summary["manifests"]["asr/dev"]["utterances"] == 2
        problems = json.loads((tmp_path / "prepare.json").read_text())["problems"]
        assert len(problems) == 3 and all("AnnKing_2013.sph" in p for p in problems[1:])


def test_tedlium3_layout_errors_say_where_the_data_comes_from(tedlium, tmp_path):
    with pytest.raises(LayoutError, match=r"(?s)legacy distribution \(legacy/\) not found.*openslr.org/51.*"
                                          r"legacy/train/stm/<talk>.stm"):
        prepare("tedlium3", root=tmp_path)
    (tmp_path / "TEDLIUM_release-3/legacy/train/sph").mkdir(parents=True)
    with pytest.raises(LayoutError, match=r"train: the transcripts \(stm/\) not found: .*legacy/train/stm"):
        prepare("tedlium3", root=tmp_path)
    with pytest.raises(SystemExit, match="--langs does not apply to the tedlium3 corpus"):
        main(["prepare", "tedlium3", "--root", str(tedlium), "--langs", "de"])




@pytest.mark.slow
def test_tedlium3_recipe_runs_every_stage(tedlium, tmp_path):
    """prepare → tokenizer → transducer and LM (LibriSpeech's configs at toy sizes, two steps each) →
    decode with and without the LM → the domain-shift stages, with the in-domain brick standing in for
    the other domain's model: an LM over its pieces, a one-point tune-fusion grid, three decodes."""
    exp = tmp_path / "exp"
    sets = {"corpus": tedlium.parent, "data": tmp_path / "data", "exp": exp, "vocab": 40, "source_vocab": 40,
            "fit_args": FIT + " --data.init_args.max_frames=4000",
            "asr_args": "--config=tests/configs/tiny_librispeech_transducer.yaml",
            "lm_args": "--config=tests/configs/tiny_librispeech_lm.yaml",
            "source_brick": exp / "transducer/brick",
            "tune_lm_weights": "0.2", "tune_ilm_weights": "0.1", "tune_length_rewards": "0", "tune_utts": "2"}
    run_recipe("tedlium3", **sets)
    for brick in ("transducer", "lm", "lm_shift"):
        assert (exp / brick / "brick/weights.safetensors").is_file(), brick
    lm_tok = json.loads((exp / "lm_shift/brick/interface.json").read_text())["tokenizer"]
    asr_tok = json.loads((exp / "transducer/brick/interface.json").read_text())["tokenizer"]
    assert lm_tok["fingerprint"] == asr_tok["fingerprint"]
    for name in ("test", "test-ilme", "shift-test", "shift-test-sf", "shift-test-ilme"):
        rows = [json.loads(line) for line in (exp / "decode" / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == 4 and rows[0]["ref"] == "here is a picture", name
    assert (exp / "stages/08-tune_shift.done").is_file()
