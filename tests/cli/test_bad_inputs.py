"""Faults and bad input: a brick never runs code, a diverged run exports nothing, one owner per run
directory, atomic artefacts, one-line errors (docs/reliability.md lists every case and its test)."""

import importlib
import inspect
import json
import os
import pkgutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import tiny_transducer
from lightning.pytorch.callbacks import Timer
from safetensors.torch import save_file

import speechkit
from speechkit.data.dataset import FeatureCache
from speechkit.data.manifest import load_manifest
from speechkit.features import FbankConfig
from speechkit.files import RunLock, RunLockError, atomic_dir, atomic_write
from speechkit.nn.brick import BrickError, build, resolve
from speechkit.pipelines.bricks import load_brick, save_brick
from speechkit.tokenizer import train_tokenizer
from speechkit.train.module import NonFiniteLoss, SpeechTask

TESTS = Path(__file__).parents[1]
ROOT = TESTS.parent
CONF = TESTS / "configs"  # the toy configs, named after the recipe config each shrinks
DEMO = ROOT / "recipes" / "locale" / "conf" / "demo.yaml"


def _cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "speechkit.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def _main(*args) -> str:
    """Run the CLI in this process (no start-up cost) → the message it exits with, which must be one
    ``error: …`` line (``main`` turns the toolkit's errors into ``SystemExit(message)``, no traceback)."""
    from speechkit.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(map(str, args)))
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def _one_error_line(p) -> str:
    """The process failed with exactly one ``error: …`` line on stderr and no traceback."""
    assert p.returncode != 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, p.stderr
    return errors[0]


@pytest.fixture
def brick(tmp_path):
    tok = train_tokenizer(["hello world", "a brick of data", "never code"] * 20, tmp_path / "t.model", 19)
    model = tiny_transducer(vocab=19)
    return save_brick(model, tmp_path / "brick", {"kind": "Transducer", "input": FbankConfig().to_dict()},
                      {"target": tok})


# ---- a brick never runs code ---------------------------------------------------------------------------

def _with_config(brick: Path, config: dict) -> Path:
    (brick / "config.yaml").write_text(yaml.safe_dump(config))
    return brick


def test_brick_naming_a_function_that_runs_a_command_is_refused(brick, tmp_path):
    marker = tmp_path / "ran"
    _with_config(brick, {"class_path": "speechkit.recipe.in_process",
                         "init_args": {"argv": ["/bin/sh", "-c", f"touch {marker}"]}})
    with pytest.raises(BrickError, match=r"config.yaml.class_path: 'speechkit.recipe.in_process' is not a "):
        load_brick(brick)
    p = _cli("decode", brick, tmp_path / "none.jsonl")
    assert "speechkit.recipe.in_process" in _one_error_line(p)
    assert not marker.exists(), "the brick's command ran"


def test_brick_naming_a_file_writer_is_refused(brick, tmp_path):
    target = tmp_path / "written"
    _with_config(brick, {"class_path": "speechkit.pipelines.bricks.save_file",
                         "init_args": {"tensors": {}, "filename": str(target)}})
    with pytest.raises(BrickError, match="save_file"):
        load_brick(brick)
    assert not target.exists()


def test_nested_callable_is_refused_before_anything_is_built(brick, monkeypatch):
    built = []
    monkeypatch.setattr(torch.nn.Module, "__init__", lambda self, *a, **k: built.append(type(self)))
    config = yaml.safe_load((brick / "config.yaml").read_text())
    config["init_args"]["joiner"] = {"class_path": "speechkit.recipe.in_process", "init_args": {"argv": []}}
    with pytest.raises(BrickError, match=r"init_args\.joiner\.class_path"):
        build(config)
    assert built == [], "modules were built before the config was checked"


@pytest.mark.parametrize("value, kind", [("!!binary aGVsbG8=", "bytes"), ("!!set {a: null}", "set"),
                                         ("2024-01-01", "date")])
def test_brick_init_args_hold_plain_data_only(brick, value, kind):
    text = (brick / "config.yaml").read_text().replace("ctc_weight: 0.3", f"ctc_weight: {value}", 1)
    assert text != (brick / "config.yaml").read_text()
    (brick / "config.yaml").write_text(text)
    with pytest.raises(BrickError, match=rf"init_args\.ctc_weight: {kind}"):
        load_brick(brick)


def _speechkit_modules():
    for info in pkgutil.walk_packages(speechkit.__path__, "speechkit."):
        yield importlib.import_module(info.name)


def test_every_speechkit_callable_a_config_could_name_is_refused_unless_a_module_class():
    accepted, refused = set(), set()
    for module in _speechkit_modules():
        for name, obj in vars(module).items():
            if not callable(obj):
                continue
            path = f"{module.__name__}.{name}"
            try:
                cls = resolve(path)
            except BrickError:
                refused.add(path)
                continue
            assert inspect.isclass(cls) and issubclass(cls, torch.nn.Module), path
            assert cls.__module__.startswith("speechkit."), path
            accepted.add(path)
    assert {"speechkit.recipe.in_process", "speechkit.pipelines.bricks.save_file", "speechkit.cli.main",
            "speechkit.pipelines.bricks.save_brick", "speechkit.files.write_text"} <= refused
    assert "speechkit.nn.brick.nn" not in accepted  # a module object, not a class
    assert "speechkit.models.transducer.Transducer" in accepted and len(accepted) > 30
    # torch classes re-exported by a speechkit module are not speechkit's
    assert all(not p.endswith((".Tensor", ".Module")) for p in accepted)


def test_brick_files_that_do_not_parse_are_named(brick):
    config = (brick / "config.yaml").read_text()
    (brick / "config.yaml").write_text("class_path: [speechkit.models\n")
    with pytest.raises(BrickError, match=r"brick/config.yaml:2:1: invalid YAML \(expected ',' or ']'"):
        load_brick(brick)
    (brick / "config.yaml").write_text(config)
    (brick / "interface.json").write_text("{")
    with pytest.raises(BrickError, match=r"brick/interface.json: cannot be parsed"):
        load_brick(brick)


def test_lightning_notes_that_are_not_the_users_concern_are_silenced():
    import warnings

    from lightning.pytorch.utilities import rank_zero_warn

    from speechkit.train.cli import quiet_lightning

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_lightning()
        rank_zero_warn("Starting from v1.9.0, `tensorboardX` has been removed as a dependency")
        rank_zero_warn("The number of training batches (5) is smaller than the logging interval")
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use", FutureWarning, stacklevel=1)
        rank_zero_warn("The number of training batches is small")  # not the exact note: kept
        rank_zero_warn("The dataloader does not have many workers")  # the user's concern: kept
    assert [str(w.message) for w in seen] == ["The number of training batches is small",
                                              "The dataloader does not have many workers"]


def test_brick_files_are_readable_by_others(brick):
    assert stat.S_IMODE(brick.stat().st_mode) == 0o755
    for f in brick.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f.name


def test_non_finite_weights_are_refused_on_save_and_load(brick):
    model = load_brick(brick).module
    state = model.state_dict()
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key][0] = float("nan")
    with pytest.raises(BrickError, match="NaN or infinite"):
        save_brick(model, brick.parent / "nan", {}, state=state)
    assert not (brick.parent / "nan").exists()
    save_file({k: v.contiguous() for k, v in state.items()}, str(brick / "weights.safetensors"))
    with pytest.raises(BrickError, match=rf"weights.safetensors: 1 tensor\(s\) hold NaN.*{key}"):
        load_brick(brick)


def test_save_brick_keeps_the_old_brick_when_it_fails_and_refuses_foreign_folders(brick, monkeypatch):
    b = load_brick(brick)
    model, iface = b.module, b.interface
    before = (brick / "weights.safetensors").read_bytes()
    monkeypatch.setattr("speechkit.pipelines.bricks.save_file", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        save_brick(model, brick, iface)
    assert (brick / "weights.safetensors").read_bytes() == before
    assert sorted(p.name for p in brick.parent.iterdir() if p.name.startswith(".")) == []
    (brick.parent / "mine").mkdir()
    (brick.parent / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(BrickError, match="notes.txt besides brick files"):
        save_brick(model, brick.parent / "mine", iface)
    assert (brick.parent / "mine" / "notes.txt").read_text() == "keep me"


# ---- a diverged run stops and exports nothing ----------------------------------------------------------

def _task(skips=0):
    return SpeechTask(tiny_transducer(vocab=30), nonfinite_skips=skips)


def test_non_finite_loss_is_skipped_then_stops_the_run_naming_step_and_term(capsys):
    task = _task(skips=1)
    nan, ok = torch.tensor(float("nan")), torch.tensor(1.0)
    assert task._finite({"loss": ok, "ctc": ok})
    assert not task._finite({"loss": nan, "ctc": ok, "rnnt": nan})
    assert "training loss term 'rnnt' is nan: batch skipped" in capsys.readouterr().err
    assert task._finite({"loss": ok})  # a good batch resets the count
    assert not task._finite({"loss": nan})
    with pytest.raises(NonFiniteLoss, match=r"step 0: training loss term 'rnnt' is inf \(2 batch"):
        task._finite({"loss": nan, "rnnt": torch.tensor(float("inf"))})


def test_on_a_gpu_a_non_finite_loss_is_watched_on_the_device_and_named_when_checked():
    """The GPU path (``_watch_finite``: no host wait per step), run here on CPU tensors."""
    task = _task()
    nan, inf, ok = torch.tensor(float("nan")), torch.tensor(float("inf")), torch.tensor(1.0)
    task._watch_finite({"loss": ok, "ctc": ok})
    task.check_watch()  # all finite so far
    task._watch_finite({"loss": nan, "ctc": ok, "rnnt": inf})  # the step and the term that broke ...
    task._watch_finite({"loss": nan, "ctc": ok, "rnnt": nan})  # ... stay what is named
    with pytest.raises(NonFiniteLoss, match=r"step 0: training loss term 'rnnt' is not finite"):
        task.check_watch()
    with pytest.raises(NonFiniteLoss, match="is not finite"):  # and no checkpoint is written after it
        task.on_save_checkpoint({})


def test_no_checkpoint_of_non_finite_weights():
    task = _task()
    task.on_save_checkpoint({})
    with torch.no_grad():
        next(task.model.parameters())[0] = float("inf")
    with pytest.raises(NonFiniteLoss, match="no checkpoint written"):
        task.on_save_checkpoint({})


def _fit(corpus: Path, root: Path, *extra, run=_main):
    asr = corpus / "asr"
    d = "--data.init_args."
    return run("fit", "-c", DEMO, "-c", CONF / "tiny_locale_demo.yaml",
                f"--trainer.default_root_dir={root}", f"{d}train={asr / 'train.jsonl'}",
                f"{d}valid={asr / 'dev.jsonl'}", f"{d}test={asr / 'test.jsonl'}",
                f"{d}tokenizer={root.parent / 'tok.model'}", "--trainer.enable_progress_bar=false", *extra)


@pytest.mark.slow
def test_fit_with_a_huge_learning_rate_exits_non_zero_without_a_brick(tiny_corpus, tmp_path):
    root = tmp_path / "exp"
    line = _one_error_line(_fit(tiny_corpus, root, "--model.init_args.lr=1e3", run=_cli))
    assert "training loss term" in line and "is nan" in line and "exported no brick" in line, line
    assert not (root / "brick").exists()
    assert not (root / ".speechkit-lock").exists(), "the lock outlived the run"


# ---- one owner per run directory -----------------------------------------------------------------------

def test_run_lock_refuses_a_second_owner_and_takes_over_a_stale_one(tmp_path, capsys):
    with RunLock(tmp_path) as lock:
        holder = json.loads(lock.path.read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(RunLockError, match=rf"in use by pid {os.getpid()} on "):
            RunLock(tmp_path).__enter__()
    assert not (tmp_path / RunLock.NAME).exists()
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / RunLock.NAME).write_text(json.dumps({"pid": gone.pid, "host": os.uname().nodename,
                                                     "started": "then"}))
    with RunLock(tmp_path):
        assert json.loads((tmp_path / RunLock.NAME).read_text())["pid"] == os.getpid()
    assert f"taking over the stale lock {tmp_path / RunLock.NAME} (pid {gone.pid}" in capsys.readouterr().err
    (tmp_path / RunLock.NAME).write_text("")  # torn: its writer died while writing it
    with RunLock(tmp_path):
        pass


def test_second_fit_into_a_run_directory_is_refused(tiny_corpus, tmp_path):
    root = tmp_path / "exp"
    with RunLock(root):  # this test process plays the first run
        line = _fit(tiny_corpus, root, "--trainer.max_steps=2")
    assert f"{root} is in use by pid {os.getpid()}" in line, line
    assert not (root / "checkpoints").exists() and not (root / "lightning_logs").exists()


# ---- atomic artefacts ----------------------------------------------------------------------------------

def test_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "d") as d:
        (d / "x").write_text("half")
        raise RuntimeError("killed")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_truncated_feature_cache_is_named_and_rebuilt(tiny_corpus, tmp_path, capsys):
    utts = load_manifest(tiny_corpus / "asr" / "dev.jsonl")[:3]
    cfg, path = FbankConfig(), tmp_path / "dev.safetensors"
    full = FeatureCache.load_or_build(utts, cfg, path, workers=0)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a run killed while writing it
    again = FeatureCache.load_or_build(utts, cfg, path, workers=0)
    assert f"feature cache {path} is unreadable" in capsys.readouterr().err
    assert torch.equal(again.feats, full.feats) and FeatureCache.matches(utts, cfg, path)


# ---- one-line errors -----------------------------------------------------------------------------------

def test_cli_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    assert "no-brick: no such brick directory" in _main("decode", tmp_path / "no-brick", tmp_path / "x.jsonl")
    with pytest.raises(BrickError):  # --debug: the exception itself, traceback and all
        from speechkit.cli import main

        main(["decode", str(tmp_path / "no-brick"), str(tmp_path / "x.jsonl"), "--debug"])


def test_fit_config_errors_name_the_file_line_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_steps: [1\n")
    assert f"{bad}:3:1: invalid YAML" in _main("fit", "-c", DEMO, "-c", bad)
    missing = tmp_path / "none.yaml"
    assert f"{missing}: No such file" in _main("fit", "-c", missing)
    bad.write_text("trainer:\n  max_stepz: 3\n")
    assert "trainer.max_stepz" in _main("fit", "-c", DEMO, "-c", bad)
    assert "threads: expected a number or 'auto', got 'many'" in _main("fit", "-c", DEMO, "--threads=many")
    line = _main("fit", "-c", DEMO, f"--trainer.default_root_dir={tmp_path}",
                 "--trainer.enable_checkpointing=false")
    assert "enable_checkpointing=False" in line and "ModelCheckpoint" in line  # Lightning's own check


# ---- a demo that survives a slow machine ---------------------------------------------------------------

def test_adaptive_threads_keeps_what_is_fastest_now(monkeypatch, capsys):
    from speechkit.train.callbacks import AdaptiveThreads

    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    cb = AdaptiveThreads(max_threads=4, every=50, probe=3)
    assert cb.candidates == [1, 2, 4]
    trainer = SimpleNamespace(global_step=0)
    busy = {1: 0.1, 2: 0.25, 4: 0.6}  # a busy machine: one thread is fastest
    before = torch.get_num_threads()
    try:
        for step in range(60):
            trainer.global_step = step
            cb.on_train_batch_start(trainer, None, None, step)
            clock[0] += busy[torch.get_num_threads()]
            cb.on_train_batch_end(trainer, None, None, None, step)
        assert cb.best == 1 and torch.get_num_threads() == 1
        assert "threads: 4 → 1 (median step time by thread count: 1: 100 ms, 2: 250 ms, 4: 600 ms)" in \
            capsys.readouterr().err
        busy = {1: 0.3, 2: 0.2, 4: 0.1}  # the other work ended: the next probe (step 50) moves back up
        for step in range(60, 120):
            trainer.global_step = step
            cb.on_train_batch_start(trainer, None, None, step)
            clock[0] += busy[torch.get_num_threads()]
            cb.on_train_batch_end(trainer, None, None, None, step)
        assert cb.best == 4 and torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


def test_time_schedule_follows_the_larger_of_step_and_time_shares():
    task = SpeechTask(tiny_transducer(vocab=30), warmup_steps=10, total_steps=1000,
                      loss_start_steps={"rnnt": 300}, time_schedule=True)
    timer = Timer(duration={"seconds": 100})
    timer._start_time["train"] = time.monotonic() - 50  # half the budget spent
    task._trainer = SimpleNamespace(callbacks=[timer], world_size=1, global_step=120)
    assert 495 <= task.schedule_step() <= 505  # at 12% of the steps but 50% of the time
    assert task.loss_scales(task.schedule_step())["rnnt"] == 1.0
    task._trainer.global_step = 700
    assert task.schedule_step() == 700  # a fast machine: the steps lead
    task.time_schedule = False
    task._trainer.global_step = 120
    assert task.schedule_step() == 120
