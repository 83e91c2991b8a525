"""Front ends that reduce the frame rate of (B, T, F) features before the encoder body."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .brick import Brick


class FrameStack(Brick):
    """Stack ``stack`` consecutive frames and project: (B, T, F) → (B, T // stack, D).

    The cheapest front end on CPU: one matrix multiply per output frame. A partial
    group at the end of an utterance is dropped, so padded frames never enter a valid
    output frame.
    """

    def __init__(self, input_dim: int = 80, dim: int = 256, stack: int = 4, dropout: float = 0.1):
        super().__init__()
        self.stack = stack
        self.proj = nn.Linear(stack * input_dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return lengths // self.stack

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        b, t, f = x.shape
        t2 = t // self.stack
        x = x[:, : t2 * self.stack].reshape(b, t2, self.stack * f)  # (B, T', stack*F)
        return self.drop(self.norm(self.proj(x))), self.output_lengths(lengths)

    def forward_chunk(self, x: Tensor, pending: Tensor | None) -> tuple[Tensor, Tensor]:
        """Streaming: features (B, N, F) after the frames ``pending`` (B, R < stack, F) left over by the
        previous call → (B, (R + N) // stack, D), and the new leftover frames."""
        if pending is not None:
            x = torch.cat([pending, x], dim=1)
        t2 = x.shape[1] // self.stack
        y, _ = self.forward(x[:, : t2 * self.stack], x.new_full((x.shape[0],), t2 * self.stack))
        return y, x[:, t2 * self.stack:]


class Conv2dSubsampling(Brick):
    """Two 3×3 stride-2 convolutions (4× in time), the usual conformer front end.

    (B, T, F) → (B, T', D) with T' = ((T - 1) // 2 - 1) // 2. Slower than FrameStack
    on CPU; kept as an option and for comparison.
    """

    def __init__(self, input_dim: int = 80, dim: int = 256, channels: int = 64, dropout: float = 0.1):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, channels, 3, 2), nn.SiLU(),
                                  nn.Conv2d(channels, channels, 3, 2), nn.SiLU())
        f2 = ((input_dim - 1) // 2 - 1) // 2
        self.proj = nn.Linear(channels * f2, dim)
        self.drop = nn.Dropout(dropout)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return torch.div(torch.div(lengths - 1, 2, rounding_mode="floor") - 1, 2, rounding_mode="floor")

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        y = self.conv(x.unsqueeze(1))  # (B, C, T', F')
        b, c, t, f = y.shape
        y = self.proj(y.permute(0, 2, 1, 3).reshape(b, t, c * f))  # (B, T', C*F') → (B, T', D)
        return self.drop(y), self.output_lengths(lengths)
