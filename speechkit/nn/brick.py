"""The ``Brick`` base: a module that remembers how it was built, and building one back from that record.

A ``Brick`` subclass records its constructor arguments as ``{"class_path", "init_args"}``
(the LightningCLI / jsonargparse convention). Arguments that are themselves bricks
are recorded recursively, so a model built from parts
(``Transducer(encoder, predictor, joiner)``) can be rebuilt from its config alone (``build``).

``build`` never runs anything but a speechkit module's constructor: a config may name only
``torch.nn.Module`` subclasses defined under ``speechkit.``, with plain-data arguments. The on-disk
form of a brick (config + weights + interface + tokenizers) is ``speechkit.pipelines.bricks``.
"""

from __future__ import annotations

import functools
import importlib
import inspect

from torch import nn

from ..errors import SpeechkitError

ALLOWED_PREFIXES = ("speechkit.",)


class BrickError(SpeechkitError, ValueError):
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


def resolve(path, where: str = "config") -> type:
    """The class a config's ``class_path`` names, refused (``BrickError`` naming ``where``) unless it is a
    ``torch.nn.Module`` subclass defined under ``speechkit.``: a brick config names modules, never
    functions or other callables, so loading one cannot run anything but a module's constructor."""
    if not isinstance(path, str) or not path.startswith(ALLOWED_PREFIXES):
        raise BrickError(f"{where}.class_path: {path!r} is outside {ALLOWED_PREFIXES}")
    module_name, _, cls_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError, ValueError) as e:
        raise BrickError(f"{where}.class_path: cannot import {path!r} ({e})") from None
    module_class = inspect.isclass(cls) and issubclass(cls, nn.Module)
    if not (module_class and cls.__module__.startswith(ALLOWED_PREFIXES)):
        raise BrickError(f"{where}.class_path: {path!r} is not a speechkit module class (a brick config may "
                         "name only torch.nn.Module subclasses defined under speechkit.)")
    return cls


PLAIN = (type(None), bool, int, float, str)


def build(config: dict, where: str = "config"):
    """Rebuild a module from ``{"class_path", "init_args"}``; nested configs are built first.

    Everything is checked before anything is called: every ``class_path`` must name a module class
    under ``speechkit.`` (``resolve``), and ``init_args`` hold plain data only (numbers, strings, bools,
    None, lists, mappings, nested class configs), so a shared brick can never name arbitrary code.
    """
    check_config(config, where)
    return _build(config, where)


def check_config(config, where: str = "config") -> None:
    """Refuse (``BrickError`` with the key path) a config that names anything but speechkit modules or
    holds anything but plain data; nothing is built or called."""
    if not isinstance(config, dict) or "class_path" not in config:
        raise BrickError(f"{where}: expected a mapping with 'class_path' and 'init_args'")
    extra = set(config) - {"class_path", "init_args"}
    if extra:
        raise BrickError(f"{where}: unexpected key(s) {sorted(extra)} beside class_path/init_args")
    resolve(config["class_path"], where)
    args = config.get("init_args") or {}
    if not isinstance(args, dict):
        raise BrickError(f"{where}.init_args: expected a mapping, got {type(args).__name__}")
    for k, v in args.items():
        _check_value(v, f"{where}.init_args.{k}")


def _check_value(value, where: str) -> None:
    if isinstance(value, dict) and "class_path" in value:
        check_config(value, where)
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, PLAIN):
                raise BrickError(f"{where}: key {k!r} is not plain data")
            _check_value(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_value(v, f"{where}[{i}]")
    elif not isinstance(value, PLAIN):
        raise BrickError(f"{where}: {type(value).__name__} values are not allowed in a brick config "
                         "(plain numbers, strings, bools, lists, mappings and class configs only)")


def _build(config: dict, where: str):
    path = config["class_path"]
    cls = resolve(path, where)
    args = {k: _decode(v, f"{where}.init_args.{k}") for k, v in (config.get("init_args") or {}).items()}
    try:
        return cls(**args)
    except TypeError as e:
        raise BrickError(f"{where}: cannot build {path}: {e}") from None


def _decode(value, where: str):
    if isinstance(value, dict) and "class_path" in value:
        return _build(value, where)
    if isinstance(value, list):
        return [_decode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value
