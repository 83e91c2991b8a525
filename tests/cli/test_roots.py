"""README commands from any directory: relative ``data/…`` and ``exp/…`` paths of the command line,
configs and recipes lie under ``--data-root`` / ``--exp-root`` ($SPEECHKIT_DATA / $SPEECHKIT_EXP;
``files.rooted``)."""

import os
import subprocess
import sys
from pathlib import Path

from speechkit.cli import main
from speechkit.files import rooted

ROOT = Path(__file__).resolve().parents[2]


def test_rooted_moves_data_and_exp_paths_only(monkeypatch):
    monkeypatch.setenv("SPEECHKIT_DATA", "")
    monkeypatch.setenv("SPEECHKIT_EXP", "")
    assert rooted("data/locale/asr/test.jsonl") == "data/locale/asr/test.jsonl"  # unset: ./data, as it is
    monkeypatch.setenv("SPEECHKIT_DATA", "/corpora")
    monkeypatch.setenv("SPEECHKIT_EXP", "/runs")
    assert rooted("data/locale/asr/test.jsonl") == "/corpora/locale/asr/test.jsonl"
    assert rooted("exp/lego/chain/brick#1") == "/runs/lego/chain/brick#1"
    for other in ("/data/x", "recipes/locale", "database/x", "./data/x", "datafile", 3, None):
        assert rooted(other) == other


def test_a_recipe_runs_from_a_directory_outside_the_repository(tmp_path):
    """`speechkit run RECIPE --list` / `--dry-run` from elsewhere: data and runs under the roots, the stages
    that are done seen as done, the analysis scripts found in the repository."""
    data, exp, cwd = tmp_path / "corpora", tmp_path / "runs", tmp_path / "elsewhere"
    (data / "locale").mkdir(parents=True)
    (data / "locale" / "prepare.json").write_text("{}")
    cwd.mkdir()
    run = [sys.executable, "-m", "speechkit", "run", ROOT / "recipes/locale", "--data-root", data,
           "--exp-root", exp]
    p = subprocess.run([*map(str, run), "--list"], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split()[1:3] == ["prepare", "done"] and lines[1].split()[2] == "todo", p.stdout
    assert f"--out {data}/locale/tokenizer/en128.model" in lines[1]
    assert f"--trainer.default_root_dir={exp}/locale/run/demo" in p.stdout
    p = subprocess.run([*map(str, run), "--dry-run", "--stage", "decode", "--stop-stage", "decode"], cwd=cwd,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and f"{exp}/locale/run/demo/brick {data}/locale/asr/test.jsonl" in p.stdout, p
    p = subprocess.run([*map(str, run[:4]), ROOT / "recipes/locale/stream.yaml", "--list"], cwd=cwd,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and f"python {ROOT}/benchmarks/locale/stream_table.py" in p.stdout, p.stderr
    p = subprocess.run([*map(str, run[:5]), "--list"], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "--out data/locale --workers" in p.stdout  # no roots: ./data, ./exp
    assert not list(cwd.iterdir())
    p = subprocess.run([*map(str, run[:5]), "--data-root", "--list"], cwd=cwd, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 1 and p.stderr.strip() == "error: --data-root needs a folder"


def test_plot_of_a_run_given_as_exp_path_reads_the_exp_root(tmp_path, monkeypatch, capsys):
    """A verb's own path arguments go under the roots too (here: `speechkit plot exp/RUN`)."""
    run = tmp_path / "runs" / "demo"
    logs = run / "lightning_logs" / "version_0"
    logs.mkdir(parents=True)
    (logs / "metrics.csv").write_text("epoch,step,train/loss\n0,1,2.0\n0,2,1.5\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPEECHKIT_EXP", "")  # unset after the test, whatever --exp-root sets
    main(["plot", "exp/demo", "--exp-root", "runs"])
    assert capsys.readouterr().out.strip() == str(run / "curves.png")
    assert (run / "curves.png").is_file()
    assert os.environ["SPEECHKIT_EXP"] == str(tmp_path / "runs")  # absolute: what a recipe's commands inherit


def test_a_config_reads_and_writes_under_the_roots(tmp_path, monkeypatch):
    """`speechkit fit -c recipes/locale/conf/demo.yaml` with roots: its manifests, tokenizer, run folder,
    checkpoints and logs are under them; a warm start's brick (init_from) too."""
    from jsonargparse import Namespace

    from speechkit.train.cli import root_paths, run_lightning

    monkeypatch.setattr(sys, "argv", ["speechkit"])
    monkeypatch.setenv("SPEECHKIT_DATA", str(tmp_path / "corpora"))
    monkeypatch.setenv("SPEECHKIT_EXP", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    cli = run_lightning(["-c", str(ROOT / "recipes/locale/conf/demo.yaml"),
                         "-c", str(ROOT / "tests/configs/tiny_locale_demo.yaml")], run=False)
    assert cli.datamodule.paths["train"] == f"{tmp_path}/corpora/locale/asr/train.jsonl"
    assert cli.datamodule.tokenizer_path == tmp_path / "corpora/locale/tokenizer/en128.model"
    assert cli.trainer.default_root_dir == f"{tmp_path}/runs/locale/demo"
    assert cli.trainer.checkpoint_callback.dirpath == f"{tmp_path}/runs/locale/demo/checkpoints"
    assert Path(cli.trainer.loggers[0].log_dir).parent.parent == tmp_path / "runs/locale/demo"
    cfg = Namespace(model=Namespace(init_args=Namespace(init_from={"": "exp/locale/full/brick"},
                                                        freeze=["encoder"])))
    root_paths(cfg)
    assert cfg.model.init_args.init_from == {"": f"{tmp_path}/runs/locale/full/brick"}
    assert cfg.model.init_args.freeze == ["encoder"]
