"""ILMA trains with every module in eval mode on purpose: Lightning is told so, and says nothing."""

import warnings

from builders import stream_brick

from speechkit.pipelines.bricks import load_brick
from speechkit.train.ilma import run_ilma


def test_ilma_adapts_quietly(tiny_corpus, tmp_path):
    brick = stream_brick(tmp_path, tiny_corpus)
    text = tiny_corpus / "asr" / "train.jsonl"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        summary = run_ilma(brick, text, tmp_path / "adapted", steps=2)
    assert not [str(w.message) for w in seen if "eval mode" in str(w.message)]
    assert summary["steps"] == 2 and load_brick(tmp_path / "adapted").interface["ilma"] == summary
