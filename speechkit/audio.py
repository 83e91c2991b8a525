"""The one place audio is read, written and resampled (soundfile + torchaudio)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from .errors import SpeechkitError
from .files import atomic_path

MODEL_RATE = 16000


class AudioError(SpeechkitError, RuntimeError):
    """Audio could not be used; the message names the file."""


def resample(wave: torch.Tensor, orig_rate: int, new_rate: int = MODEL_RATE) -> torch.Tensor:
    """Resample ``wave`` (..., N) from ``orig_rate`` to ``new_rate`` with torchaudio."""
    if orig_rate == new_rate:
        return wave
    return AF.resample(wave, orig_rate, new_rate)


def read_audio(path: str | Path, offset: float = 0.0, duration: float | None = None,
               rate: int = MODEL_RATE) -> torch.Tensor:
    """Read a mono float32 waveform (N,) at ``rate`` Hz; multichannel audio is averaged.

    Raises ``AudioError`` naming the file when it is missing, unreadable, or empty.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        with sf.SoundFile(str(path)) as f:
            file_rate = f.samplerate
            start = int(round(offset * file_rate))
            frames = -1 if duration is None else int(round(duration * file_rate))
            if start:
                f.seek(start)
            data = f.read(frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise AudioError(f"cannot read audio {path}: {e}") from None
    if data.shape[0] == 0:
        raise AudioError(f"audio is empty: {path} (offset={offset}, duration={duration})")
    if not np.isfinite(data).all():
        raise AudioError(f"audio contains NaN/Inf samples: {path}")
    wave = torch.from_numpy(data.mean(axis=1))
    return resample(wave, file_rate, rate)


def write_audio(path: str | Path, wave: torch.Tensor | np.ndarray, rate: int = MODEL_RATE) -> None:
    """Write a mono waveform (N,) in [-1, 1], atomically; the format follows the suffix (.flac, .wav)."""
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().cpu().numpy()
    with atomic_path(path) as tmp:  # the same suffix: soundfile picks the format from it
        sf.write(str(tmp), np.asarray(wave, dtype=np.float32), rate, subtype="PCM_16")


def audio_info(path: str | Path) -> tuple[int, int]:
    """(frames, sample rate) from the file header; ``AudioError`` names an unreadable file."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(f"cannot read audio header {path}: {e}") from None
    return info.frames, info.samplerate


CONTAINERS = {b"RIFF": "WAV", b"fLaC": "FLAC", b"OggS": "Ogg", b"ID3": "MP3",
              b"\x1aE\xdf\xa3": "Matroska/WebM"}


def read_pcm(stream, block_samples: int, name: str = "stdin"):
    """Raw 16-kHz signed 16-bit little-endian mono PCM from a binary file object → float32 blocks (N,)
    in [-1, 1] of up to ``block_samples``, until end of file.

    Raises ``AudioError`` naming ``name`` when ``stream`` is None (a closed stdin) or ends before one
    whole sample arrived, when the data starts with a container header (WAV, FLAC, Ogg, MP3, WebM: not
    raw PCM), or when it ends inside a sample (an odd number of bytes); the blocks before the error
    have been yielded.
    """
    if stream is None:  # Python's sys.stdin when file descriptor 0 is closed (`cmd <&-`)
        raise AudioError(f"no audio received on {name}: it is closed (pipe raw 16-kHz s16le mono PCM "
                         "into it, or give audio files)")
    total, carry = 0, b""
    while data := stream.read(2 * block_samples):
        if not total:
            kind = next((k for m, k in CONTAINERS.items() if data.startswith(m)), None)
            if kind:
                raise AudioError(f"{name} starts with a {kind} header, not raw PCM: pass the file as a path, "
                                 "or convert it: sox IN -t raw -r 16000 -e signed -b 16 -c 1 -")
        total += len(data)
        data = carry + data
        whole = len(data) // 2 * 2
        carry = data[whole:]
        if whole:
            yield torch.frombuffer(bytearray(data[:whole]), dtype=torch.int16).float() / 32768.0
    if total < 2:
        raise AudioError(f"no audio received on {name}: it ended after {total} bytes (expected raw 16-kHz "
                         "s16le mono PCM: arecord -f S16_LE -r 16000 -c 1 -t raw | speechkit stream BRICK -)")
    if carry:
        raise AudioError(f"{name} is truncated: it ended inside a 16-bit sample ({total} bytes; raw "
                         "s16le PCM has an even number)")
