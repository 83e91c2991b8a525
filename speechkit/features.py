"""Acoustic features: kaldi-compatible fbank, global CMVN and SpecAugment (torchaudio)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torchaudio.compliance.kaldi as kaldi
import torchaudio.transforms as T
from torch import Tensor, nn

from .nn.brick import Brick


@dataclass(frozen=True)
class FbankConfig:
    """Log-mel filterbank settings; stored in a brick's interface.json."""

    num_mel_bins: int = 80
    sample_rate: int = 16000
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    dither: float = 0.0

    def to_dict(self) -> dict:
        return {"kind": "fbank", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> FbankConfig:
        """The settings of ``to_dict`` (a brick's interface.json ``input``)."""
        return cls(**{k: v for k, v in d.items() if k != "kind"})


def fbank(wave: Tensor, cfg: FbankConfig = FbankConfig()) -> Tensor:
    """Waveform (N,) in [-1, 1] → log-mel features (T, F) via torchaudio's kaldi fbank."""
    if wave.numel() < cfg.sample_rate * cfg.frame_length_ms / 1000:
        raise ValueError(f"waveform of {wave.numel()} samples is shorter than one frame")
    return kaldi.fbank(
        wave.unsqueeze(0) * 32768.0,
        num_mel_bins=cfg.num_mel_bins,
        sample_frequency=cfg.sample_rate,
        frame_length=cfg.frame_length_ms,
        frame_shift=cfg.frame_shift_ms,
        dither=cfg.dither,
        energy_floor=0.0,
    )


class GlobalCMVN(nn.Module):
    """Normalise features with a global mean and standard deviation (buffers, saved with the brick).

    ``initialized`` stays False until ``set_stats`` is called, so training code can
    compute statistics from the data exactly once.
    """

    def __init__(self, dim: int = 80):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("initialized", torch.tensor(False))

    def set_stats(self, total: Tensor, total_sq: Tensor, count: int) -> None:
        """Set from accumulated sums over frames: sum (F,), sum of squares (F,), frame count."""
        mean = total / count
        var = (total_sq / count - mean**2).clamp_min(1e-8)
        self.mean.copy_(mean)
        self.std.copy_(var.sqrt())
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, F) → (B, T, F)."""
        return (x - self.mean) / self.std


class SpecAugment(Brick):
    """Frequency and time masking (torchaudio) on padded batches (B, T, F); identity in eval.

    Time masks are at most ``time_mask_ratio`` of each batch's length.
    """

    def __init__(self, freq_masks: int = 2, freq_width: int = 27, time_masks: int = 2,
                 time_width: int = 40, time_mask_ratio: float = 0.05):
        super().__init__()
        self.freq = T.FrequencyMasking(freq_width, iid_masks=True) if freq_masks else None
        self.freq_masks, self.time_masks = freq_masks, time_masks
        self.time_width, self.ratio = time_width, time_mask_ratio

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        y = x.transpose(1, 2)  # (B, F, T) as torchaudio expects
        for _ in range(self.freq_masks):
            y = self.freq(y)
        width = min(self.time_width, max(1, int(self.ratio * y.shape[-1])))
        tmask = T.TimeMasking(width, iid_masks=True)
        for _ in range(self.time_masks):
            y = tmask(y)
        return y.transpose(1, 2)

