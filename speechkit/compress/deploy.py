"""The deploy runtime: per linear layer, the fastest correct kernel at the shapes in use.

``deploy(model, run)`` calls ``run(model)`` once to record every ``nn.Linear``'s input, then for
each layer times the candidate kernels on that very input and checks each against the exact
product of the stored weights with the float input, keeping the fastest whose relative error
‖y − y_exact‖/‖y_exact‖ is within ``tolerance`` (the layer as loaded, with its input
fake-quantizer, is always eligible: it is what training used); the layer is replaced only when
a kernel beats it. Input fake-quantizers left on layers that were not replaced
(convolutions, LSTMs, layers ``run`` did not reach; not linears that kept ``reference``) are
switched off: in inference they only cost time. Candidates:

- ``reference``: the layer as loaded (fp32 on CPU, with its input fake-quantizer if any);
- ``fp32`` (CPU): the same weights without the input fake-quantizer;
- ``int8`` (CPU): fbgemm's dynamic int8 GEMM (``quantized::linear_dynamic``) with the weight's own
  int8 codes and per-channel scales from quantization-aware training (or, with ``ptq=True``,
  per-channel max-abs scales of a float weight); activations quantized per batch;
- CUDA (``gpu_kernels``): ``dense-bf16`` (the baseline a GPU user would pick); for weights with a 2:4
  mask along K ``2:4-cusparselt`` (the weight compressed once, ``torch._cslt_compress``, and cuSPARSELt's
  algorithm searched once, at deploy time, on the layer's real input: ``torch._cslt_sparse_mm_search``;
  torch still initialises a matmul plan on the host at every call, a cost a CUDA graph's replay does not
  pay) and, on sm8x where CUTLASS's 2:4 kernels run, ``2:4-cutlass``; ``int8`` (``torch._int_mm``,
  activations quantized per row), ``fp8`` (``torch._scaled_mm`` on float8 e4m3 with row-wise scales
  for the activations and the weight's output channels; only where the device has fp8 tensor cores,
  compute capability ≥ 8.9). ``deploy(graphs=True)`` times each candidate as a CUDA graph's replay (a
  model run in CUDA graphs, ``bench --cuda-graphs``). The CUDA timings were not taken in this
  repository's sessions (no GPU was lent); the correctness check rejects any kernel that misbehaves,
  and ``bench`` prints every candidate's time and error.

The returned ``Plan`` lists, per layer, (M, K, N), every candidate's time and error, and the choice.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .quant import integer_codes, maxabs_step


class DeployedLinear(nn.Module):
    """A linear layer computed by a chosen kernel: (…, K) → (…, N)."""

    def __init__(self, kernel: str, fn: Callable[[Tensor], Tensor], out_features: int):
        super().__init__()
        self.kernel, self.fn, self.out_features = kernel, fn, out_features

    def forward(self, x: Tensor) -> Tensor:
        y = self.fn(x.reshape(-1, x.shape[-1]))  # (B·T, K) → (B·T, N)
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, out_features={self.out_features}"


def _int8_weight(layer: nn.Linear, ptq: bool) -> tuple[Tensor, Tensor] | None:
    """(int8 codes (N, K), per-channel scales (N,)) of a QAT-int8 weight, or max-abs ones with ``ptq``."""
    w = layer.weight.detach().float()
    fmt = getattr(layer, "compressed", {}).get("weight", {})
    if fmt.get("bits") == 8:
        scale = fmt["scale"].to(w.device).expand(w.shape[0])
    elif ptq:
        scale = maxabs_step(w, 8)
    else:
        return None
    return integer_codes(w, scale[:, None], 8).to(torch.int8), scale


def cpu_kernels(layer: nn.Linear, ptq: bool) -> dict[str, Callable[[Tensor], Tensor]]:
    w, b = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
    out = {"fp32": lambda x: F.linear(x, w, b)}  # the weights as stored, the input not fake-quantized
    q = _int8_weight(layer, ptq)
    if q is not None:
        codes, scale = q
        with warnings.catch_warnings():  # quantized tensors are deprecated in torch; fbgemm is not
            warnings.simplefilter("ignore")
            qw = torch.quantize_per_channel(codes.float() * scale[:, None], scale.double(),
                                            torch.zeros(len(scale), dtype=torch.long), 0, torch.qint8)
            packed = torch.ops.quantized.linear_prepack(qw, b)
        out["int8"] = lambda x: torch.ops.quantized.linear_dynamic(x.float().contiguous(), packed, False)
    return out


FP8_MAX = 448.0  # the largest float8 e4m3 value


def fp8_available(device: torch.device) -> bool:
    """fp8 tensor cores: CUDA compute capability ≥ 8.9 (Ada, Hopper and later)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def fp8_kernel(layer: nn.Linear) -> Callable[[Tensor], Tensor]:
    """x (M, K) → (M, N) with ``torch._scaled_mm`` on float8 e4m3: the weight quantized once per output
    channel, each activation row at call time, the product rescaled and returned in bf16."""
    w = layer.weight.detach().float()
    sw = (w.abs().amax(1, keepdim=True) / FP8_MAX).clamp_min(1e-12)  # (N, 1)
    wq_t = (w / sw).to(torch.float8_e4m3fn).t()  # (K, N), column-major: the layout _scaled_mm wants
    sw_t = sw.t().contiguous()  # (1, N)
    b = None if layer.bias is None else layer.bias.detach().to(torch.bfloat16)

    def fp8(x: Tensor) -> Tensor:
        sx = (x.float().abs().amax(1, keepdim=True) / FP8_MAX).clamp_min(1e-12)  # (M, 1)
        xq = (x.float() / sx).to(torch.float8_e4m3fn)
        return torch._scaled_mm(xq, wq_t, scale_a=sx, scale_b=sw_t, bias=b, out_dtype=torch.bfloat16)
    return fp8


def gpu_kernels(layer: nn.Linear, ptq: bool,
                fp8: bool | None = None) -> dict[str, Callable[[Tensor], Tensor]]:
    """The GPU candidates of ``layer`` (module docstring); ``fp8``: include the fp8 kernel (default: where
    the layer's device has fp8 tensor cores). 2:4 only on CUDA."""
    out = {}
    w, b = layer.weight.detach().bfloat16(), None if layer.bias is None else layer.bias.detach().bfloat16()
    out["dense-bf16"] = lambda x: F.linear(x.bfloat16(), w, b)
    fmt = getattr(layer, "compressed", {}).get("weight", {})
    if (fmt.get("n"), fmt.get("m")) == (2, 4) and w.is_cuda:
        out.update(sparse_kernels(w, b))
    if fp8 if fp8 is not None else fp8_available(w.device):
        out["fp8"] = fp8_kernel(layer)
    q = _int8_weight(layer, ptq)
    if q is not None:
        codes_t, scale = q[0].t(), q[1]  # (K, N) column-major, the layout cuBLASLt int8 wants

        def int8(x: Tensor) -> Tensor:
            sx = (x.float().abs().amax(1, keepdim=True) / 127).clamp_min(1e-12)  # (M, 1)
            xq = torch.round(x.float() / sx).clamp(-127, 127).to(torch.int8)
            y = torch._int_mm(xq, codes_t).float() * sx * scale  # (M, N)
            return y if b is None else y + b.float()
        out["int8"] = int8
    return out


def sparse_kernels(w: Tensor, b: Tensor | None) -> dict[str, Callable[[Tensor], Tensor]]:
    """The 2:4 candidates of a bf16 CUDA weight (N, K) with a 2:4 mask along K: ``2:4-cusparselt`` (compressed
    once; cuSPARSELt's fastest algorithm searched on the first call's input, then reused) and, on sm8x,
    ``2:4-cutlass``. A kernel that refuses the weight (shape, dtype, device) is left out."""
    out = {}
    try:
        packed, alg = torch._cslt_compress(w), []

        def cusparselt(x: Tensor) -> Tensor:  # x (M, K) → (M, N): (W xᵀ)ᵀ with the result transposed
            xt = x.bfloat16().t()
            if not alg:  # at deploy time: the algorithm for this layer's shapes, once
                alg.append(torch._cslt_sparse_mm_search(packed, xt, b, transpose_result=True))
            return torch._cslt_sparse_mm(packed, xt, b, transpose_result=True, alg_id=alg[0])
        out["2:4-cusparselt"] = cusparselt
    except (RuntimeError, ValueError):  # no cuSPARSELt, or a shape it does not take
        pass
    if torch.cuda.get_device_capability(w.device)[0] == 8:
        try:
            ws = torch.sparse.SparseSemiStructuredTensorCUTLASS.from_dense(w)
            out["2:4-cutlass"] = lambda x: F.linear(x.bfloat16(), ws, b)
        except (RuntimeError, ValueError):
            pass
    return out


@dataclass
class Plan:
    """Per layer: name, (M, K, N), {kernel: (µs, relative error)}, the chosen kernel; and the
    modules left as they were whose input fake-quantizer was switched off."""

    rows: list[dict] = field(default_factory=list)
    device: str = "cpu"
    inputs_off: list[str] = field(default_factory=list)  # modules whose input fake-quantizer was switched off

    def to_text(self) -> str:
        """One line per layer: every candidate's time (µs) / relative error, and the choice."""
        kernels = sorted({k for r in self.rows for k in r["candidates"]})
        head = f"{'layer':<36}{'M×K×N':>18}" + "".join(f"{k + ' µs/err':>20}" for k in kernels) + "  choice"
        lines = [head]
        for r in self.rows:
            cells = "".join(f"{r['candidates'][k][0]:>11.1f} / {r['candidates'][k][1]:.4f}"
                            if k in r["candidates"] else f"{'-':>20}" for k in kernels)
            lines.append(f"{r['layer'][-36:]:<36}{'×'.join(map(str, r['shape'])):>18}{cells}  {r['choice']}")
        if self.inputs_off:
            lines.append(f"input fake-quantizers switched off (float inputs): {', '.join(self.inputs_off)}")
        return "\n".join(lines)


def _graphed(fn: Callable, x: Tensor) -> Callable:
    """fn(x) captured in a CUDA graph: a call replays it (the kernels without their host-side launch and
    set-up costs, as inside a ``CudaGraphed`` encoder)."""
    side = torch.cuda.Stream(x.device)
    side.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(side):  # warm-up: lazy set-up (e.g. a 2:4 algorithm search) outside the capture
        fn(x)
    torch.cuda.current_stream(x.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(x)
    return lambda _: graph.replay()


def _time(fn: Callable, x, repeats: int, graphs: bool = False) -> float:
    """Median wall time of fn(x) in µs (CUDA synchronised); ``graphs``: of its CUDA-graph replay."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    if graphs and isinstance(x, Tensor) and x.is_cuda:
        fn = _graphed(fn, x)
    fn(x)
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        sync()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2] * 1e6


@torch.no_grad()
def deploy(model: nn.Module, run: Callable[[nn.Module], object], tolerance: float = 0.03,
           repeats: int = 20, ptq: bool = False, kernels: tuple[str, ...] | None = None,
           graphs: bool = False) -> Plan:
    """Replace each ``nn.Linear`` of ``model`` by its fastest correct kernel at the shapes ``run`` uses.

    Args:
        run: calls the model on representative input (e.g. one batch of the dev set).
        tolerance: largest relative error accepted against the exact product of the layer's stored
            weights with its float input (the layer as loaded, fake-quantized input and all, is
            always accepted).
        ptq: allow int8 for weights that were not quantization-aware trained (max-abs scales).
        kernels: restrict the candidates to these names (``reference`` always stays one).
        graphs: on CUDA, time each candidate as a CUDA graph's replay (for a model that will run in
            CUDA graphs, ``CudaGraphed``: its kernels' own cost, without launch and host set-up); a
            candidate that cannot be captured is timed eagerly.
    """
    device = next(model.parameters()).device
    inputs: dict[str, Tensor] = {}
    hooks = [m.register_forward_pre_hook(_recorder(inputs, name), prepend=True)  # before input quantizers
             for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    run(model)
    for h in hooks:
        h.remove()
    plan = Plan(device=device.type)
    for name, x in inputs.items():
        layer = model.get_submodule(name)
        ref = F.linear(x, layer.weight, layer.bias)  # exact: the stored weights on the float input
        found = (gpu_kernels if device.type == "cuda" else cpu_kernels)(layer, ptq)
        cands = {"reference": layer, **{k: f for k, f in found.items() if kernels is None or k in kernels}}
        x2 = x.reshape(-1, x.shape[-1])
        results = {}
        for k, fn in cands.items():
            try:
                y = (fn(x) if k == "reference" else fn(x2).view_as(ref)).float()
            except RuntimeError:  # the kernel refuses this shape
                continue
            err = float((y - ref.float()).norm() / ref.float().norm().clamp_min(1e-12))
            arg = x if k == "reference" else x2
            try:
                results[k] = (_time(fn, arg, repeats, graphs), err)
            except RuntimeError:  # not capturable: its eager time
                results[k] = (_time(fn, arg, repeats), err)
        ok = {k: v for k, v in results.items() if v[1] <= tolerance or k == "reference"}
        choice = min(ok, key=lambda k: ok[k][0])
        if choice != "reference":
            _replace(model, name, DeployedLinear(choice, cands[choice], layer.out_features))
        plan.rows.append({"layer": name, "shape": [x2.shape[0], x2.shape[1], layer.out_features],
                          "candidates": results, "choice": choice})
    kept = {r["layer"] for r in plan.rows if r["choice"] == "reference"}  # kept for accuracy
    for name, m in model.named_modules():  # convolutions, LSTMs, ... and layers run did not reach
        q = getattr(m, "input_quant", None)
        if q is not None and q.enabled and name not in kept:
            q.enabled = False  # float input: fake quantization only costs time outside training
            plan.inputs_off.append(name)
    return plan


def _recorder(store: dict, name: str):
    def hook(module, args):
        store.setdefault(name, args[0].detach())  # the first call's input: the shapes in use
    return hook


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
