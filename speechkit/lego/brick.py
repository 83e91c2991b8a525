"""Bricks: modules that remember how they were built, and their on-disk form.

A ``Brick`` subclass records its constructor arguments as ``{"class_path", "init_args"}``
(the LightningCLI / jsonargparse convention). Arguments that are themselves bricks
are recorded recursively, so a model built from parts
(``Transducer(encoder, predictor, joiner)``) can be rebuilt from its config alone.

On disk a brick is a directory::

    config.yaml          class path + init args (enough to rebuild it)
    weights.safetensors  the state dict (no pickle anywhere)
    interface.json       vocabulary fingerprint, blank id, input kind and dims, ...
    tokenizer.model      the sentencepiece model it speaks (and source_/transcript_tokenizer.model)

Loading one never runs code: no pickle, and a config may name only speechkit module classes.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
from pathlib import Path

import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import SpeechkitError, yaml_problem
from ..files import atomic_dir

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


TOKENIZER_FILES = {"target": "tokenizer.model", "source": "source_tokenizer.model",
                   "transcript": "transcript_tokenizer.model"}  # role → file: the one home of these names
BRICK_FILES = {"config.yaml", "weights.safetensors", "interface.json", "stream_calibration.json",
               *TOKENIZER_FILES.values()}


def save_brick(module: Brick, directory: str | Path, interface: dict, tokenizers: dict | None = None,
               state: dict | None = None) -> Path:
    """Write ``module`` as a brick directory, atomically (a failed save leaves no half brick and keeps
    an older one); ``interface`` goes to interface.json.

    ``tokenizers``: role ("target": the interface vocabulary, "source": a text input's, "transcript":
    STAST's source transcripts) → ``Tokenizer`` or ``.model`` path (``TOKENIZER_FILES``); the target's
    ``info()`` is recorded in interface.json. ``state`` replaces ``module.state_dict()`` (a compressed
    model's folded storage, ``speechkit.compress.export.fold``, with ``interface['compression']``).
    Weights that are not finite (a diverged run) are refused.
    """
    from ..tokenizer import Tokenizer

    if not isinstance(module, Brick):
        raise TypeError(f"{type(module).__name__} is not a Brick and cannot be saved as one")
    state = {k: v.detach().contiguous().cpu() for k, v in (state or module.state_dict()).items()}
    _check_finite(state, f"{type(module).__name__} weights")
    toks = {role: t if isinstance(t, Tokenizer) else Tokenizer(t) for role, t in (tokenizers or {}).items()}
    unknown = set(toks) - set(TOKENIZER_FILES)
    if unknown:
        raise ValueError(f"unknown tokenizer role(s) {sorted(unknown)}; known: {sorted(TOKENIZER_FILES)}")
    if "target" in toks:
        interface = {**interface, "tokenizer": toks["target"].info()}
    others = sorted(p.name for p in Path(directory).glob("*") if p.name not in BRICK_FILES) \
        if Path(directory).is_dir() else []
    if others:
        raise BrickError(f"{directory}: holds {', '.join(others[:3])}{' …' if len(others) > 3 else ''} "
                         "besides brick files; a brick replaces its whole directory: choose a new one")
    with atomic_dir(directory) as d:
        (d / "config.yaml").write_text(yaml.safe_dump(module.config, sort_keys=False))
        save_file(state, str(d / "weights.safetensors"))
        for role, tok in toks.items():
            (d / TOKENIZER_FILES[role]).write_bytes(tok.model_bytes)
        (d / "interface.json").write_text(json.dumps(interface, indent=2) + "\n")
    return Path(directory)


def brick_tokenizers(directory: str | Path) -> dict:
    """The tokenizers a brick directory holds, by role (``TOKENIZER_FILES``)."""
    from ..tokenizer import Tokenizer

    d = Path(directory)
    return {role: Tokenizer(d / name) for role, name in TOKENIZER_FILES.items() if (d / name).is_file()}


def _check_finite(state: dict, where: str) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise BrickError(f"{where}: {len(bad)} tensor(s) hold NaN or infinite values ({', '.join(bad[:3])}"
                         f"{', …' if len(bad) > 3 else ''}): the training diverged")


def _require(d: Path, *names: str) -> None:
    if not d.is_dir():
        raise BrickError(f"{d}: no such brick directory")
    for name in names:
        if not (d / name).is_file():
            raise BrickError(f"{d}: not a brick directory (missing {name})")


def _read(path: Path, parse):
    try:
        return parse(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise BrickError(yaml_problem(path, e)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BrickError(f"{path}: cannot be parsed ({e})") from None


def read_interface(directory: str | Path) -> dict:
    """A brick's ``interface.json`` (what it reads and writes) without building the brick."""
    d = Path(directory)
    _require(d, "interface.json")
    iface = _read(d / "interface.json", json.loads)
    if not isinstance(iface, dict):
        raise BrickError(f"{d / 'interface.json'}: expected a JSON object")
    return iface


def load_brick(directory: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a brick from its directory → (module in eval mode, interface dict).

    Data only, never code: no pickle, and config.yaml may name only speechkit module classes with plain
    arguments (``build``). Weights that are not finite are refused."""
    d = Path(directory)
    _require(d, "config.yaml", "weights.safetensors", "interface.json")
    config = _read(d / "config.yaml", yaml.safe_load)
    interface = read_interface(d)
    module = build(config, where=str(d / "config.yaml"))
    try:
        state = load_file(str(d / "weights.safetensors"))
    except (SafetensorError, OSError) as e:
        raise BrickError(f"{d / 'weights.safetensors'}: unreadable ({e})") from None
    _check_finite(state, str(d / "weights.safetensors"))
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
