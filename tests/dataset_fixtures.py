"""Tiny copies of the real datasets, in their distributed layouts (file names, folder structure,
transcript and segment formats as distributed), with espeak-ng speech. Used by tests/test_corpora.py."""

from __future__ import annotations

import gzip
from pathlib import Path

import soundfile as sf

from speechkit.corpora.librispeech import PARTS as LIBRISPEECH_PARTS
from speechkit.corpora.locale import speak

SENTENCES = ["the quick brown fox jumps over the lazy dog", "she sells sea shells by the sea shore",
             "a stitch in time saves nine", "all that glitters is not gold", "open the file and read it",
             "the early bird catches the worm", "no news is good news", "practice makes perfect",
             "time flies like an arrow", "where there is smoke there is fire"]


def say(text: str, path: Path, voice: str = "en-us", rate: int = 16000, subtype: str = "PCM_16") -> float:
    """Write espeak speech of ``text`` to ``path`` (format from the suffix); its duration in seconds."""
    wave, _ = speak(text, voice)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, rate, subtype=subtype)
    return len(wave) / rate


def make_librispeech(root: Path, parts=LIBRISPEECH_PARTS, per_chapter=2) -> Path:
    """``root/LibriSpeech/<part>/<speaker>/<chapter>/…`` as OpenSLR 12 ships it, and
    ``root/librispeech-lm-norm.txt.gz`` (OpenSLR 11)."""
    ls, k = root / "LibriSpeech", 0
    for i, part in enumerate(parts):
        for speaker, chapter in ((19 + i, 198 + i), (103 + i, 1240 + i)):
            folder = ls / part / str(speaker) / str(chapter)
            lines = []
            for n in range(per_chapter):
                uid = f"{speaker}-{chapter}-{n:04d}"
                text = SENTENCES[k % len(SENTENCES)]
                k += 1
                say(text, folder / f"{uid}.flac")
                lines.append(f"{uid} {text.upper()}")
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    (ls / "SPEAKERS.TXT").write_text(";ID  |SEX| SUBSET           |MINUTES| NAME\n"
                                     "19   | F | train-clean-100  | 25.19 | Kara\n")
    with gzip.open(root / "librispeech-lm-norm.txt.gz", "wt") as f:
        f.write("\n".join(s.upper() for s in SENTENCES * 3) + "\n")
    return ls
