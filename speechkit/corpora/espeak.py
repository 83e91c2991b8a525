"""espeak-ng speech with word times, through ``ctypes`` (the ``espeakng-loader`` wheel: no system
package, nothing downloaded). Builds the ``locale`` corpus and the tests' dataset fixtures.

Word times: espeak's word events are mapped to the words of the text (``split_words``:
whitespace tokens minus outer punctuation) via their character position; the event's
``audio_position`` is the word start, the next word's start (or the end of the audio)
its end, pulled back over trailing low-energy 10 ms frames. A word with several events
(``PackageKit``) keeps the first. espeak speaks some phrases as one word (``of the``,
``does not``, ``too many``): words without an event of their own share the preceding
event's interval, split in proportion to their letters. So ``word_times`` gives one
entry per word of the text, in order, and counts the words that shared an interval.
"""

from __future__ import annotations

import bisect
import ctypes
import re
from pathlib import Path

import numpy as np
import torch

from speechkit.audio import MODEL_RATE, resample

_PUNCT = ",.!?;:()-'"


def split_words(text: str) -> list[tuple[int, int]]:
    """Character spans of the words: whitespace tokens minus outer punctuation, with letters."""
    spans = []
    for m in re.finditer(r"\S+", text):
        tok = m.group()
        a = len(tok) - len(tok.lstrip(_PUNCT))
        b = len(tok.rstrip(_PUNCT))
        if a < b and any(c.isalpha() for c in tok[a:b]):
            spans.append((m.start() + a, m.start() + b))
    return spans


class _Event(ctypes.Structure):
    """``espeak_EVENT`` from espeak-ng's speak_lib.h."""

    class _Id(ctypes.Union):
        _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _Id)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))
_SYNCHRONOUS, _DONT_EXIT, _POS_CHARACTER, _CHARS_UTF8 = 2, 0x8000, 1, 1
_EVENT_END_OF_LIST, _EVENT_WORD, _RATE, _PITCH = 0, 1, 1, 3


class Espeak:
    """One espeak-ng instance (one per process): text -> (int16 samples, word events)."""

    def __init__(self):
        import espeakng_loader

        lib_path = espeakng_loader.get_library_path()
        data = str(Path(lib_path).parent / "espeak-ng-data")
        try:
            data = espeakng_loader.get_data_path()
            self.lib = lib = ctypes.CDLL(lib_path)
            lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            self.rate = lib.espeak_Initialize(_SYNCHRONOUS, 500, data.encode(), _DONT_EXIT)
        except (OSError, RuntimeError) as e:
            raise RuntimeError(f"espeak-ng failed to load (library {lib_path}, data {data}): {e}") from None
        if self.rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise with data path {data}")
        self.data = data
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self._callback = _CALLBACK(self._on_audio)  # keep a reference: espeak holds the pointer
        lib.espeak_SetSynthCallback(self._callback)
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int]] = []

    def _on_audio(self, wav, n, events) -> int:
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
        i = 0
        while events[i].type != _EVENT_END_OF_LIST:
            if events[i].type == _EVENT_WORD:
                self._events.append((events[i].text_position, events[i].audio_position))
            i += 1
        return 0

    def synth(self, text: str, voice: str, rate: int, pitch: int) -> tuple[np.ndarray, list]:
        """Samples at ``self.rate`` and ``[(1-based char position, ms), ...]`` word events."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"espeak-ng voice {voice!r} not found in {self.data}")
        self.lib.espeak_SetParameter(_RATE, rate, 0)
        self.lib.espeak_SetParameter(_PITCH, pitch, 0)
        self._chunks, self._events = [], []
        raw = text.encode() + b"\0"
        err = self.lib.espeak_Synth(raw, len(raw), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        if err != 0 or not self._chunks:
            raise RuntimeError(f"espeak-ng failed (error {err}) on {text!r} with voice {voice}")
        return np.concatenate(self._chunks), self._events


_HOP = MODEL_RATE // 100  # 10 ms


def _frame_rms(wave: np.ndarray) -> np.ndarray:
    """RMS of each whole 10 ms frame of ``wave`` (a partial last frame is ignored)."""
    n = len(wave) // _HOP
    return np.sqrt((wave[: n * _HOP].reshape(n, _HOP) ** 2).mean(axis=1))


def _trim_end(wave: np.ndarray, start: float, end: float, threshold: float) -> float:
    """Move ``end`` back to the last 10 ms frame in [start, end] whose RMS exceeds threshold."""
    rms = _frame_rms(wave[int(start * MODEL_RATE):int(end * MODEL_RATE)])
    if len(rms) == 0:
        return end
    loud = np.flatnonzero(rms > threshold)
    last = loud[-1] + 1 if len(loud) else 1
    return min(end, start + last * _HOP / MODEL_RATE)


def word_times(text: str, events: list, wave: np.ndarray) -> tuple[list[list], int]:
    """``[[word, start_s, end_s], ...]`` for every word of ``split_words(text)``.

    Also returns how many words espeak gave no event of their own (they were timed by
    splitting the event's interval in proportion to letters).
    """
    spans = split_words(text)
    duration = len(wave) / MODEL_RATE
    last_ms = int(duration * 1000) / 1000  # rounded times never pass the end of the audio
    ends = [b for _, b in spans]
    starts: dict[int, float] = {}
    for pos, ms in events:
        i = bisect.bisect_right(ends, pos - 1)  # the word containing or following the position
        if i < len(spans) and i not in starts:
            starts[i] = min(max(ms / 1000, 0.0), duration)
    heads = sorted(starts) or [0]
    heads[0] = 0  # words before the first event join the first group, which starts at 0
    starts[0] = starts.get(0, 0.0)
    rms = _frame_rms(wave)
    peak = rms.max() if len(rms) else 0.0
    words, prev = [], 0.0
    for a, nxt in zip(heads, heads[1:] + [len(spans)]):
        start = max(starts[a], prev)
        end = max(starts[nxt], start) if nxt < len(spans) else duration
        trimmed = _trim_end(wave, start, end, max(0.01 * peak, 1e-4))
        end = trimmed if trimmed > start else min(end, start + 0.01)
        letters = [sum(c.isalpha() for c in text[x:y]) for x, y in spans[a:nxt]]
        t = start
        for (x, y), k in zip(spans[a:nxt], letters):
            t2 = t + (end - start) * k / sum(letters)
            words.append([text[x:y], min(round(t, 3), last_ms), min(round(t2, 3), last_ms)])
            t = t2
        prev = start
    return words, len(spans) - len(heads)


_ENGINE: Espeak | None = None


def speak(text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50) -> tuple[np.ndarray, list]:
    """espeak-ng speech of ``text``: float32 samples (N,) at 16 kHz and its word events (this process's
    engine; also how the tests write dataset fixtures)."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = Espeak()
    samples, events = _ENGINE.synth(text, voice, rate, pitch)
    wave = resample(torch.from_numpy(samples.astype(np.float32) / 32768), _ENGINE.rate, MODEL_RATE)
    return wave.clamp(-1, 1).numpy(), events


def forget_engine() -> None:
    """Drop this process's engine (a forked worker must start its own: the parent's does not survive)."""
    global _ENGINE
    _ENGINE = None
