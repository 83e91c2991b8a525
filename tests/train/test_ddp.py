"""`speechkit fit` with two processes (plain DDP, gloo on the CPU): the README's command on the demo recipe,
whose loss schedule (CTC alone first) leaves the predictor and joiner out of the first steps, training from
shards of unequal sizes read by two loader workers per rank."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from speechkit.data.shards import write_shards

TESTS = Path(__file__).parents[1]
ROOT = TESTS.parent
DEMO = ROOT / "recipes" / "locale" / "conf" / "demo.yaml"
TINY = TESTS / "configs" / "tiny_locale_demo.yaml"


def _fit(corpus: Path, root: Path, *extra, train: Path | None = None) -> list[str]:
    asr, data = corpus / "asr", "--data.init_args."
    probe = root.parent / "probe.yaml"  # the tiny config's callbacks and a record of each rank
    probe.write_text(yaml.safe_dump({"trainer": {"callbacks": [
        *yaml.safe_load(TINY.read_text())["trainer"]["callbacks"], {"class_path": "ddp_probe.RankRecord"}]}}))
    return [sys.executable, "-m", "speechkit", "fit", "-c", str(DEMO), "-c", str(TINY), "-c", str(probe),
            f"--trainer.default_root_dir={root}", f"{data}train={train or asr / 'train.jsonl'}",
            f"{data}valid={asr / 'dev.jsonl'}", f"{data}test={asr / 'test.jsonl'}",
            f"{data}tokenizer={root.parent / 'tok.model'}",
            "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu", "--trainer.devices=2",
            "--trainer.strategy=ddp", "--model.init_args.total_steps=12", *extra]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(ROOT)])}


def test_two_process_ddp_fit_from_shards_is_killed_and_resumes(tiny_corpus, tmp_path):
    root, shards = tmp_path / "exp", tmp_path / "shards"
    spec = write_shards(tiny_corpus / "asr" / "train.jsonl", shards, shard_mb=0.3, workers=1, progress=False)
    assert len({s["utts"] for s in spec["shards"]}) > 1  # unequal shards
    opts = ("--data.init_args.num_workers=2", "--data.init_args.max_frames=1500")
    # 1. a run killed after its first checkpoints, like a node failure
    proc = subprocess.Popen(_fit(tiny_corpus, root, "--trainer.max_steps=100000", *opts, train=shards),
                            env=_env(), text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if any(root.glob("checkpoints/*step=5*.ckpt")) and (root / "checkpoints" / "last.ckpt").is_file():
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # both ranks
    proc.wait()
    assert not (root / "brick").exists()
    # 2. resumed from last.ckpt with the same two processes, to the end
    resume = _fit(tiny_corpus, root, "--trainer.max_steps=12", "--ckpt_path=last", *opts, train=shards)
    p = subprocess.run(resume, env=_env(), capture_output=True, text=True, timeout=300)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-4000:]
    assert "Restored all states from the checkpoint" in log
    assert "not resumable" not in log  # the loader's place in the epoch was checkpointed (ResumableLoader)
    assert "DDP searches for unused parameters: the first steps leave" in log  # the CTC-only warm-up
    ranks = [json.loads((root / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 12
    assert ranks[0]["batches"] == ranks[1]["batches"] > 0  # the same number of steps on both ranks
    assert ranks[0]["weights"] == ranks[1]["weights"]  # the same weights after training
    assert log.count("brick written to") == 1  # exported once, by rank 0
    assert json.loads((root / "brick" / "interface.json").read_text())["global_step"] == 12


MT = ROOT / "recipes" / "locale" / "conf" / "lego" / "mt_de_en.yaml"


@pytest.mark.slow
def test_two_process_ddp_fit_of_a_model_that_uses_every_parameter(tiny_corpus, tmp_path):
    """The LegoNN MT recipe (CE + interface CTC from step 0): DDP's unused-parameter search stays off."""
    mt, root, data = tiny_corpus / "mt" / "de-en", tmp_path / "mt", "--data.init_args."
    tiny = TESTS / "configs" / "tiny_locale_lego_mt_de_en.yaml"
    p = subprocess.run([sys.executable, "-m", "speechkit", "fit", "-c", str(MT), "-c", str(tiny),
                        f"--trainer.default_root_dir={root}", f"{data}train={mt / 'train.jsonl'}",
                        f"{data}valid={mt / 'dev.jsonl'}", f"{data}test={mt / 'test.jsonl'}",
                        f"{data}tokenizer={tmp_path / 'en.model'}",
                        f"{data}source_tokenizer={tmp_path / 'de.model'}", "--trainer.max_steps=4",
                        "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu",
                        "--trainer.devices=2", "--trainer.strategy=ddp"],
                       env=_env(), capture_output=True, text=True, timeout=300)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-4000:]
    assert "DDP searches for unused parameters" not in log
    assert log.count("brick written to") == 1
    assert json.loads((root / "brick" / "interface.json").read_text())["global_step"] == 4
