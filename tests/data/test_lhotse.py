"""Lhotse interop: Lhotse manifests built with lhotse's own API read as speechkit manifests, Lhotse Shar
written to speechkit shards, and speechkit → Lhotse → speechkit keeping ids, texts, offsets and durations."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

from speechkit.data.dataset import utterance_features
from speechkit.data.lhotse_io import lhotse_kind
from speechkit.data.manifest import ManifestError, load_manifest, load_texts, save_manifest
from speechkit.data.shards import ShardedSpeechDataset, write_shards
from speechkit.features import FbankConfig
from speechkit.tokenizer import train_tokenizer

ROOT = Path(__file__).parents[2]


def lhotse_manifests(utts, out: Path, part: str) -> tuple[Path, Path, Path]:
    """Recordings, supervisions and cuts of ``utts``, made with lhotse's API as a Lhotse recipe would."""
    recordings = RecordingSet.from_recordings(Recording.from_file(u.audio, recording_id=u.id) for u in utts)
    supervisions = SupervisionSet.from_segments(
        SupervisionSegment(
            id=u.id,
            recording_id=u.id,
            start=0.0,
            duration=recordings[u.id].duration,
            channel=0,
            text=u.text,
            language="English",
            speaker=u.speaker,
        )
        for u in utts
    )
    paths = tuple(out / f"locale_{kind}_{part}.jsonl.gz" for kind in ("recordings", "supervisions", "cuts"))
    recordings.to_file(paths[0])
    supervisions.to_file(paths[1])
    CutSet.from_manifests(recordings=recordings, supervisions=supervisions).trim_to_supervisions().to_file(
        paths[2]
    )
    return paths


def convert(src: Path, out: Path) -> None:
    """``speechkit lhotse SRC --out OUT`` in a subprocess."""
    cmd = [sys.executable, "-m", "speechkit", "lhotse", str(src), "--out", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr


def test_lhotse_recipes_manifests_read_as_speechkit_manifests(tiny_corpus, tmp_path):
    utts = load_manifest(tiny_corpus / "asr" / "dev.jsonl") + load_manifest(
        tiny_corpus / "asr" / "test.jsonl"
    )
    rec, sup, cuts = lhotse_manifests(utts, tmp_path, "dev")
    assert [lhotse_kind(p) for p in (rec, sup, cuts)] == ["recordings", "supervisions", "cuts"]
    assert lhotse_kind(tiny_corpus / "asr" / "dev.jsonl") is None
    for path in (sup, cuts):
        got = load_manifest(path, require_audio=True)
        assert [u.id for u in got] == [u.id for u in utts] and [u.text for u in got] == [u.text for u in utts]
        assert [u.audio for u in got] == [u.audio for u in utts]
        assert all(
            u.offset == 0.0 and abs(u.duration - v.duration) < 1e-3 and u.lang == "English"
            for u, v in zip(got, utts)
        )
    assert [u.text for u in load_texts(cuts)] == [u.text for u in utts]
    with pytest.raises(ManifestError, match="RecordingSet has no transcripts"):
        load_manifest(rec)
    rec.unlink()
    with pytest.raises(ManifestError, match=r"needs its RecordingSet beside it.*locale_recordings_dev"):
        load_manifest(sup)


def test_speechkit_lhotse_speechkit_round_trip_keeps_ids_texts_offsets_durations(tiny_corpus, tmp_path):
    utts = load_manifest(tiny_corpus / "asr" / "train.jsonl")[:6]
    # two utterances inside one longer file, at offsets
    utts += [
        replace(utts[0], id="inner-a", offset=0.125, duration=0.3, text="first part"),
        replace(utts[0], id="inner-b", offset=0.5, duration=0.25, text="second part", translation={}),
    ]
    save_manifest(utts, tmp_path / "m.jsonl")
    convert(tmp_path / "m.jsonl", tmp_path / "cuts.jsonl.gz")
    cuts = CutSet.from_file(tmp_path / "cuts.jsonl.gz").to_eager()  # a CutSet lhotse reads
    assert [c.id for c in cuts] == [u.id for u in utts] and cuts["inner-a"].start == 0.125
    assert cuts["inner-b"].recording.id == cuts[utts[0].id].recording.id  # one recording per file
    back = load_manifest(tmp_path / "cuts.jsonl.gz")
    for u, v in zip(utts, back, strict=True):
        assert (v.id, v.text, v.offset, v.duration, v.audio) == (u.id, u.text, u.offset, u.duration, u.audio)
        assert (v.lang, v.speaker, v.translation, v.domain, v.words) == (
            u.lang,
            u.speaker,
            u.translation,
            u.domain,
            u.words,
        )
    assert torch.equal(
        utterance_features(back[-1], FbankConfig()), utterance_features(utts[-1], FbankConfig())
    )
    convert(tmp_path / "cuts.jsonl.gz", tmp_path / "back.jsonl")
    assert [json.loads(line)["id"] for line in open(tmp_path / "back.jsonl")] == [u.id for u in utts]


def test_lhotse_shar_is_written_to_speechkit_shards(tiny_corpus, tmp_path):
    utts = load_manifest(tiny_corpus / "asr" / "train.jsonl")[:12]
    _, _, cuts = lhotse_manifests(utts, tmp_path, "train")
    (tmp_path / "shar").mkdir()
    CutSet.from_file(cuts).to_shar(tmp_path / "shar", fields={"recording": "flac"}, shard_size=5)
    assert lhotse_kind(tmp_path / "shar") == "shar"
    with pytest.raises(ManifestError, match="not a file; write speechkit shards from it"):
        load_manifest(next((tmp_path / "shar").glob("cuts.000000.jsonl*")))
    spec = write_shards(tmp_path / "shar", tmp_path / "shards", shard_mb=0.1, workers=1, progress=False)
    assert spec["utts"] == 12 and len(spec["shards"]) > 1
    tok = train_tokenizer(
        [u.text for u in load_manifest(tiny_corpus / "asr" / "train.jsonl")], tmp_path / "t.model", 64
    )
    ds = ShardedSpeechDataset(tmp_path / "shards", tok, FbankConfig())
    for i, u in enumerate(utts):
        assert ds.record(i).id == u.id and ds.record(i).text == u.text
        x = ds[i][0]
        ref = utterance_features(u, FbankConfig()).half().float()  # the same samples (flac is lossless)
        assert x.shape == ref.shape and torch.equal(x, ref)


@pytest.mark.slow
def test_a_lhotse_prepared_corpus_trains_and_decodes_through_the_cli(tiny_corpus, tmp_path):
    parts = {}
    for part in ("train", "dev", "test"):
        parts[part] = lhotse_manifests(load_manifest(tiny_corpus / "asr" / f"{part}.jsonl"), tmp_path, part)[
            2
        ]
    d, root = "--data.init_args.", tmp_path / "exp"
    fit = [
        sys.executable,
        "-m",
        "speechkit",
        "fit",
        "-c",
        str(ROOT / "recipes/locale/conf/demo.yaml"),
        "-c",
        str(ROOT / "tests/configs/tiny_locale_demo.yaml"),
        f"--trainer.default_root_dir={root}",
        f"{d}train={parts['train']}",
        f"{d}valid={parts['dev']}",
        f"{d}test={parts['test']}",
        f"{d}tokenizer={tmp_path / 'tok.model'}",
        "--trainer.max_steps=6",
        "--trainer.enable_progress_bar=false",
    ]
    p = subprocess.run(fit, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "speechkit",
            "decode",
            str(root / "brick"),
            str(parts["test"]),
            "--json",
            "--out",
            str(tmp_path / "hyps.jsonl"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["utts"] == len(CutSet.from_file(parts["test"])) and summary["wer"] >= 0
