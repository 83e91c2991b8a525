"""Compose bricks: an encoder brick (or a chain of them) + the decoder of another brick.

This is LegoNN's zero-shot reuse (METHODS.md §1): the encoder of one trained model is
joined, unchanged, to the decoder of another, because both speak the same interface
vocabulary (checked by the tokenizer fingerprint). The result is a brick like any other:
``speechkit decode`` reads it, ``init_from`` fine-tunes it.

From Python::

    model, interface = compose(["exp/lego/mt_ro_en/brick"], "exp/lego/mt_de_en/brick")
    save_composed(model, interface, "exp/lego/ro_enc+de_dec")

From the command line::

    speechkit compose exp/lego/mt_ro_en/brick --decoder exp/lego/mt_de_en/brick --out DIR

An encoder argument ``DIR#N`` takes stage N of the brick's encoder chain (e.g. the middle
brick of a three-brick model: ``exp/lego/chain/brick#1``).
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..lego.encoders import Chain
from ..lego.interface import LengthController
from ..nn.brick import BrickError
from .bricks import TOKENIZER_FILES, load_brick, save_brick


@dataclass
class _Part:
    spec: str
    directory: Path
    module: nn.Module
    interface: dict


def _load_encoder(spec: str) -> _Part:
    directory, _, stage = spec.partition("#")
    brick = load_brick(directory)
    enc = getattr(brick.module, "encoder", brick.module)
    if stage:
        if not isinstance(enc, Chain):
            raise BrickError(f"{spec}: '#{stage}' selects a stage of a chain, but {directory} has a "
                             f"{type(enc).__name__} encoder")
        try:
            enc = enc.bricks[int(stage)]
        except (ValueError, IndexError):
            raise BrickError(f"{spec}: no stage {stage!r} (the chain has {len(enc.bricks)})") from None
    return _Part(spec, Path(directory), enc, brick.interface)


def _fingerprint(part: _Part) -> str:
    try:
        return part.interface["tokenizer"]["fingerprint"]
    except KeyError:
        raise BrickError(f"{part.directory}/interface.json records no tokenizer fingerprint") from None


def _check_vocab(producer: _Part, consumer: _Part, role: str) -> None:
    a, b = _fingerprint(producer), _fingerprint(consumer)
    if a != b:
        va = producer.interface["tokenizer"].get("vocab_size")
        vb = consumer.interface["tokenizer"].get("vocab_size")
        raise BrickError(f"vocabulary mismatch: {producer.spec} emits marginals over tokenizer {a} "
                         f"(V={va}) but {role} {consumer.spec} reads tokenizer {b} (V={vb}); "
                         "bricks can only be joined on the same interface vocabulary")


def _reads_marginals(decoder_model: nn.Module) -> bool:
    dec = getattr(decoder_model, "decoder", decoder_model)
    return getattr(dec, "ingestor", None) is not None


def _controllers(encoders: list[nn.Module]) -> list[LengthController]:
    return [m for e in encoders for m in e.modules() if isinstance(m, LengthController)]


def _adjust_length(parts: list[_Part], dec: _Part, alpha: float | None, log) -> dict | None:
    """Estimate the composed encoder's frames-per-token ratio, compare it with the range the
    decoder was trained on, and set the last length controller's alpha → the estimated ratios."""
    later = _controllers([p.module for p in parts[1:]])  # each scales the first brick's ratio
    controllers = later or _controllers([parts[0].module])
    if alpha is not None and not controllers:
        raise BrickError("--alpha given but no brick of the encoder side has a length controller")
    scale = math.prod(c.alpha for c in later)
    ratio, want = parts[0].interface.get("length_ratio"), dec.interface.get("length_ratio")
    if alpha is not None:
        scale *= alpha / controllers[-1].alpha
        controllers[-1].set_alpha(alpha)
    elif ratio is None:
        log(f"note: {parts[0].spec} records no length ratio; the length range is not checked")
    elif want and not want["p5"] <= ratio["median"] * scale <= want["p95"]:
        have = ratio["median"] * scale
        msg = (f"warning: the encoder side gives {have:.2f} positions per target token (median) but "
               f"{dec.spec} was trained on {want['p5']:.2f}–{want['p95']:.2f} (median {want['median']:.2f})")
        if controllers:
            new = controllers[-1].alpha * want["median"] / have
            log(f"{msg}; setting alpha {controllers[-1].alpha:.3f} → {new:.3f}")
            scale *= new / controllers[-1].alpha
            controllers[-1].set_alpha(new)
        else:
            log(f"{msg}; no length controller to adjust")
    return None if ratio is None else {k: round(v * scale, 3) for k, v in ratio.items()}


def compose(encoders: list[str], decoder: str, alpha: float | None = None, allow_hidden: bool = False,
            log=lambda m: print(m, file=sys.stderr)) -> tuple[nn.Module, dict]:
    """Join encoder bricks (first reads the inputs, the others read marginals) with the decoder
    side of the model brick ``decoder`` → (model in eval mode, interface dict).

    Raises ``BrickError`` naming both sides when vocabularies differ, when a later encoder does
    not read marginals, or when the decoder reads hidden states (a monolithic model; pass
    ``allow_hidden=True`` to join it anyway, as the control experiment does).
    """
    if not encoders:
        raise BrickError("compose needs at least one encoder brick")
    parts = [_load_encoder(s) for s in encoders]
    dec_brick = load_brick(decoder)
    dec_model = dec_brick.module
    dec = _Part(decoder, Path(decoder), dec_model, dec_brick.interface)
    if not hasattr(dec_model, "encoder"):
        raise BrickError(f"{decoder}: a {type(dec_model).__name__} brick has no decoder side to reuse")
    for a, b in zip(parts, parts[1:]):
        if getattr(b.module, "input_kind", None) != "marginals":
            raise BrickError(f"{b.spec} reads {getattr(b.module, 'input_kind', '?')}, not marginals: it "
                             f"cannot follow {a.spec} in a chain")
        _check_vocab(a, b, "encoder")
    _check_vocab(parts[-1], dec, "decoder")
    if not _reads_marginals(dec_model) and not allow_hidden:
        raise BrickError(f"{decoder}: this decoder reads the encoder's hidden states (a monolithic, "
                         "non-LegoNN model), so nothing guarantees another encoder fits it; "
                         "pass allow_hidden=True / --allow-hidden to join it anyway")
    ratio = _adjust_length(parts, dec, alpha, log)
    mods = [p.module for p in parts]
    encoder = mods[0] if len(mods) == 1 else Chain(mods)
    args = {}
    for k, v in dec_model.config["init_args"].items():
        child = getattr(dec_model, k, None)
        args[k] = encoder if k == "encoder" else child if isinstance(child, nn.Module) else copy.deepcopy(v)
    model = type(dec_model)(**args).eval()
    first = parts[0].interface
    interface = {"kind": type(model).__name__, "input": first["input"],
                 "input_kind": getattr(encoder, "input_kind", first.get("input_kind")),
                 "target_lang": first.get("target_lang"), "length_ratio": ratio,
                 "composed_from": {"encoders": encoders, "decoder": decoder},
                 "sources": {"encoders": [str(p.directory) for p in parts], "decoder": decoder}}
    return model, interface


def save_composed(model: nn.Module, interface: dict, out: str | Path) -> Path:
    """Write a composed model as a brick: the decoder's tokenizer, the first encoder's source tokenizer."""
    sources = interface["sources"]
    tokenizers = {"target": Path(sources["decoder"]) / TOKENIZER_FILES["target"]}
    src_tok = Path(sources["encoders"][0]) / TOKENIZER_FILES["source"]
    if src_tok.is_file():
        tokenizers["source"] = src_tok
    out = save_brick(model, out, {k: v for k, v in interface.items() if k != "sources"}, tokenizers)
    return out
