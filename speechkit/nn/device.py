"""Where a model runs: the ``--device`` option's values, and what the host may ask the device for free.

``resolve_device("auto" | "cpu" | "cuda" | "cuda:N")`` → ``torch.device`` (auto: the first GPU when
there is one); ``may_any(mask)``: the searches' "is any set?" without stalling an accelerator;
``CudaGraphed``: an encoder replayed from CUDA graphs captured per shape bucket (at speech-model sizes
a GPU is launch-bound: one replay instead of hundreds of kernel launches).
"""

from __future__ import annotations

import bisect
import dataclasses

import torch
from torch import Tensor, nn

DEVICES = "auto, cpu, cuda or cuda:N"


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``spec`` → a device this machine has; a one-line ``ValueError`` naming the value otherwise."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"--device {spec}: not a device (use {DEVICES})") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"--device {spec}: unsupported device type (use {DEVICES})")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {spec}: CUDA is not available here (torch.cuda.is_available() is False)")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {spec}: this machine has {torch.cuda.device_count()} GPU(s) "
                         f"(cuda:0 … cuda:{torch.cuda.device_count() - 1})")
    return device


def may_any(mask: Tensor) -> bool:
    """Whether any of ``mask`` is set, as far as the host knows without waiting: the exact answer on the
    CPU (where asking costs nothing), True on an accelerator (asking would stall the host until the
    device catches up, so the work it would have skipped runs masked instead)."""
    return mask.device.type != "cpu" or bool(mask.any())


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters are; the CPU for a model with none (an onnxruntime-backed one)."""
    return next(model.parameters(), torch.zeros(0)).device


class CudaGraphed(nn.Module):
    """``module(x (B, T, F), lengths (B,))`` replayed from CUDA graphs, one per (batch, frames) bucket.

    A call pads its input up to the smallest bucket holding it (frames with zeros, extra rows with full
    length), copies it into that bucket's static input, replays the graph captured there on the first
    call, and returns the output's first B rows (a tensor, or a dataclass such as ``Encoded`` whose
    tensor fields are cut); frames past each row's length are the padding's, as in any padded batch.
    Inputs beyond the largest bucket, CPU inputs and training run eagerly. The module must not wait for
    the host inside its forward (no ``.item()``, no data-dependent shapes); attributes not found here
    are the module's.
    """

    def __init__(self, module: nn.Module, frame_buckets=(128, 256, 512, 1024, 2048, 4096),
                 batch_buckets=(1, 2, 4, 8, 16, 32, 64)):
        super().__init__()
        self.module = module
        self.frame_buckets, self.batch_buckets = sorted(frame_buckets), sorted(batch_buckets)
        self.graphs: dict = {}

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)

    def bucket(self, b: int, t: int) -> tuple[int, int] | None:
        """The (batch, frames) bucket of a (b, t) input, or None beyond the largest."""
        i, j = bisect.bisect_left(self.batch_buckets, b), bisect.bisect_left(self.frame_buckets, t)
        if i == len(self.batch_buckets) or j == len(self.frame_buckets):
            return None
        return self.batch_buckets[i], self.frame_buckets[j]

    @staticmethod
    def pad(x: Tensor, lengths: Tensor, b: int, t: int, into: tuple[Tensor, Tensor] | None = None):
        """x (B, T, F), lengths (B,) padded to (b, t): zeros past each input, rows past B of full length t
        (no empty row: attention over nothing is NaN); written ``into`` static buffers if given."""
        xs, ls = into if into is not None else (x.new_zeros(b, t, x.shape[-1]), lengths.new_full((b,), t))
        if into is not None:
            xs.zero_()
            ls.fill_(t)
        xs[: x.shape[0], : x.shape[1]].copy_(x)
        ls[: x.shape[0]].copy_(lengths)
        return xs, ls

    @staticmethod
    def rows(out, n: int):
        """The first n rows of every tensor of ``out`` (a tensor or a dataclass of tensors), copied."""
        if isinstance(out, Tensor):
            return out[:n].clone()
        cut = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
        return dataclasses.replace(out, **{k: v[:n].clone() for k, v in cut.items() if isinstance(v, Tensor)})

    def forward(self, x: Tensor, lengths: Tensor):
        key = self.bucket(*x.shape[:2])
        if not x.is_cuda or self.training or key is None:
            return self.module(x, lengths)
        key = (*key, x.dtype)
        if key not in self.graphs:
            self.graphs[key] = self._capture(*key[:2], x)
        graph, xs, ls, out = self.graphs[key]
        self.pad(x, lengths, *key[:2], into=(xs, ls))
        graph.replay()
        return self.rows(out, x.shape[0])

    @torch.no_grad()
    def _capture(self, b: int, t: int, like: Tensor):
        xs = like.new_zeros(b, t, like.shape[-1])
        ls = torch.full((b,), t, dtype=torch.long, device=like.device)
        side = torch.cuda.Stream(like.device)
        side.wait_stream(torch.cuda.current_stream(like.device))
        with torch.cuda.stream(side):  # warm-up: lazy initialisation and caches (e.g. rotary tables) first
            for _ in range(2):
                self.module(xs, ls)
        torch.cuda.current_stream(like.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.module(xs, ls)
        return graph, xs, ls, out
