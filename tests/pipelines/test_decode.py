"""``speechkit decode`` on bad input: an unreadable utterance stops the run naming it, or ``--skip-bad``
leaves it out and lists it; outputs go beside a brick, never inside it; ``adapt-ilm`` never writes into
its input brick."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from builders import read_only, stream_brick

from speechkit.data.manifest import load_manifest
from speechkit.pipelines.decode import default_output


def _cmd(*args):
    return [sys.executable, "-m", "speechkit.cli", *map(str, args)]


def _manifest_with_bad_audio(corpus: Path, tmp_path: Path) -> tuple[Path, list[str], dict[str, str]]:
    """Four train utterances, the second with a corrupt audio file and the fourth with a missing one →
    (manifest, all ids, bad id → its audio path)."""
    utts = load_manifest(corpus / "asr" / "train.jsonl")[:4]
    corrupt, missing = tmp_path / "corrupt.flac", tmp_path / "missing.flac"
    corrupt.write_bytes(b"fLaC" + b"\x00garbage" * 50)
    utts[1].audio, utts[3].audio = str(corrupt), str(missing)
    lines = [{"id": u.id, "text": u.text, "audio": u.audio, "duration": u.duration} for u in utts]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path, [u.id for u in utts], {utts[1].id: str(corrupt), utts[3].id: str(missing)}


def _errors(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_decode_stops_at_an_unreadable_utterance_naming_it(tiny_corpus, tmp_path):
    brick = stream_brick(tmp_path, tiny_corpus)
    manifest, _, bad = _manifest_with_bad_audio(tiny_corpus, tmp_path)
    out = tmp_path / "hyps.jsonl"
    p = subprocess.run(_cmd("decode", brick, manifest, "--out", out), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode != 0
    errors = _errors(p.stderr)
    assert len(errors) == 1 and any(f"utterance {i!r}" in errors[0] and path in errors[0]
                                    for i, path in bad.items()), p.stderr
    assert "--skip-bad" in errors[0] and not out.exists()


def test_decode_skip_bad_decodes_the_rest_and_lists_the_bad(tiny_corpus, tmp_path):
    brick = stream_brick(tmp_path, tiny_corpus)
    manifest, ids, bad = _manifest_with_bad_audio(tiny_corpus, tmp_path)
    out = tmp_path / "hyps.jsonl"
    p = subprocess.run(_cmd("decode", brick, manifest, "--out", out, "--skip-bad", "--json"),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout.splitlines()[-1])
    assert summary["utts"] == 2 and summary["hyps"] == str(out)
    assert {r["id"]: r["audio"] for r in summary["skipped"]} == bad
    assert all(r["error"] and "hyp" not in r for r in summary["skipped"])
    rows = [json.loads(line) for line in open(out)]
    assert [r["id"] for r in rows] == [i for i in ids if i not in bad] and all("hyp" in r for r in rows)
    for i, path in bad.items():  # named on stderr, with the reason
        assert any(i in line and path in line for line in p.stderr.splitlines()), p.stderr
    p = subprocess.run(_cmd("score", out, "--json"), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and json.loads(p.stdout)["wer"] == summary["wer"]  # the file is what was scored


def test_decode_on_a_read_only_brick_writes_beside_it(tiny_corpus, tmp_path):
    brick = stream_brick(tmp_path, tiny_corpus)
    test = tiny_corpus / "asr" / "test.jsonl"
    with read_only(brick) as unchanged:
        p = subprocess.run(_cmd("decode", brick, test, "--json"), capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout.splitlines()[-1])["hyps"] == str(tmp_path / "decode-test.jsonl")
        assert (tmp_path / "decode-test.jsonl").is_file()
        assert unchanged(), "decode wrote inside the brick"


def test_default_outputs_go_beside_the_brick(tmp_path, monkeypatch):
    assert default_output("exp/run/brick", "decode-test.jsonl") == Path("exp/run/decode-test.jsonl")
    assert default_output("exp/lego/ro+de/", "decode-test.jsonl") == Path("exp/lego/ro+de-decode-test.jsonl")
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")
    assert default_output(".", "x.json") == tmp_path / "b-x.json"


def test_adapt_ilm_refuses_to_write_into_its_input_brick(tiny_corpus, tmp_path):
    from speechkit.cli import main

    brick = stream_brick(tmp_path, tiny_corpus)
    text = tiny_corpus / "asr" / "train.jsonl"
    for out in (brick, brick / "adapted", tmp_path / "." / "brick"):
        with pytest.raises(SystemExit, match="read-only"):
            main(["adapt-ilm", str(brick), str(text), "--out", str(out), "--steps", "1"])
        with pytest.raises(SystemExit, match="read-only"):
            main(["export", str(brick), "--out", str(out), "--bits", "8"])
        with pytest.raises(SystemExit, match="read-only"):
            main(["compose", f"{brick}#0", "--decoder", str(tmp_path / "other"), "--out", str(out)])


def test_transcribe_gives_what_decode_gives(tiny_corpus, tmp_path):
    import torch

    from speechkit.audio import read_audio
    from speechkit.nn.brick import BrickError
    from speechkit.pipelines.bricks import load_brick
    from speechkit.pipelines.decode import DecodeOptions, decode_manifest

    brick = load_brick(stream_brick(tmp_path, tiny_corpus))
    test = tiny_corpus / "asr" / "test.jsonl"
    utts = load_manifest(test)[:3]
    for beam in (1, 2):
        results, _ = decode_manifest(brick, test, DecodeOptions(beam=beam, progress=False), max_utts=3)
        assert [brick.transcribe(u.audio, beam=beam) for u in utts] == [r["hyp"] for r in results]
    assert [r["written_ref"] for r in results] == [u.text for u in utts]  # as the manifest writes it
    assert any(r["hyp"] for r in results)  # an untrained model, but it says something
    wave = read_audio(utts[0].audio, rate=16000)
    assert brick.transcribe(wave) == brick.transcribe(utts[0].audio)
    with pytest.raises(ValueError, match=r"expected a waveform \(N,\), got shape \(1, "):
        brick.transcribe(wave[None])
    brick.interface["input"] = {"kind": "text"}
    with pytest.raises(BrickError, match="reads text, not speech"):
        brick.transcribe(torch.zeros(16000))
