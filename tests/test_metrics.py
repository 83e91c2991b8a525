"""BLEU/chrF twice: on normalised text (what the models write) and standard sacreBLEU against the
references as written, with sacreBLEU's signature; ``decode`` and ``score`` report both."""

import json

import pytest

from speechkit.metrics import score
from speechkit.pipelines.decode import score_file


def test_bleu_on_normalised_text_and_standard_sacrebleu():
    written = ["Download complete, and in download-only mode.", "Neo-Aramaic, Western"]
    refs = ["download complete and in download only mode", "neo aramaic western"]
    sc = score(refs, refs, written)  # a model that writes the normalised reference exactly
    assert sc.bleu == pytest.approx(100) and sc.sacrebleu < 60 and sc.sacrechrf < 100  # case, punctuation
    assert "case:mixed" in sc.signature and "tok:13a" in sc.signature and "version:" in sc.signature
    assert score(refs, written, written).sacrebleu == pytest.approx(100)
    d = sc.to_dict()
    assert d["bleu"] == 100 and d["sacrebleu"] == round(sc.sacrebleu, 2)
    assert d["sacrebleu_signature"] == sc.signature
    assert "sacreBLEU" in str(sc) and sc.signature in str(sc)
    plain = score(refs, refs)  # no written references: the normalised scores only
    assert plain.sacrebleu is None and "sacrebleu" not in plain.to_dict() and "sacreBLEU" not in str(plain)


def test_score_file_reports_standard_sacrebleu_when_the_lines_carry_written_refs(tmp_path):
    row = {"ref": "neo aramaic western", "hyp": "neo aramaic western", "written_ref": "Neo-Aramaic, Western"}
    f = tmp_path / "hyps.jsonl"
    f.write_text(json.dumps(row) + "\n")
    sc = score_file(f)
    assert sc.chrf == pytest.approx(100) and sc.sacrechrf < 50 and "case:mixed" in sc.signature
    f.write_text(json.dumps(row) + "\n" + json.dumps({"ref": "a b", "hyp": "a b"}) + "\n")  # one lacks it
    assert score_file(f).sacrebleu is None  # normalised scores only, as for a file an older decode wrote
