"""Attach N:M sparsity and/or fake quantization to every weight of any ``nn.Module``, and report coverage.

``compress_model(model, CompressConfig(...))`` registers ``torch.nn.utils.parametrize``
parametrizations on the weights it knows (``NMSparse`` then ``WeightLSQ``: the quantizer sees the
masked weight) and an input fake-quantizer (``ActLSQ`` as ``module.input_quant`` + a forward
pre-hook) on the layers whose input it can reach. Weight kinds, each reduced along dim 1:

===================  ======================================  =====================
module               parameters                              input quantized
===================  ======================================  =====================
Linear               weight (joiners, output heads too)      the input
Conv1d / Conv2d      weight (C_out, C_in/groups, k…)         the input
Embedding            weight (num, dim)                       — (token ids)
LSTM / GRU / RNN     weight_ih_l*, weight_hh_l* (gates)      the input sequence
MultiheadAttention   in_proj_weight or q/k/v_proj_weight     query, key, value
===================  ======================================  =====================

Everything else is listed by ``Coverage`` with the rule that left it out: 1-D parameters
(biases, norms, step sizes), dim 1 not divisible by M, parameters of module kinds compress does
not know, and the user's ``exclude`` patterns. Nothing is skipped silently.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from .quant import ActLSQ, WeightLSQ
from .sparsity import NMSparse


@dataclass
class SparsityConfig:
    """N:M sparsity: keep ``n`` of every ``m`` weights along the reduction dimension.

    srste_lambda: λ_W of SR-STE (0 = vanilla STE); start_step: dense warm-up until this step;
    freeze_step: masks stop changing from this step (None: recomputed to the end).
    """

    n: int = 2
    m: int = 4
    srste_lambda: float = 2e-4
    start_step: int = 0
    freeze_step: int | None = None


@dataclass
class QuantConfig:
    """LSQ fake quantization. weight_bits / act_bits: 8 or 4 (act_bits None: weights only);
    per_channel: one weight step per output channel; start_step: full precision until this step;
    noise: γ0 of noise tempering (0 = off), decaying as γ0·exp(−t/noise_decay_steps) from start_step;
    sam_rho: > 0 turns on SQuAT-style training from start_step (``quant.squat_step``: SAM steps on the
    weights with radius sam_rho alternating with LSQ steps on the step sizes; twice the compute).
    """

    weight_bits: int = 8
    act_bits: int | None = 8
    per_channel: bool = True
    start_step: int = 0
    noise: float = 0.0
    noise_decay_steps: float = 1000.0
    sam_rho: float = 0.0


@dataclass
class CompressConfig:
    """The ``compress:`` section of a recipe config (see docs in ``speechkit.compress``).

    exclude: regular expressions on parameter names (``re.search``) left dense and in full
    precision, each printed in the coverage report; sad_every: log mask flips every this many steps.
    """

    sparsity: SparsityConfig | None = None
    quant: QuantConfig | None = None
    exclude: list[str] = field(default_factory=list)
    sad_every: int = 100


RNN_WEIGHT = re.compile(r"weight_(ih|hh)_l\d+(_reverse)?$")
MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def weight_names(module: nn.Module) -> list[str]:
    """The parameters of ``module`` (its own, not its children's) that are weights compress knows."""
    own = [n for n, _ in module.named_parameters(recurse=False)]
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)):
        return ["weight"] if "weight" in own else []
    if isinstance(module, nn.RNNBase):
        return [n for n in own if RNN_WEIGHT.match(n)]
    if isinstance(module, nn.MultiheadAttention):
        return [n for n in own if n in MHA_WEIGHTS]
    return []


def _input_count(module: nn.Module) -> int:
    """How many positional inputs of ``module`` are activations to fake-quantize."""
    if isinstance(module, nn.MultiheadAttention):
        return 3
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.RNNBase)):
        return 1
    return 0


@dataclass
class Coverage:
    """One row per parameter of the model: (name, shape, what was applied, or why nothing was)."""

    rows: list[tuple[str, tuple[int, ...], str, str]] = field(default_factory=list)
    inputs: list[tuple[str, str]] = field(default_factory=list)  # (module, quantized or why not)

    def add(self, name: str, shape, applied: str, reason: str = "") -> None:
        self.rows.append((name, tuple(shape), applied, reason))

    def counts(self) -> dict[str, int]:
        """Parameter elements in total and under compression (N:M and/or quantized)."""
        out = {"total": 0, "compressed": 0}
        for _, shape, applied, _ in self.rows:
            k = int(torch.Size(shape).numel())
            out["total"] += k
            if applied:
                out["compressed"] += k
        return out

    def header(self) -> str:
        c = self.counts()
        return (f"compression coverage: {c['compressed']:,} of {c['total']:,} parameter elements "
                f"({100 * c['compressed'] / max(c['total'], 1):.1f}%) in {len(self.rows)} tensors")

    def summary(self) -> str:
        """The header, then one line per rule (what was applied, or why nothing was) with its tensors and
        elements, and one line for the layer inputs left out of fake quantization."""
        rules: dict[str, list[int]] = {}
        for _, shape, applied, reason in self.rows:
            n = rules.setdefault("; ".join(x for x in (applied, reason) if x), [0, 0])
            n[0], n[1] = n[0] + 1, n[1] + int(torch.Size(shape).numel())
        lines = [self.header()]
        lines += [f"  {t:4d} tensors {e:>12,} elements  {rule}" for rule, (t, e) in rules.items()]
        skipped = Counter(why for _, why in self.inputs if why)
        if skipped:
            lines.append(f"  {sum(skipped.values())} layer input(s) not fake-quantized: "
                         + "; ".join(f"{why} ({n})" for why, n in skipped.items()))
        return "\n".join(lines)

    def to_text(self) -> str:
        """The header, then every parameter: name, shape, what was applied, or the rule that left it out."""
        lines = [self.header()]
        width = max((len(r[0]) for r in self.rows), default=10)
        for name, shape, applied, reason in self.rows:
            lines.append(f"  {name:<{width}}  {str(list(shape)):<16} {applied or '-':<14} {reason}")
        skipped = [(m, why) for m, why in self.inputs if why]
        if skipped:
            lines.append("  inputs not fake-quantized:")
            lines.extend(f"    {m or '<model>'}: {why}" for m, why in skipped)
        return "\n".join(lines)


def compress_model(model: nn.Module, cfg: CompressConfig) -> Coverage:
    """Parametrize every known weight of ``model`` per ``cfg``; return the coverage of all parameters."""
    if cfg.sparsity is None and cfg.quant is None:
        raise ValueError("compress: give 'sparsity', 'quant' or both")
    excludes = [re.compile(p) for p in cfg.exclude]
    cov, done = Coverage(), set()
    # MultiheadAttention reads out_proj.weight inside F.multi_head_attention_forward: no input hook fires
    hookless = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    for mname, module in list(model.named_modules()):
        names = weight_names(module)  # before parametrizing moves them
        for pname in names:
            full = f"{mname}.{pname}" if mname else pname
            done.add(full)
            shape = tuple(getattr(module, pname).shape)
            rule = next((p.pattern for p in excludes if p.search(full)), None)
            if rule is not None:
                cov.add(full, shape, "", f"excluded by rule {rule!r}")
                continue
            applied, reason = _attach(module, pname, shape, cfg)
            cov.add(full, shape, applied, reason)
        if id(module) in hookless and cfg.quant is not None and cfg.quant.act_bits:
            cov.inputs.append((mname, "read inside F.multi_head_attention_forward (no hook)"))
        elif cfg.quant is not None and cfg.quant.act_bits and names:
            _attach_input_quant(module, mname, cfg.quant.act_bits, excludes, cov)
    for full, p in model.named_parameters():
        full = full.replace(".parametrizations.", ".").removesuffix(".original")
        if full in done or full.endswith(".step"):
            continue
        why = ("1-D parameter (bias, norm or scale): kept in full precision" if p.ndim < 2 else
               f"a parameter of {_owner(model, full)}, not a weight kind compress knows")
        cov.add(full, p.shape, "", why)
    return cov


def _attach(module: nn.Module, pname: str, shape: tuple[int, ...], cfg: CompressConfig) -> tuple[str, str]:
    applied, reason = [], []
    sp, q = cfg.sparsity, cfg.quant
    device = getattr(module, pname).device  # the parametrizations' masks and steps live beside the weight
    if sp is not None:
        if shape[1] % sp.m:
            reason.append(f"dense: dim 1 = {shape[1]} not divisible by M={sp.m}")
        else:
            parametrize.register_parametrization(module, pname,
                                                 NMSparse(shape, sp.n, sp.m, sp.srste_lambda).to(device))
            applied.append(f"{sp.n}:{sp.m}")
    if q is not None:
        parametrize.register_parametrization(module, pname,
                                             WeightLSQ(shape, q.weight_bits, q.per_channel).to(device))
        applied.append(f"int{q.weight_bits}")
    return "+".join(applied), "; ".join(reason)


def _attach_input_quant(module: nn.Module, mname: str, bits: int, excludes, cov: Coverage) -> None:
    n = _input_count(module)
    if isinstance(module, nn.Embedding):
        cov.inputs.append((mname, "input is token ids"))
    if n == 0:
        return
    if any(p.search(mname) for p in excludes):
        cov.inputs.append((mname, "excluded by rule"))
        return
    add_input_quantizer(module, bits)
    if isinstance(module, nn.RNNBase):
        cov.inputs.append((f"{mname} (recurrent state)", "inside the fused RNN kernel"))


def add_input_quantizer(module: nn.Module, bits: int) -> None:
    """Fake-quantize the activation inputs of ``module`` (``module.input_quant`` + a forward pre-hook).

    Turns off PyTorch's fused Transformer fast path, which reads weights directly and skips hooks.
    """
    weight = next(module.parameters(), None)
    module.input_quant = ActLSQ(bits).to(weight.device if weight is not None else "cpu")
    module.register_forward_pre_hook(functools.partial(_quantize_first, _input_count(module)))
    torch.backends.mha.set_fastpath_enabled(False)


def _quantize_first(n: int, module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the first ``n`` positional inputs through ``module.input_quant`` (tensors only)."""
    return tuple(module.input_quant(a) if isinstance(a, torch.Tensor) else a for a in args[:n]) + args[n:]


def _owner(model: nn.Module, full: str) -> str:
    mname = full.rpartition(".")[0]
    return type(model.get_submodule(mname)).__name__ if mname else type(model).__name__


def compressors(model: nn.Module, kind: type) -> dict[str, nn.Module]:
    """``{"module.weight": parametrization}`` for every parametrization of class ``kind`` in ``model``."""
    out = {}
    for mname, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for pname, plist in module.parametrizations.items():
            for p in plist:
                if isinstance(p, kind):
                    out[f"{mname}.{pname}" if mname else pname] = p
    return out


def input_quantizers(model: nn.Module) -> dict[str, ActLSQ]:
    """``{"module": ActLSQ}`` for every fake-quantized layer input."""
    return {n: m.input_quant for n, m in model.named_modules()
            if isinstance(getattr(m, "input_quant", None), ActLSQ)}


def set_state(model: nn.Module, sparsity: bool | None = None, frozen: bool | None = None,
              quant: bool | None = None, noise: float | None = None) -> None:
    """Switch parts of the compression on/off (the schedule's lever); None leaves a part as it is."""
    for p in compressors(model, NMSparse).values():
        p.enabled = p.enabled if sparsity is None else sparsity
        p.frozen = p.frozen if frozen is None else frozen
    quantizers = list(compressors(model, WeightLSQ).values()) + list(input_quantizers(model).values())
    for p in quantizers:
        p.enabled = p.enabled if quant is None else quant
        p.noise = p.noise if noise is None else noise
