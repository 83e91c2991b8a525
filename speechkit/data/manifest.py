"""JSONL manifests: one utterance per line, validated on load.

Every record carries an explicit ``kind`` and ``version`` so that later formats can
be told apart. Errors always name the file and the 1-based line number.

Example line::

    {"kind": "utterance", "version": 1, "id": "locale-0001", "audio": "wav/0001.flac",
     "duration": 2.31, "text": "File not found", "lang": "en",
     "translation": {"de": "Datei nicht gefunden"}, "speaker": "en-us+m3",
     "domain": "coreutils", "words": [["File", 0.05, 0.31], ...]}

Relative ``audio`` paths are resolved against the manifest's directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SpeechkitError
from ..files import atomic_write
from .lhotse_io import lhotse_kind
from .lhotse_io import records as lhotse_records

KIND = "utterance"
VERSION = 1


class ManifestError(SpeechkitError, ValueError):
    """A manifest line is malformed; the message starts with ``file:line:``."""


@dataclass
class Utterance:
    """One manifest record. ``audio`` is None for text-only records (MT, LM)."""

    id: str
    text: str
    audio: str | None = None
    offset: float = 0.0
    duration: float | None = None
    lang: str = "en"
    translation: dict[str, str] = field(default_factory=dict)
    speaker: str | None = None
    domain: str | None = None
    words: list[list] | None = None  # [[word, start_s, end_s], ...] ground-truth word times
    kind: str = KIND
    version: int = VERSION

    def to_json(self) -> str:
        d = {k: getattr(self, k) for k in _ORDER}
        return json.dumps({k: v for k, v in d.items() if v is not None}, ensure_ascii=False)


_FIELDS = {f.name: f for f in dataclasses.fields(Utterance)}
_ORDER = ["kind", "version", "id"] + [k for k in _FIELDS if k not in ("kind", "version", "id")]


def _number(x) -> bool:
    """A finite JSON number; ``true``/``false`` are not numbers here (``bool`` is an ``int`` in Python)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_types(rec: dict, where: str) -> None:
    """Every optional field has its declared type (``null`` allowed where the dataclass allows None)."""
    if "version" in rec and (not isinstance(rec["version"], int) or isinstance(rec["version"], bool)
                             or rec["version"] < 1):
        raise ManifestError(f"{where}: 'version' must be a positive integer, got {rec['version']!r}")
    dur = rec.get("duration")
    if dur is not None and (not _number(dur) or dur <= 0):
        raise ManifestError(f"{where}: 'duration' must be a positive number, got {dur!r}")
    off = rec.get("offset", 0.0)
    if not _number(off) or off < 0:
        raise ManifestError(f"{where}: 'offset' must be a non-negative number, got {off!r}")
    for key in ("kind", "lang"):
        if key in rec and not isinstance(rec[key], str):
            raise ManifestError(f"{where}: '{key}' must be a string, got {rec[key]!r}")
    for key in ("audio", "speaker", "domain"):
        if rec.get(key) is not None and not isinstance(rec[key], str):
            raise ManifestError(f"{where}: '{key}' must be a string or null, got {rec[key]!r}")
    tr = rec.get("translation", {})
    if not isinstance(tr, dict) or not all(isinstance(v, str) for v in tr.values()):
        raise ManifestError(f"{where}: 'translation' must be an object {{lang: text}} of strings, got {tr!r}")
    words = rec.get("words")
    if words is not None and not (isinstance(words, list) and all(
            isinstance(w, list) and len(w) == 3 and isinstance(w[0], str) and _number(w[1]) and _number(w[2])
            for w in words)):
        raise ManifestError(f"{where}: 'words' must be a list of [word, start_s, end_s], got {words!r:.200}")


def _check(rec: dict, where: str, require_audio: bool) -> Utterance:
    if not isinstance(rec, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    unknown = sorted(set(rec) - set(_FIELDS))
    if unknown:
        raise ManifestError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(_FIELDS)}")
    for key in ("id", "text"):
        if key not in rec:
            raise ManifestError(f"{where}: missing required key '{key}'")
    _check_types(rec, where)
    if rec.get("kind", KIND) != KIND:
        raise ManifestError(f"{where}: kind is {rec['kind']!r}, expected {KIND!r}")
    if rec.get("version", VERSION) > VERSION:
        raise ManifestError(f"{where}: version {rec['version']} is newer than supported ({VERSION})")
    if not isinstance(rec["id"], str) or not rec["id"]:
        raise ManifestError(f"{where}: 'id' must be a non-empty string, got {rec['id']!r}")
    if not isinstance(rec["text"], str):
        raise ManifestError(f"{where}: 'text' must be a string, got {rec['text']!r}")
    if not rec["text"].strip():
        raise ManifestError(f"{where}: empty transcript for utterance {rec['id']!r}")
    if require_audio and not rec.get("audio"):
        raise ManifestError(f"{where}: utterance {rec['id']!r} has no 'audio' path")
    return Utterance(**rec)


def _lines(path: Path) -> Iterator[tuple[str, str, dict]]:
    """A JSONL manifest → (where: "FILE:LINE", the line number, record) per non-blank line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                yield where, f"line {lineno}", json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{where}: invalid JSON ({e.msg})") from None


def _lhotse(path: Path) -> Iterator[tuple[str, str, dict]]:
    """A Lhotse manifest (``lhotse_io``) → (where: "FILE cut N (ID)", "cut N", record) per supervision."""
    try:
        yield from lhotse_records(path)
    except ValueError as e:
        raise ManifestError(str(e)) from None


def load_manifest(path: str | Path, require_audio: bool = False) -> list[Utterance]:
    """Read and validate a JSONL manifest, or a Lhotse cuts / supervisions manifest (``lhotse_io``: read
    through lhotse); audio paths become absolute (a speechkit manifest's relative to its folder, a Lhotse
    one's relative to the working directory, as Lhotse has them).

    Raises ``ManifestError`` naming ``path:line`` (Lhotse: ``path cut N (ID)``) for bad JSON, unknown or
    missing keys, empty transcripts, bad durations and duplicate ids; ``FileNotFoundError`` if absent.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    lhotse = lhotse_kind(path) is not None
    utts, seen = [], {}
    for where, place, rec in _lhotse(path) if lhotse else _lines(path):
        u = _check(rec, where, require_audio)
        if u.id in seen:
            raise ManifestError(f"{where}: duplicate id {u.id!r} (first on {seen[u.id]})")
        seen[u.id] = place
        if u.audio and not Path(u.audio).is_absolute():
            u.audio = str(Path(u.audio).resolve() if lhotse else (path.parent / u.audio).resolve())
        utts.append(u)
    if not utts:
        raise ManifestError(f"{path}: manifest is empty")
    return utts


def load_texts(path: str | Path) -> list[Utterance]:
    """Text-only records for language models and text adaptation: a JSONL manifest (``*.jsonl``,
    its ``text`` fields; or a Lhotse manifest) or a plain text file, one sentence per line (blank lines
    skipped).
    Ids of plain-text lines are ``<file stem>-<line number>``."""
    path = Path(path)
    if path.suffix == ".jsonl" or lhotse_kind(path) is not None:
        return load_manifest(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path}")
    with open(path, encoding="utf-8") as f:
        utts = [Utterance(f"{path.stem}-{n}", line.strip()) for n, line in enumerate(f, 1) if line.strip()]
    if not utts:
        raise ManifestError(f"{path}: no text (empty file)")
    return utts


def save_manifest(utts: list[Utterance], path: str | Path, relative_to: str | Path | None = None) -> None:
    """Write records as JSONL (atomically); audio paths are made relative to ``relative_to``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = Path(relative_to or path.parent).resolve()
    with atomic_write(path) as f:
        for u in utts:
            if u.audio and Path(u.audio).is_absolute():
                u = dataclasses.replace(u, audio=os.path.relpath(u.audio, base))
            f.write(u.to_json() + "\n")
