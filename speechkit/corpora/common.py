"""What every dataset preparation shares (``speechkit prepare <corpus> --root PATH``): checking the
distributed layout, audio headers, writing manifests only when they change, validating what was
written, and the ``prepare.json`` summary (``write_summary`` holds its one schema, for every corpus).
Nothing is downloaded: a missing part of the layout is an error that says where the dataset comes from
and how its folder must look.
"""

from __future__ import annotations

import filecmp
import gzip
import html
import json
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from ..audio import AudioError, audio_info
from ..data.manifest import Utterance, load_manifest
from ..errors import SpeechkitError
from ..files import atomic_path, write_text
from ..metrics import normalize_text


class LayoutError(SpeechkitError, FileNotFoundError):
    """The dataset folder is not in its distributed layout (the message says what is missing, where the
    data comes from, and the expected tree)."""


class PrepareError(SpeechkitError, ValueError):
    """The dataset has bad entries (missing or unreadable audio, empty transcripts, segments past the end
    of their audio); the message lists them by file."""


@dataclass(frozen=True)
class Corpus:
    """How to obtain a dataset and how its folder must look (shown in every layout error)."""

    name: str
    source: str  # where to get it (nothing is downloaded here)
    layout: str  # the expected tree under --root

    def require(self, path: Path, what: str) -> Path:
        """``path`` if it exists, else a ``LayoutError`` naming it."""
        if not path.exists():
            raise self.error(f"{what} not found: {path}")
        return path

    def find(self, root: Path, name: str) -> Path:
        """The one file called ``name`` anywhere under ``root`` (archives unpack to varying depths)."""
        hits = sorted(root.rglob(name))
        if not hits:
            raise self.error(f"{name} not found under {root}")
        if len(hits) > 1:
            shown = ", ".join(map(str, hits[:3]))
            raise self.error(f"{name} found {len(hits)} times under {root} ({shown}): point --root at one")
        return hits[0]

    def error(self, message: str) -> LayoutError:
        return LayoutError(f"{self.name}: {message}\n{self.help()}")

    def help(self) -> str:
        return (f"{self.name} is not downloaded by speechkit: get it from {self.source} and pass the "
                f"folder with --root. Expected layout:\n{self.layout}")


def read_lines(path: Path, encoding: str = "utf-8") -> list[str]:
    """The lines of a text file (a ``PrepareError`` naming it when it is not valid ``encoding``)."""
    try:
        return path.read_text(encoding=encoding).splitlines()
    except UnicodeDecodeError as e:
        raise PrepareError(f"{path}: not {encoding} text ({e})") from None


def read_parallel(src: Path, tgt: Path) -> list[tuple[str, str]]:
    """Line-aligned sentence pairs of two text files (a ``PrepareError`` naming both when the line
    counts differ)."""
    a, b = read_lines(src), read_lines(tgt)
    if len(a) != len(b):
        raise PrepareError(f"{src} has {len(a)} lines but {tgt} has {len(b)}: the files are not parallel")
    return list(zip(a, b))


SEG = re.compile(r"<seg[^>]*>(.*?)</seg>", re.S)


def read_segs(path: Path) -> list[str]:
    """The ``<seg …>text</seg>`` contents of an IWSLT/WMT xml or sgm file, in order, whitespace-trimmed
    and with XML entities unescaped."""
    segs = [html.unescape(m.group(1)).strip() for m in SEG.finditer("\n".join(read_lines(path)))]
    if not segs:
        raise PrepareError(f"{path}: no <seg> elements")
    return segs


def parallel_segs(src: Path, tgt: Path) -> list[tuple[str, str]]:
    """Aligned ``<seg>`` pairs of a source and a reference file (counts must match)."""
    a, b = read_segs(src), read_segs(tgt)
    if len(a) != len(b):
        raise PrepareError(f"{src} has {len(a)} segments but {tgt} has {len(b)}")
    return list(zip(a, b))


def translation_manifests(splits: dict[str, list[tuple[str, str, str]]], src: str, tgt: str, domain: str,
                          source: Path) -> tuple[dict[str, list[Utterance]], list[str]]:
    """Text-only MT manifests ``mt/<src>-<tgt>/<split>`` from (id, source sentence, target sentence) per
    split, empty pairs left out and listed."""
    manifests, problems = {}, []
    for split, items in splits.items():
        utts = [Utterance(uid, a, lang=src, translation={tgt: b}, domain=domain) for uid, a, b in items]
        manifests[f"mt/{src}-{tgt}/{split}"], bad = drop_empty(utts, f"{source} ({split})")
        problems += bad
    return manifests, problems


def open_text(path: Path):
    """A text file for reading, gzipped (``.gz``) or not."""
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def check_audio(utts: list[Utterance], workers: int | None = None) -> tuple[list[Utterance], list[str]]:
    """Fill in missing durations from the audio headers and check every utterance's audio (``workers``
    threads; None: one per CPU): (the good utterances, a problem per bad one: missing or unreadable
    file, segment past the end)."""
    def one(u: Utterance) -> tuple[Utterance | None, str | None]:
        if not Path(u.audio).is_file():
            return None, f"{u.id}: audio file missing: {u.audio}"
        try:
            frames, rate = audio_info(u.audio)
        except AudioError as e:
            return None, f"{u.id}: {e}"
        total = frames / rate
        if u.duration is None:
            return (replace(u, duration=round(total - u.offset, 3)), None) if total > u.offset else \
                (None, f"{u.id}: audio {u.audio} is empty")
        if u.offset + u.duration > total + 0.05:
            return None, (f"{u.id}: segment {u.offset:.2f}+{u.duration:.2f} s ends after its audio "
                          f"{u.audio} ({total:.2f} s)")
        return u, None

    with ThreadPoolExecutor(max(1, workers or os.cpu_count() or 1)) as pool:
        results = list(pool.map(one, utts, chunksize=64))
    return [u for u, _ in results if u is not None], [p for _, p in results if p is not None]


def drop_empty(utts: Iterable[Utterance], source: str) -> tuple[list[Utterance], list[str]]:
    """Utterances whose transcript (and every translation) is non-empty after normalisation, and a
    problem line per dropped one."""
    keep, problems = [], []
    for u in utts:
        texts = (("transcript" if u.audio is not None else "source text", u.text), *u.translation.items())
        empty = [k for k, t in texts if not normalize_text(t or "")]
        if empty:
            problems.append(f"{source}: {u.id}: empty {' and '.join(empty)} after normalisation ({u.text!r})")
        else:
            keep.append(u)
    return keep, problems


def usable(utts: Iterable[Utterance], source: str,
           workers: int | None = None) -> tuple[list[Utterance], list[str]]:
    """The utterances with non-empty texts (``drop_empty``) and good audio (``check_audio``), and a
    problem per one left out."""
    utts, empty = drop_empty(utts, source)
    utts, bad = check_audio(utts, workers)
    return utts, empty + bad


def listing(items: list, limit: int = 20) -> str:
    """``items`` one per indented line, the first ``limit`` of them and how many more."""
    more = f"\n  … and {len(items) - limit} more" if len(items) > limit else ""
    return "  " + "\n  ".join(map(str, items[:limit])) + more


def write_lines_if_changed(path: Path, lines: Iterable[str]) -> int:
    """Stream ``lines`` to ``path`` (one per line) unless it holds exactly that already (LM corpora are
    too big to hold in memory); returns how many lines."""
    n = 0
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")
                n += 1
        if path.is_file() and filecmp.cmp(tmp, path, shallow=False):
            tmp.unlink()  # the same bytes: keep the file (and its time stamp) as it is
    return n


def write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` atomically unless it already holds exactly that; True if written."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    write_text(path, text)
    return True


PREPARE_VERSION = 1  # of the prepare.json schema (``write_summary``)


def write_summary(out: Path, corpus: str, params: dict, manifests: dict[str, dict], problems: list[str],
                  details: dict | None = None) -> dict:
    """Write ``out/prepare.json``, the one summary every preparation leaves (atomically, and only when it
    changes), and return it. Its keys (schema ``PREPARE_VERSION``):

    - ``version``: ``PREPARE_VERSION``; a reader meeting another one treats the file as absent;
    - ``corpus``: its name (``Corpus.name``, e.g. ``LibriSpeech``; ``locale``);
    - ``params``: the options the preparation ran with (root, langs, max_utts, …);
    - ``manifests``: ``{name: {"utterances": N, "hours": H}}`` for each ``out/<name>.jsonl`` written
      (``manifest_entry``), e.g. ``asr/train``, ``st/en-de/dev``; H is 0 for text-only manifests;
    - ``problems``: one line per input left out (bad audio, empty texts, unreadable catalogs), [] if none;
    - ``details``: what only this corpus has, described by its ``prepare_<corpus>`` docstring (e.g. the
      ``lm`` text of librispeech and tedlium3, locale's catalogs and synthesis counts); {} if nothing.
    """
    summary = {"version": PREPARE_VERSION, "corpus": corpus, "params": params, "manifests": manifests,
               "problems": problems, "details": details or {}}
    write_if_changed(out / "prepare.json", json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return summary


def read_summary(out: Path) -> dict | None:
    """The ``out/prepare.json`` of an earlier run, or None (absent, unreadable or another schema)."""
    try:
        summary = json.loads((out / "prepare.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if summary.get("version") == PREPARE_VERSION else None


def manifest_entry(utts: Iterable[Utterance]) -> dict:
    """A manifest's line in ``prepare.json``: ``{"utterances": N, "hours": H}`` (H from the durations)."""
    utts = list(utts)
    return {"utterances": len(utts), "hours": round(sum(u.duration or 0.0 for u in utts) / 3600, 3)}


def finish(out: Path, corpus: Corpus, manifests: dict[str, list[Utterance]], problems: list[str],
           params: dict, skip_bad: bool = False, details: dict | None = None) -> dict:
    """Write ``out/<name>.jsonl`` for each manifest (only when changed; audio paths relative to it), read
    each back to validate it, and write ``out/prepare.json`` (``write_summary``). Bad entries raise a
    ``PrepareError`` listing them, unless ``skip_bad`` (then they are left out and listed). Returns the
    summary plus ``written``: the manifest files this run changed (not in prepare.json)."""
    if problems and not skip_bad:
        raise PrepareError(f"{corpus.name}: {len(problems)} bad entr{'y' if len(problems) == 1 else 'ies'} "
                           f"(rerun with --skip-bad to leave them out):\n{listing(problems)}")
    entries, written = {}, []
    for name, utts in manifests.items():
        path = out / f"{name}.jsonl"
        if not utts:
            raise PrepareError(f"{corpus.name}: no usable utterances for {path}")
        base = path.parent.resolve()
        lines = [replace(u, audio=_relative(u.audio, base)).to_json() for u in utts]
        if write_if_changed(path, "\n".join(lines) + "\n"):
            written.append(str(path))
        back = load_manifest(path, require_audio=utts[0].audio is not None)
        if len(back) != len(utts):  # pragma: no cover - a write that went wrong
            raise PrepareError(f"{path}: wrote {len(utts)} utterances, read back {len(back)}")
        entries[name] = manifest_entry(back)
    return {**write_summary(out, corpus.name, params, entries, problems, details), "written": written}


def _relative(audio: str | None, base: Path) -> str | None:
    return None if audio is None else os.path.relpath(Path(audio).resolve(), base)
