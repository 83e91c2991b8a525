"""Fold a compressed model into a deployable brick, and read it back.

A compressed weight is stored in ``weights.safetensors`` as

- ``NAME.int8`` (int8 codes) + ``NAME.scale`` (float32, one per output channel, or one) when
  quantized to ≤ 8 bits, ``NAME.values`` (float32) otherwise;
- with N:M sparsity only the kept entries: dim 1 of the codes/values shrinks by N/M, and
  ``NAME.nm_index`` holds each kept entry's position (0..M−1) inside its group, two 4-bit
  positions per byte when M ≤ 16 (2:4 in int8: 0.75 bytes per weight instead of 4).

``interface.json`` gains ``compression``: the config, each weight's format, and the bits of each
fake-quantized layer input (its learned step stays in the state as ``MODULE.input_quant.step``).
``load_brick`` rebuilds the dense model, restores every weight as exactly ``code × scale`` (zeros
where pruned) and re-attaches the input quantizers, so the loaded brick computes what the
fake-quantized model computed in eval mode; ``speechkit.compress.deploy`` then swaps layers for
int8 / 2:4 kernels.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import Tensor, nn

from .apply import add_input_quantizer, compress_model, compressors, input_quantizers
from .quant import WeightLSQ, integer_codes, maxabs_step
from .sparsity import NMSparse


def pack_nm(x: Tensor, mask: Tensor, n: int, m: int) -> tuple[Tensor, Tensor]:
    """The kept entries of ``x`` (exactly n per group of m along dim 1 of ``mask``).

    → (values, positions): dim 1 scaled by n/m; positions uint8 in 0..m−1, ascending per group.
    """
    moved, mk = x.movedim(1, -1), mask.movedim(1, -1)  # (out, k…, in)
    g = mk.reshape(-1, m)  # (groups, M)
    pos = torch.arange(m, device=x.device).expand_as(g)[g].reshape(-1, n)  # (groups, N)
    vals = moved.reshape(-1, m).gather(1, pos)  # (groups, N)
    shape = (*moved.shape[:-1], moved.shape[-1] * n // m)
    return vals.reshape(shape).movedim(-1, 1), pos.to(torch.uint8).reshape(shape).movedim(-1, 1)


def unpack_nm(vals: Tensor, pos: Tensor, n: int, m: int) -> Tensor:
    """Inverse of ``pack_nm``: the dense tensor with zeros at the pruned entries."""
    v, p = vals.movedim(1, -1), pos.movedim(1, -1).long()  # (out, k…, in·n/m)
    dense = torch.zeros(*v.shape[:-1], v.shape[-1] * m // n, dtype=vals.dtype)
    dense.reshape(-1, m).scatter_(1, p.reshape(-1, n), v.reshape(-1, n))
    return dense.movedim(-1, 1)


def pack_nibbles(x: Tensor) -> Tensor:
    """Values 0..15 of any shape → uint8 (ceil(numel / 2),): two per byte, the first in the low half."""
    flat = x.reshape(-1).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return flat[0::2] | (flat[1::2] << 4)


def unpack_nibbles(packed: Tensor, shape) -> Tensor:
    """Inverse of ``pack_nibbles`` → uint8 tensor of ``shape``."""
    both = torch.stack([packed & 15, packed >> 4], dim=1).reshape(-1)  # (2·bytes,)
    return both[:torch.Size(shape).numel()].reshape(shape)


def _plan(model: nn.Module) -> dict[str, tuple]:
    """{"module.weight": (NMSparse or None, WeightLSQ or None)} for every compressed weight."""
    sparse, quant = compressors(model, NMSparse), compressors(model, WeightLSQ)
    return {k: (sparse.get(k), quant.get(k)) for k in {**sparse, **quant}}


@torch.no_grad()
def fold(model: nn.Module, cfg) -> tuple[dict[str, Tensor], dict]:
    """A compressed model → (state dict in the storage format above, interface ``compression`` entry).

    The state holds what the fake-quantized model uses in eval mode (no noise) for every weight.
    """
    was_training = model.training
    model.eval()
    plan = _plan(model)
    state, formats = {}, {}
    for name, (sp, q) in plan.items():
        mname, _, pname = name.rpartition(".")
        module = model.get_submodule(mname)
        w = getattr(module, pname).detach().float().cpu()  # the parametrized (masked, quantized) weight
        fmt = {"shape": list(w.shape)}
        if q is not None and q.enabled and q.bits <= 8:
            scale = q.step.detach().float().cpu()
            data = integer_codes(w, scale.view(-1, *[1] * (w.ndim - 1)), q.bits).to(torch.int8)
            state[f"{name}.scale"] = scale
            fmt.update(format=f"int{q.bits}", bits=q.bits)
            suffix = "int8"
        else:
            data, suffix = w, "values"
            fmt.update(format="float32")
        if sp is not None and sp.enabled:
            data, pos = pack_nm(data, sp.mask.cpu(), sp.n, sp.m)
            state[f"{name}.nm_index"] = pack_nibbles(pos) if sp.m <= 16 else pos
            fmt.update(n=sp.n, m=sp.m, format=f"{sp.n}:{sp.m}+{fmt['format']}")
        state[f"{name}.{suffix}"] = data.contiguous()
        formats[name] = fmt
    quantizers = input_quantizers(model)
    inputs = {n: q.bits for n, q in quantizers.items() if q.enabled}
    off = tuple(f"{n}.input_quant." for n in quantizers if n not in inputs)  # quantization never started
    for k, v in model.state_dict().items():
        if ".parametrizations." not in k and not k.startswith(off):
            state[k] = v.detach().cpu().contiguous()
    model.train(was_training)
    return state, {"config": asdict(cfg) if cfg is not None else None, "params": formats, "inputs": inputs}


def unfold(state: dict[str, Tensor], info: dict) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The storage format → (a plain dense state dict (``code × scale``, zeros where pruned),
    {weight name: its quantization step(s)})."""
    state, scales = dict(state), {}
    for name, fmt in info["params"].items():
        if "bits" in fmt:
            data, scale = state.pop(f"{name}.int8").float(), state.pop(f"{name}.scale")
        else:
            data, scale = state.pop(f"{name}.values"), None
        if "n" in fmt:
            pos = state.pop(f"{name}.nm_index")
            if fmt["m"] <= 16:
                pos = unpack_nibbles(pos, data.shape)
            data = unpack_nm(data, pos, fmt["n"], fmt["m"])
        if scale is not None:
            data = data * scale.view(-1, *[1] * (data.ndim - 1))
            scales[name] = scale
        state[name] = data.reshape(fmt["shape"])
    return state, scales


def mark_deployable(model: nn.Module, info: dict, scales: dict[str, Tensor]) -> None:
    """Record on each module its compressed weights' format and steps (``module.compressed[param]``)
    for the deploy runtime."""
    for name, fmt in info["params"].items():
        mname, _, pname = name.rpartition(".")
        module = model.get_submodule(mname)
        if not hasattr(module, "compressed"):
            module.compressed = {}
        module.compressed[pname] = {**fmt, **({"scale": scales[name]} if name in scales else {})}


def one_shot(model: nn.Module, cfg) -> tuple[dict[str, Tensor], dict]:
    """Post-training compression of a dense model → (folded state, ``compression`` info), no training.

    N:M by magnitude; weights quantized with per-channel (or per-tensor) max-abs steps
    (``max|w| / Q_P``); layer inputs stay in float (the deploy runtime's int8 kernels quantize them
    per batch). ``model`` is left parametrized.
    """
    if cfg.quant is not None and cfg.quant.act_bits:
        raise ValueError("one-shot export quantizes weights only: set act_bits to None")
    cov = compress_model(model, cfg)
    with torch.no_grad():
        for name, q in compressors(model, WeightLSQ).items():
            mname, _, pname = name.rpartition(".")
            q.enabled = False
            w = getattr(model.get_submodule(mname), pname)  # masked (if sparse), not quantized
            q.step.copy_(maxabs_step(w, q.bits, per_channel=q.step.numel() > 1))
            q.initialized.fill_(True)
            q.enabled = True
    state, info = fold(model, cfg)
    return state, {**info, "coverage": cov.counts(), "one_shot": True}


def load_folded(model: nn.Module, state: dict[str, Tensor], info: dict) -> nn.Module:
    """Load a folded state into a freshly built dense ``model``: dense weights (``code × scale``),
    input quantizers re-attached, each module's format recorded for ``deploy``. Raises KeyError for
    a compressed weight missing from ``state``, RuntimeError for a mismatch (``load_brick`` names
    the file)."""
    dense, scales = unfold(state, info)
    for mname, bits in info.get("inputs", {}).items():  # before loading: their steps are in the state
        add_input_quantizer(model.get_submodule(mname), bits)
    model.load_state_dict(dense)
    mark_deployable(model, info, scales)
    return model
