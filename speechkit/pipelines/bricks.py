"""A brick on disk: the one home of its files, and the handle every reader gets (``load_brick``).

A brick is a directory::

    config.yaml                  class path + init args (``speechkit.nn.brick.build`` rebuilds it)
    weights.safetensors          the state dict (no pickle anywhere); folded when compressed
    interface.json               vocabulary fingerprint, blank id, input kind and dims, ...
    tokenizer.model              the interface (target) vocabulary: role "target"
    source_tokenizer.model       a text input's vocabulary (MT): role "source"
    transcript_tokenizer.model   STAST's transcript vocabulary: role "transcript"
    stream_calibration.json      optional: the streaming confidence calibration

Loading one never runs code: no pickle, and a config may name only speechkit module classes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..audio import read_audio
from ..compress.export import load_folded
from ..errors import yaml_problem
from ..features import FbankConfig, fbank
from ..files import atomic_dir
from ..nn.brick import Brick, BrickError, build
from ..nn.device import model_device
from ..search.dispatch import search
from ..tokenizer import Tokenizer

TOKENIZER_FILES = {"target": "tokenizer.model", "source": "source_tokenizer.model",
                   "transcript": "transcript_tokenizer.model"}  # role → file: the one home of these names
CALIBRATION = "stream_calibration.json"  # the streaming calibration table (pipelines.stream_eval)
BRICK_FILES = {"config.yaml", "weights.safetensors", "interface.json", CALIBRATION, *TOKENIZER_FILES.values()}


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


@dataclass
class LoadedBrick:
    """A brick read from disk (``load_brick``).

    path: its directory; module: the rebuilt model in eval mode; interface: interface.json;
    tokenizers: the tokenizers it holds by role ("target", "source", "transcript": ``TOKENIZER_FILES``).
    """

    path: Path
    module: nn.Module
    interface: dict
    tokenizers: dict[str, Tokenizer]

    @property
    def tokenizer(self) -> Tokenizer:
        """The interface (target) vocabulary: what the brick writes and a decoder reads."""
        return self.tokenizer_for("target")

    def tokenizer_for(self, role: str) -> Tokenizer:
        """The tokenizer of ``role``; a ``BrickError`` naming the missing file when the brick has none."""
        if role not in self.tokenizers:
            raise BrickError(f"{self.path}: no {TOKENIZER_FILES[role]} ({role} tokenizer) in this brick")
        return self.tokenizers[role]

    @property
    def fingerprint(self) -> str | None:
        """The interface vocabulary's fingerprint (interface.json ``tokenizer``)."""
        return self.interface.get("tokenizer", {}).get("fingerprint")

    @property
    def text_input(self) -> bool:
        """True when the brick reads text (token ids of its source tokenizer), False for speech."""
        return self.interface.get("input", {}).get("kind") == "text"

    def source_tokenizer(self) -> Tokenizer:
        """A text-input brick's source vocabulary, checked against interface.json's ``input``."""
        tok = self.tokenizer_for("source")
        want = self.interface["input"].get("fingerprint")
        if tok.fingerprint != want:
            raise BrickError(f"{self.path / TOKENIZER_FILES['source']} has fingerprint {tok.fingerprint}, "
                             f"interface.json says {want}")
        return tok

    def fbank(self) -> FbankConfig:
        """The features a speech-input brick reads (interface.json ``input``)."""
        return FbankConfig.from_dict(self.interface["input"])

    @torch.no_grad()
    def transcribe(self, audio: str | Path | torch.Tensor, beam: int = 1) -> str:
        """Speech → text: an audio file (any format soundfile reads, any rate: resampled) or a waveform (N,)
        in [-1, 1] at the brick's sample rate; greedy search by default (``beam`` > 1: beam search), with the
        features and search ``speechkit decode`` uses."""
        if self.text_input:
            raise BrickError(f"{self.path}: reads text, not speech; transcribe needs a speech brick")
        cfg = self.fbank()
        wave = audio if torch.is_tensor(audio) else read_audio(audio, rate=cfg.sample_rate)
        if wave.ndim != 1:
            raise ValueError(f"transcribe: expected a waveform (N,), got shape {tuple(wave.shape)}")
        feats = fbank(wave.float(), cfg)  # (T, F)
        device = model_device(self.module)
        enc = self.module(feats[None].to(device), torch.tensor([feats.shape[0]], device=device))
        (best, *_), = search(self.module.eval(), enc, beam)
        return self.tokenizer.decode(list(best.tokens))

    def check_speaks(self, interface: dict, where: str | Path = "the model",
                     role: str = "an external LM") -> None:
        """The one compatibility check between bricks: ``self`` (e.g. an LM) must speak the interface
        vocabulary (tokenizer fingerprint) of the brick at ``where`` whose interface.json is ``interface``;
        a ``BrickError`` naming both otherwise."""
        want = interface.get("tokenizer", {}).get("fingerprint")
        if self.fingerprint != want:
            raise BrickError(f"{self.path} uses tokenizer {self.fingerprint}, {where} uses {want}: {role} "
                             "must speak the model's (interface) vocabulary")


def load_brick(directory: str | Path, device: str | torch.device | None = None) -> LoadedBrick:
    """Rebuild a brick from its directory → ``LoadedBrick`` (module in eval mode, on ``device`` if given).

    Data only, never code: no pickle, and config.yaml may name only speechkit module classes with plain
    arguments (``build``). Weights that are not finite are refused; a compressed brick's folded weights are
    unfolded (``speechkit.compress.export.load_folded``)."""
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
            load_folded(module, state, compression)
        else:
            module.load_state_dict(state)
    except KeyError as e:
        raise BrickError(f"{d / 'weights.safetensors'}: compressed weight {e} listed in interface.json "
                         "is missing") from None
    except RuntimeError as e:
        raise BrickError(f"{d / 'weights.safetensors'}: weights do not match config.yaml ({e})") from None
    tokenizers = {role: Tokenizer(d / name) for role, name in TOKENIZER_FILES.items() if (d / name).is_file()}
    module = module.eval() if device is None else module.to(device).eval()
    return LoadedBrick(d, module, interface, tokenizers)


def check_new_brick(out: str | Path, *inputs: str | Path) -> None:
    """Refuse (``BrickError``) an output brick ``out`` that is one of the ``inputs`` bricks or lies inside one
    (symbolic links resolved): the bricks a command reads are read-only."""
    path = Path(out).resolve()
    for src in map(Path, inputs):
        if path == src.resolve() or src.resolve() in path.parents:
            raise BrickError(f"--out {out} is the input brick {src} or inside it: the bricks a command reads "
                             "are read-only; choose another --out")


def export_brick(brick: str | Path, out: str | Path, cfg) -> dict:
    """``one_shot`` compression (``speechkit.compress.export``) of the brick at ``brick`` → a folded brick
    at ``out``; returns {'brick', 'coverage', 'bytes', 'dense_bytes'}."""
    from ..compress.export import one_shot

    check_new_brick(out, brick)
    b = load_brick(brick)
    if "compression" in b.interface:
        raise ValueError(f"{brick} is compressed already")
    state, info = one_shot(b.module, cfg)
    save_brick(b.module, out, {**b.interface, "compression": info}, b.tokenizers, state=state)
    return {"brick": str(out), "coverage": info["coverage"],
            "bytes": (Path(out) / "weights.safetensors").stat().st_size,
            "dense_bytes": (Path(brick) / "weights.safetensors").stat().st_size}
