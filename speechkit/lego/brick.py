"""Bricks: modules that remember how they were built, and their on-disk form.

A ``Brick`` subclass records its constructor arguments as ``{"class_path", "init_args"}``
(the LightningCLI / jsonargparse convention). Arguments that are themselves bricks
are recorded recursively, so a model built from parts
(``Transducer(encoder, predictor, joiner)``) can be rebuilt from its config alone.

On disk a brick is a directory::

    config.yaml          class path + init args (enough to rebuild it)
    weights.safetensors  the state dict (no pickle anywhere)
    interface.json       vocabulary fingerprint, blank id, input kind and dims, ...
    tokenizer.model      the sentencepiece model it speaks
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
from pathlib import Path

import yaml
from safetensors.torch import load_file, save_file
from torch import nn

ALLOWED_PREFIXES = ("speechkit.",)


class BrickError(ValueError):
    """A brick cannot be loaded or joined; the message names the file or key."""


def _encode(value, where: str):
    if isinstance(value, Brick):
        return value.config
    if isinstance(value, (list, tuple)):
        return [_encode(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v, where) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{where}: argument of type {type(value).__name__} cannot be stored in a "
                    "brick config; pass plain values or Brick modules")


class Brick(nn.Module):
    """nn.Module that records its constructor arguments in ``self.config``."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            return
        init = cls.__init__
        sig = inspect.signature(init)

        @functools.wraps(init)
        def wrapped(self, *args, **kw):
            outer = not hasattr(self, "_recording")
            if outer:
                object.__setattr__(self, "_recording", True)
            init(self, *args, **kw)
            if outer:
                bound = sig.bind(self, *args, **kw)
                bound.apply_defaults()
                name = f"{type(self).__module__}.{type(self).__qualname__}"
                init_args = {k: _encode(v, f"{name}.{k}") for k, v in bound.arguments.items()
                             if k != "self" and sig.parameters[k].kind not in (
                                 inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}
                object.__setattr__(self, "config", {"class_path": name, "init_args": init_args})

        cls.__init__ = wrapped


def build(config: dict, where: str = "config"):
    """Rebuild a module from ``{"class_path", "init_args"}``; nested configs are built first.

    Only classes under ``speechkit.`` are importable from a config, so a shared brick
    can never name arbitrary code.
    """
    if not isinstance(config, dict) or "class_path" not in config:
        raise BrickError(f"{where}: expected a mapping with 'class_path' and 'init_args'")
    path = config["class_path"]
    if not path.startswith(ALLOWED_PREFIXES):
        raise BrickError(f"{where}.class_path: {path!r} is outside {ALLOWED_PREFIXES}")
    module_name, _, cls_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as e:
        raise BrickError(f"{where}.class_path: cannot import {path!r} ({e})") from None
    args = {}
    for k, v in (config.get("init_args") or {}).items():
        args[k] = _decode(v, f"{where}.init_args.{k}")
    try:
        return cls(**args)
    except TypeError as e:
        raise BrickError(f"{where}: cannot build {path}: {e}") from None


def _decode(value, where: str):
    if isinstance(value, dict) and "class_path" in value:
        return build(value, where)
    if isinstance(value, list):
        return [_decode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def save_brick(module: Brick, directory: str | Path, interface: dict, tokenizer=None,
               state: dict | None = None) -> Path:
    """Write ``module`` as a brick directory; ``interface`` goes to interface.json.

    ``state`` replaces ``module.state_dict()`` (a compressed model's folded storage,
    ``speechkit.compress.export.fold``, with ``interface['compression']`` describing it).
    """
    if not isinstance(module, Brick):
        raise TypeError(f"{type(module).__name__} is not a Brick and cannot be saved as one")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(yaml.safe_dump(module.config, sort_keys=False))
    state = {k: v.detach().contiguous().cpu() for k, v in (state or module.state_dict()).items()}
    save_file(state, str(d / "weights.safetensors"))
    if tokenizer is not None:
        tokenizer.save(d / "tokenizer.model")
        interface = {**interface, "tokenizer": tokenizer.info()}
    (d / "interface.json").write_text(json.dumps(interface, indent=2) + "\n")
    return d


def _require(d: Path, *names: str) -> None:
    for name in names:
        if not (d / name).is_file():
            raise BrickError(f"{d}: not a brick directory (missing {name})")


def read_interface(directory: str | Path) -> dict:
    """A brick's ``interface.json`` (what it reads and writes) without building the brick."""
    d = Path(directory)
    _require(d, "interface.json")
    return json.loads((d / "interface.json").read_text())


def load_brick(directory: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a brick from its directory → (module in eval mode, interface dict). No pickle."""
    d = Path(directory)
    _require(d, "config.yaml", "weights.safetensors", "interface.json")
    config = yaml.safe_load((d / "config.yaml").read_text())
    module = build(config, where=str(d / "config.yaml"))
    state = load_file(str(d / "weights.safetensors"))
    interface = read_interface(d)
    compression = interface.get("compression")
    try:
        if compression:  # folded N:M / int8 storage (speechkit.compress.export)
            from ..compress.export import load_folded

            load_folded(module, state, compression)
        else:
            module.load_state_dict(state)
    except KeyError as e:
        raise BrickError(f"{d / 'weights.safetensors'}: compressed weight {e} listed in interface.json "
                         "is missing") from None
    except RuntimeError as e:
        raise BrickError(f"{d / 'weights.safetensors'}: weights do not match config.yaml ({e})") from None
    return module.eval(), interface
