"""LightningCLI glue: ``speechkit fit|validate|test -c config.yaml``.

Configs name a task (LightningModule) and a datamodule by ``class_path``; the model
inside the task is a tree of bricks in the same ``class_path``/``init_args`` form, so
the ``model:`` section of a recipe config is exactly a brick's ``config.yaml``.
Resume a killed run with ``--ckpt_path last``.
"""

from __future__ import annotations

import lightning as L
import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI

from ..compress.apply import CompressConfig


class SpeechkitCLI(LightningCLI):
    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        if cfg.get("threads"):
            torch.set_num_threads(cfg.threads)
        if cfg.get("vocab_size"):
            set_everywhere(cfg, "vocab_size", cfg.vocab_size)
        # Checkpoints go to <default_root_dir>/checkpoints unless a config says otherwise,
        # so that `--ckpt_path last` finds the previous run's last.ckpt.
        root = cfg.trainer.get("default_root_dir") or "."
        for cb in cfg.trainer.get("callbacks") or []:
            if cb.class_path.endswith("ModelCheckpoint") and not cb.init_args.get("dirpath"):
                cb.init_args.dirpath = f"{root}/checkpoints"

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--threads", type=int, default=None,
                            help="torch intra-op threads (default: torch's choice)")
        parser.add_argument("--vocab_size", type=int, default=None,
                            help="set every vocab_size key of the config (model bricks and data) at once")
        parser.add_argument("--compress", type=CompressConfig | None, default=None,
                            help="N:M sparsity / quantization-aware training of every weight "
                            "(README.md, 'Compression'); passed to the task's `compress` argument")
        parser.link_arguments("compress", "model.init_args.compress")


def set_everywhere(node, key: str, value) -> int:
    """Set every ``key`` in a nested config (Namespaces, dicts, lists) to ``value``; how many were set."""
    if isinstance(node, list):
        return sum(set_everywhere(v, key, value) for v in node)
    if isinstance(node, Namespace):
        node = vars(node)  # its attribute dict: assignments go through
    if not isinstance(node, dict):
        return 0
    n = 0
    for k, v in node.items():
        if k == key:
            node[k] = value
            n += 1
        else:
            n += set_everywhere(v, key, value)
    return n


def run_lightning(args: list[str]) -> SpeechkitCLI:
    """Run a LightningCLI subcommand (fit/validate/test) with ``args``."""
    return SpeechkitCLI(
        L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
        save_config_kwargs={"overwrite": True}, args=args,
        trainer_defaults={"use_distributed_sampler": False},
    )
