"""Where a model runs: the ``--device`` option's values, and what the host may ask the device for free.

``resolve_device("auto" | "cpu" | "cuda" | "cuda:N")`` → ``torch.device`` (auto: the first GPU when
there is one); ``may_any(mask)``: the searches' "is any set?" without stalling an accelerator.
"""

from __future__ import annotations

import torch
from torch import Tensor

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
