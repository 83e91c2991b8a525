"""``speechkit fit`` is quiet: Lightning's notes that are not the user's concern are silenced at their source,
and what speechkit itself prints (init_from, the compression coverage) is one line per fact."""

import sys
import warnings
from pathlib import Path

import lightning as L

from speechkit.cli import main

ROOT = Path(__file__).parents[2]
CONF = ROOT / "tests" / "configs"
DEMO = ROOT / "recipes" / "locale" / "conf" / "demo.yaml"


def fit(corpus: Path, root: Path, *extra) -> None:
    asr, d = corpus / "asr", "--data.init_args."
    main(["fit", "-c", str(DEMO), "-c", str(CONF / "tiny_locale_demo.yaml"),
          f"--trainer.default_root_dir={root}",
          f"{d}train={asr / 'train.jsonl'}", f"{d}valid={asr / 'dev.jsonl'}", f"{d}test={asr / 'test.jsonl'}",
          f"{d}tokenizer={root.parent / 'tok.model'}", "--trainer.enable_progress_bar=false", *extra])


def test_a_tiny_fit_prints_no_notes(tiny_corpus, tmp_path, capfd):
    argv = list(sys.argv)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # each shown, but as Python shows them outside pytest:
        for hidden in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.filterwarnings("ignore", category=hidden)
        # 25 > the 5 batches of the tiny corpus: Lightning's log-interval note would come
        fit(tiny_corpus, tmp_path / "a", "--trainer.max_steps=2", "--trainer.log_every_n_steps=25")
    assert sys.argv == argv
    out, err = capfd.readouterr()
    assert [(w.category.__name__, str(w.message)[:300]) for w in seen] == []
    for noise in ("args parameter", "tensorboardX", "Tip:", "LeafSpec", "logging interval"):
        assert noise not in out + err, noise


def test_init_from_says_what_it_loaded_and_compression_prints_one_line_per_rule(tmp_path, capsys):
    from conftest import tiny_transducer

    from speechkit.compress.apply import CompressConfig, QuantConfig, SparsityConfig
    from speechkit.features import FbankConfig
    from speechkit.pipelines.bricks import save_brick
    from speechkit.train.module import SpeechTask

    src = save_brick(tiny_transducer(seed=1), tmp_path / "brick", {"input": FbankConfig().to_dict()})
    task = SpeechTask(tiny_transducer(), init_from={"encoder": f"{src}#encoder"},
                      compress=CompressConfig(sparsity=SparsityConfig(2, 4), quant=QuantConfig(8, 8)))
    loaded = [line for line in capsys.readouterr().out.splitlines() if line.startswith("init_from:")]
    n = sum(p.numel() for p in tiny_transducer().encoder.parameters())
    assert loaded == [f"init_from: encoder (SpeechEncoder) ← encoder (SpeechEncoder) of {src}: "
                      f"{len(tiny_transducer().encoder.state_dict())} tensors, {n:,} parameters"]
    task.trainer = L.Trainer(default_root_dir=tmp_path / "run", logger=False)
    task._report_coverage()
    report = capsys.readouterr().out.splitlines()
    assert report[0].startswith("compression coverage:") and report[-1].startswith("  every parameter: ")
    assert any("1-D parameter" in r for r in report) and len(report) <= 7, report
    full = Path(report[-1].split(": ", 1)[1]).read_text()
    assert full.startswith(report[0]) and full.count("\n") == len(task.coverage.rows) + 1 + (
        "inputs not fake-quantized" in full) + sum(1 for _, why in task.coverage.inputs if why)
