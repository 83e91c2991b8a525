"""``speechkit plot`` / ``plot-stream`` / ``plot-align`` / ``tune-fusion --plot``: each picture is a valid,
non-empty PNG drawn from tiny synthetic inputs; input it cannot use is one ``error:`` line naming it."""

import json
import math

import pytest
import torch
from matplotlib.image import imread

from speechkit.audio import write_audio
from speechkit.cli import main
from speechkit.pipelines import plots

HEADER = "epoch,step,train/ctc,train/loss,train/lr,val/loss,val/wer,val/cer\n"


def _png(path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)  # decodes: a valid PNG
    assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0  # not blank


def _error(*args) -> str:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def _run(tmp_path):
    """A run folder whose training was resumed: version_1 goes on from step 40 (step 40 logged again)."""
    run = tmp_path / "run"
    for version, steps in ((0, range(0, 45, 5)), (1, range(40, 85, 5))):
        d = run / "lightning_logs" / f"version_{version}"
        d.mkdir(parents=True)
        rows = [f"0,{s},{50 / (s + 5)},{40 / (s + 5)},{1e-3 * min(1, s / 20)},,," for s in steps]
        rows += [f"0,{s},,,,{30 / (s + 5)},{1500 if s < 30 else 90 - s / 2},{80 - s / 2}" for s in steps[::3]]
        (d / "metrics.csv").write_text(HEADER + "\n".join(rows) + "\n")
    return run


def test_curves_join_a_resumed_runs_versions_and_draw_a_png(tmp_path, capsys):
    run = _run(tmp_path)
    m = plots.read_metrics(run)
    assert [s for s, _ in m["train/loss"]] == list(range(0, 85, 5))  # step 40 once, version_1's value
    assert dict(m["train/loss"])[40] == pytest.approx(40 / 45)
    main(["plot", str(run)])
    assert capsys.readouterr().out.strip() == str(run / "curves.png")
    _png(run / "curves.png")
    main(["plot", str(run), "--out", str(tmp_path / "elsewhere" / "c.png")])
    _png(tmp_path / "elsewhere" / "c.png")


def test_plot_of_a_folder_without_metrics_is_one_line_naming_it(tmp_path):
    assert f"{tmp_path}: no lightning_logs/version_*/metrics.csv" in _error("plot", tmp_path)
    d = tmp_path / "lightning_logs" / "version_0"
    d.mkdir(parents=True)
    (d / "metrics.csv").write_text("epoch,step,train/loss\n0,1,abc\n")
    assert f"{d / 'metrics.csv'}: step 1, train/loss: not a number" in _error("plot", tmp_path)


def test_fusion_heatmap_takes_each_cells_best_length_reward(tmp_path):
    rows = [{"lm_weight": lw, "ilm_weight": iw, "length_reward": b, "wer": 20 - 10 * lw + 5 * iw + b,
             "cer": 5} for lw in (0, 0.2, 0.4) for iw in (0, 0.1) for b in (0, 1)]
    _png(plots.plot_fusion(rows, tmp_path / "fusion.png", "dev"))


def test_tune_fusion_plot_writes_the_heatmap(tmp_path, monkeypatch, capsys):
    rows = [{"lm_weight": lw, "ilm_weight": iw, "length_reward": 0.0, "wer": 30 - 10 * lw, "cer": 9.0,
             "seconds": 0.1} for lw in (0.0, 0.3) for iw in (0.0, 0.1)]
    monkeypatch.setattr("speechkit.pipelines.decode.tune_fusion", lambda *a, report, **k: rows)
    main(["tune-fusion", "BRICK", "dev.jsonl", "--device", "cpu", "--plot", str(tmp_path / "grid.png")])
    assert "heatmap → " in capsys.readouterr().err
    _png(tmp_path / "grid.png")


def _summary(chunk: int, wer: float, manifest="data/locale/asr/test.jsonl") -> str:
    return json.dumps({"manifest": manifest, "utts": 10, "settings": f"chunk{chunk}-beam1-transducer",
                       "wer": wer, "cer": wer / 3, "rtf": 0.02, "chunk_ms": 40 * chunk,
                       "latency_ms_mean": 3.0 + chunk / 4, "latency_ms_p95": 5.0 + chunk / 2, "hyps": "x"})


def test_stream_plot_reads_summaries_from_several_files(tmp_path, capsys):
    a, b = tmp_path / "c4.json", tmp_path / "stage.jsonl"
    a.write_text("note: no calibration\n" + _summary(4, 40.0) + "\n")
    b.write_text("\n".join([_summary(16, 28.0), _summary(8, 33.0), _summary(8, 30.0, "dev.jsonl")]) + "\n")
    results = plots.read_stream_results([a, b])
    assert sorted(r["chunk_ms"] for r in results) == [160, 320, 320, 640]
    main(["plot-stream", str(a), str(b), "--out", str(tmp_path / "chunks.png")])
    _png(tmp_path / "chunks.png")
    empty = tmp_path / "hyps.jsonl"
    empty.write_text(json.dumps({"id": "u1", "ref": "a", "hyp": "a"}) + "\n")
    assert f"{empty}: no `speechkit stream --manifest` summary" in _error("plot-stream", a, empty)


def test_alignment_picture_of_a_streamed_utterance(tmp_path, capsys):
    t = torch.arange(24000) / 16000
    wave = 0.3 * torch.sin(2 * math.pi * 300 * t) * (t > 0.3) * (t < 1.2)
    write_audio(tmp_path / "u1.flac", wave)
    ref = [["hello", 0.3, 0.7], ["world", 0.75, 1.2]]
    utt = {"kind": "utterance", "version": 1, "id": "u1", "audio": "u1.flac", "text": "hello world",
           "duration": 1.5, "words": ref}
    (tmp_path / "m.jsonl").write_text(json.dumps(utt) + "\n")
    hyp = [{"word": "hello", "start": 0.36, "end": 0.76, "confidence": 0.9},
           {"word": "word", "start": 0.8, "end": 1.3, "confidence": 0.4}]
    hyps = tmp_path / "stream-m.jsonl"
    hyps.write_text(json.dumps({"id": "u1", "ref": "hello world", "hyp": "hello word", "words": hyp,
                                "ref_words": ref}) + "\n")
    _png(plots.plot_alignment(wave, ref, hyp, tmp_path / "direct.png", "u1"))
    main(["plot-align", str(hyps), str(tmp_path / "m.jsonl")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "stream-m-u1.png")
    _png(tmp_path / "stream-m-u1.png")
    assert f"{hyps}: no utterance 'u2'" in _error("plot-align", hyps, tmp_path / "m.jsonl", "--id", "u2")
