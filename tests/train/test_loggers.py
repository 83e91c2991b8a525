"""``speechkit fit`` logs to CSV (what ``speechkit plot`` reads) and TensorBoard, in one run folder."""

import sys
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from speechkit.train.cli import run_lightning

ROOT = Path(__file__).parents[2]
CONFS = ["-c", str(ROOT / "recipes/locale/conf/demo.yaml"),
         "-c", str(ROOT / "tests/configs/tiny_locale_demo.yaml")]


def _trainer(root: Path, *extra: str):
    return run_lightning([*CONFS, f"--trainer.default_root_dir={root}", *extra], run=False).trainer


def test_a_run_logs_csv_and_tensorboard_into_the_same_version_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["speechkit"])
    (tmp_path / "lightning_logs" / "version_0").mkdir(parents=True)  # an earlier run (or a resumed one)
    csv, tb = _trainer(tmp_path).loggers
    assert isinstance(csv, CSVLogger) and isinstance(tb, TensorBoardLogger)
    assert Path(csv.log_dir) == Path(tb.log_dir) == tmp_path / "lightning_logs" / "version_1"
    csv.log_metrics({"train/loss": 1.0}, step=0)
    tb.log_metrics({"train/loss": 1.0}, step=0)
    csv.save()
    tb.save()
    files = {p.name.split(".")[0] for p in (tmp_path / "lightning_logs" / "version_1").iterdir()}
    assert {"metrics", "events"} <= files


def test_a_config_that_names_its_logger_keeps_it(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["speechkit"])
    assert _trainer(tmp_path, "--trainer.logger=false").loggers == []


def test_without_tensorboard_a_run_logs_csv_and_says_so(tmp_path, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("tensorboard") else find_spec(name, *a))
    monkeypatch.setattr(sys, "argv", ["speechkit"])
    assert [type(x) for x in _trainer(tmp_path).loggers] == [CSVLogger]
    assert "tensorboard is not installed: logging to CSV only" in capsys.readouterr().err
