"""``speechkit fit`` is quiet: Lightning's notes that are not the user's concern are silenced at their source,
and what speechkit itself prints (init_from, the compression coverage) is one line per fact."""

import sys
import warnings
from pathlib import Path

import lightning as L

from speechkit.train.callbacks import format_progress_bar
from speechkit.train.cli import run_lightning

ROOT = Path(__file__).parents[2]
CONF = ROOT / "tests" / "configs"
DEMO = ROOT / "recipes" / "locale" / "conf" / "demo.yaml"


def fit(corpus: Path, root: Path, *extra):
    """A tiny demo fit in this process, as ``speechkit fit`` runs it → the ``SpeechkitCLI``."""
    asr, d = corpus / "asr", "--data.init_args."
    return run_lightning(["fit", "-c", str(DEMO), "-c", str(CONF / "tiny_locale_demo.yaml"),
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
        cli = fit(tiny_corpus, tmp_path / "a", "--trainer.max_steps=2", "--trainer.log_every_n_steps=25",
                  "--trainer.limit_train_batches=2")  # validation after 2 steps
    assert sys.argv == argv
    out, err = capfd.readouterr()
    assert [(w.category.__name__, str(w.message)[:300]) for w in seen] == []
    for noise in ("args parameter", "tensorboardX", "Tip:", "LeafSpec", "logging interval"):
        assert noise not in out + err, noise
    assert {"val/wer", "val/cer"} <= set(cli.trainer.progress_bar_metrics)  # ASR: error rates
    assert not {"val/bleu", "val/chrf"} & set(cli.trainer.progress_bar_metrics)


def test_translation_shows_bleu_in_the_progress_bar(tiny_corpus, tmp_path):
    mt, d = tiny_corpus / "mt" / "de-en", "--data.init_args."
    conf = ROOT / "recipes" / "locale" / "conf" / "lego" / "mt_de_en.yaml"
    cli = run_lightning(["fit", "-c", str(conf), "-c", str(CONF / "tiny_locale_lego_mt_de_en.yaml"),
                         f"--trainer.default_root_dir={tmp_path}", f"{d}train={mt / 'train.jsonl'}",
                         f"{d}valid={mt / 'dev.jsonl'}", f"{d}test={mt / 'dev.jsonl'}",
                         f"{d}tokenizer={tmp_path / 'en.model'}",
                         f"{d}source_tokenizer={tmp_path / 'de.model'}",
                         "--trainer.enable_progress_bar=false", "--trainer.max_steps=2",
                         "--trainer.limit_train_batches=2"])
    shown = set(cli.trainer.progress_bar_metrics)
    assert {"val/bleu", "val/chrf"} <= shown and not {"val/wer", "val/cer"} & shown, shown


def test_progress_bar_metrics_are_rounded_text():
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_model_summary=False)
    bar = trainer.progress_bar_callback
    bar.get_metrics = lambda *a: {"v_num": 3, "train/loss": 140.62812, "val/wer": 1432.1234,
                                  "val/ctc_wer": 35.271, "val/bleu": 12.3456, "train/kl": 0.000123,
                                  "val/ppl": 123456.7, "note": "x"}
    format_progress_bar(trainer)
    assert bar.get_metrics(trainer, None) == {
        "train/loss": "140.628", "val/wer": "1432.12%", "val/ctc_wer": "35.27%", "val/bleu": "12.35",
        "train/kl": "0.000", "val/ppl": "123,457", "note": "x"}


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
