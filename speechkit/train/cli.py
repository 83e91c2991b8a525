"""LightningCLI glue: ``speechkit fit|validate|test -c config.yaml``.

Configs name a task (LightningModule) and a datamodule by ``class_path``; the model
inside the task is a tree of bricks in the same ``class_path``/``init_args`` form, so
the ``model:`` section of a recipe config is exactly a brick's ``config.yaml``.
Resume a killed run with ``--ckpt_path last``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI

from ..compress.apply import CompressConfig
from ..errors import SpeechkitError, yaml_problem
from ..files import RunLock, rooted


class SpeechkitCLI(LightningCLI):
    """LightningCLI with speechkit's options (``--threads``, ``--vocab_size``, ``--compress``) and one owner
    per run directory: ``fit`` holds a ``files.RunLock`` on ``trainer.default_root_dir`` (process rank 0)
    in ``resources``, which the caller releases."""

    def __init__(self, *args, resources: contextlib.ExitStack | None = None, **kwargs):
        self.resources = resources
        super().__init__(*args, **kwargs)

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        root_paths(cfg)
        root = cfg.trainer.get("default_root_dir") or "."
        if self.subcommand == "fit" and self.resources is not None and _launcher_process():
            self.resources.enter_context(RunLock(root))
        self.threads, self.adaptive = threads_option(cfg.get("threads")), cfg.get("threads") == "auto"
        if self.threads:
            torch.set_num_threads(self.threads)
        if cfg.get("vocab_size") or cfg.get("source_vocab_size"):
            for key in ("model", "data"):
                set_vocab_sizes(cfg.get(key), cfg.get("vocab_size"), cfg.get("source_vocab_size"))
        # Checkpoints go to <default_root_dir>/checkpoints unless a config says otherwise,
        # so that `--ckpt_path last` finds the previous run's last.ckpt.
        for cb in cfg.trainer.get("callbacks") or []:
            if cb.class_path.endswith("ModelCheckpoint") and not cb.init_args.get("dirpath"):
                cb.init_args.dirpath = f"{root}/checkpoints"
        if cfg.trainer.get("logger") in (None, True):
            cfg.trainer.logger = default_loggers(root)

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        from .callbacks import AdaptiveThreads, format_progress_bar

        if self.trainer is not None:
            format_progress_bar(self.trainer)
        if self.adaptive and self.trainer is not None:
            self.trainer.callbacks.append(AdaptiveThreads(self.threads))

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--threads", type=int | str | None, default=None,
                            help="torch intra-op threads (default: torch's choice); 'auto': at most the "
                            "CPUs this process may use, re-chosen while training to whatever is fastest now "
                            "(fewer on a machine busy with other work: train.callbacks.AdaptiveThreads)")
        parser.add_argument("--vocab_size", type=int, default=None,
                            help="the target vocabulary size: every vocab_size of the model and data at once")
        parser.add_argument("--source_vocab_size", type=int, default=None,
                            help="the source vocabulary size: every vocab_size a class declares "
                            "source-side (text encoders' token embeddings, STAST's transcript side) and "
                            "data.source_vocab_size / transcript_vocab_size at once")
        parser.add_argument("--compress", type=CompressConfig | None, default=None,
                            help="N:M sparsity / quantization-aware training of every weight "
                            "(README.md, 'Compression'); passed to the task's `compress` argument")
        parser.link_arguments("compress", "model.init_args.compress")


def root_paths(node) -> None:
    """Put every ``data/…`` and ``exp/…`` path of a config (data, tokenizers, ``default_root_dir``,
    ``init_from``, …) under the data / experiment root (``files.rooted``), in place."""
    items = vars(node).items() if isinstance(node, Namespace) else node.items() if isinstance(node, dict) \
        else enumerate(node) if isinstance(node, list) else ()
    for key, value in list(items):
        if isinstance(value, str):
            if rooted(value) != value:
                node[key] = rooted(value)
        else:
            root_paths(value)


def default_loggers(root: str) -> list[Namespace]:
    """The loggers of a run whose config names none: CSV (``metrics.csv``, what ``speechkit plot`` reads)
    and TensorBoard (``tensorboard --logdir ROOT``; left out, with a note, where tensorboard is not
    installed), both in ``ROOT/lightning_logs/version_N`` with the same N (the next free one; each logger
    would otherwise pick its own)."""
    logs = Path(root) / "lightning_logs"
    taken = [int(p.name[8:]) for p in logs.glob("version_*") if p.name[8:].isdigit()]
    version = max(taken, default=-1) + 1
    names = ["CSVLogger", "TensorBoardLogger"]
    if not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        names.pop()  # an install without it (`pip install --no-deps`): CSV only, as Lightning itself does
        if _launcher_process():
            print("note: tensorboard is not installed: logging to CSV only (pip install tensorboard)",
                  file=sys.stderr)
    return [Namespace(class_path=f"lightning.pytorch.loggers.{name}",
                      init_args=Namespace(save_dir=str(root), name="lightning_logs", version=version))
            for name in names]


def _source_side_args(class_path: str) -> tuple[str, ...]:
    """The constructor arguments a class declares over the source (input text) vocabulary
    (``source_side_args``: a token embedding's ``vocab_size``, STAST's acoustic and text encoders), or ()."""
    module, _, name = class_path.rpartition(".")
    try:
        return tuple(getattr(getattr(importlib.import_module(module), name), "source_side_args", ()))
    except (ImportError, AttributeError, ValueError):
        return ()


def set_vocab_sizes(node, target: int | None, source: int | None, _source_side: bool = False,
                    _source_args: tuple[str, ...] = ()) -> int:
    """Set every vocabulary size of a nested config (Namespaces, dicts, lists): ``target`` for each
    ``vocab_size`` except on the source side — under an argument its class lists in
    ``source_side_args`` — which gets ``source``, as do the data's ``source_vocab_size`` /
    ``transcript_vocab_size``; None leaves that side alone. Returns how many keys were set."""
    if isinstance(node, list):
        return sum(set_vocab_sizes(v, target, source, _source_side) for v in node)
    if isinstance(node, Namespace):
        node = vars(node)  # its attribute dict: assignments go through
    if not isinstance(node, dict):
        return 0
    class_path = str(node.get("class_path") or "")
    own = _source_side_args(class_path) if class_path else ()
    n = 0
    for k, v in node.items():
        side = _source_side or k in _source_args
        value = (source if side else target) if k == "vocab_size" else \
            source if k in ("source_vocab_size", "transcript_vocab_size") else None
        if value is not None and not isinstance(v, (Namespace, dict, list)):
            node[k] = value
            n += 1
        else:
            n += set_vocab_sizes(v, target, source, side, own if k == "init_args" else ())
    return n


def threads_option(value) -> int | None:
    """``--threads``: None, a count, or "auto" (the CPUs this process may use: the most it will try)."""
    if value is None or isinstance(value, int):
        return value
    if value == "auto":
        return len(os.sched_getaffinity(0))
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"threads: expected a number or 'auto', got {value!r}") from None


def _launcher_process() -> bool:
    """Whether this is the process that started the run (not a DDP worker Lightning or torchrun launched,
    nor another node's): the one that holds the run directory's lock."""
    return all(int(os.environ.get(k, 0) or 0) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK",
                                                             "SLURM_PROCID"))


def run_lightning(args: list[str], run: bool = True) -> SpeechkitCLI:
    """Run a LightningCLI subcommand (fit/validate/test) with ``args``; ``run=False``: only build the
    model, data module and trainer (``args`` without a subcommand). LightningCLI reads ``args`` as its
    command line (``sys.argv`` for the call): called from ``speechkit.cli.main``, in-process by the recipe
    runner or a test, it sees one command line, not two."""
    check_config_files(args)
    quiet_lightning()
    with contextlib.ExitStack() as resources, _command_line(args):
        return SpeechkitCLI(
            L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
            save_config_kwargs={"overwrite": True}, args=None, parser_kwargs={"exit_on_error": False},
            trainer_defaults={"use_distributed_sampler": False}, run=run, resources=resources,
        )


@contextlib.contextmanager
def _command_line(args: list[str]):
    """``sys.argv`` = this program and ``args`` for the block (restored after)."""
    saved = sys.argv
    sys.argv = [*saved[:1], *map(str, args)]
    try:
        yield
    finally:
        sys.argv = saved


# What Lightning and the packages below it print that is not the user's concern, silenced by its exact
# message (warnings about the user's own setup, e.g. few data loader workers, stay):
NOTES = (
    # logger=True without TensorBoard installed: Lightning logs CSV, as README "Training" says
    r"Starting from v1\.9\.0, `tensorboardX` has been removed as a dependency",
    # Lightning's own use of a torch API torch deprecated: nothing the user can change
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # Lightning logs every log_every_n_steps steps counted over the whole run, not per epoch: a corpus of
    # fewer batches than that still gets its logs
    r"The number of training batches \(\d+\) is smaller than the logging interval",
)


def quiet_lightning() -> None:
    """Silence the ``NOTES`` and Lightning's tips (litlogger, litmodels: log records starting "💡 Tip:")."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())
    for message in NOTES:
        warnings.filterwarnings("ignore", message=message)


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip:")


class ConfigError(SpeechkitError):
    """A config file is missing or is not valid YAML (the message names the file, line and column)."""


def check_config_files(args: list[str]) -> None:
    """Read every ``-c/--config FILE`` of ``args`` as YAML first, so that a missing file or a syntax error
    is named by its path, line and column (jsonargparse reports "<unicode string>")."""
    files = [b for a, b in zip(args, args[1:]) if a in ("-c", "--config")]
    files += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    for f in files:
        try:
            yaml.safe_load(Path(f).read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"{f}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(yaml_problem(f, e)) from None
