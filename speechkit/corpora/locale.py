"""The built-in ``locale`` corpus: speech + translation data built offline.

English UI messages come from the machine's gettext catalogs
(``<locale_dir>/<lang>/LC_MESSAGES/<domain>.mo``), their translations give MT/ST pairs,
and espeak-ng (the ``espeakng-loader`` wheel, driven through ``ctypes``) speaks them with
word-level timestamps. Everything is deterministic in the SHA-1 of the normalised text:
id, split, voice, rate and pitch; so a smaller corpus (``max_utts``) is a subset of a
bigger one with identical split assignment, and reruns reuse the audio already written.

Layout under ``out``: ``audio/<id>.flac`` (16 kHz), ``asr/<split>.jsonl``,
``mt/{x}-en/``, ``mt/en-{x}/``, ``st/en-{x}/<split>.jsonl``, ``prepare.json`` and
``synth_cache.jsonl`` (per-utterance synthesis results, so reruns skip espeak).
Empty splits get no manifest file (``load_manifest`` rejects empty files).
Messages are deduplicated by normalised text (that is what the id hashes); the surface
form kept is the smallest variant in the chosen domain catalog. Catalogs Python's
gettext cannot decode (e.g. a Latin-1 header) are skipped and listed in prepare.json.

Held-out domains: ``heldout`` is a tuple of catalog-name *prefixes*; the default covers
git and the whole PostgreSQL family (postgres-15, psql-15, pg_dump-15, pgscripts-15,
initdb-15, libpq5-15, plpgsql-15, ...). Their messages go to ``heldout_{train,dev,test}``;
``heldout_train`` is meant as text for LM/domain adaptation (its audio is made anyway).

Word times: espeak's word events are mapped to the words of the text (``split_words``:
whitespace tokens minus outer punctuation) via their character position; the event's
``audio_position`` is the word start, the next word's start (or the end of the audio)
its end, pulled back over trailing low-energy 10 ms frames. A word with several events
(``PackageKit``) keeps the first. espeak speaks some phrases as one word (``of the``,
``does not``, ``too many``): words without an event of their own share the preceding
event's interval, split in proportion to their letters. So ``words`` always has one
entry per word of the text, in order; utterances with such shared intervals are counted
as ``word_event_mismatches`` in ``prepare.json``.
"""

from __future__ import annotations

import bisect
import ctypes
import gettext
import hashlib
import json
import multiprocessing
import os
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from speechkit.audio import MODEL_RATE, AudioError, audio_info, resample, write_audio
from speechkit.data.manifest import VERSION, Utterance, save_manifest
from speechkit.metrics import normalize_text

DEFAULT_LANGS = ("de", "fr", "es", "ro", "it", "pl", "sv", "ru", "pt", "nl", "cs")
DEFAULT_HELDOUT = ("git", "postgres", "psql", "pg_", "pgscripts", "initdb", "libpq", "plpgsql")
SPLITS = ("train", "dev", "test", "heldout_train", "heldout_dev", "heldout_test")
VOICES = ("en-us", "en", "en-gb-x-rp", "en-029", "en-gb-scotland")
VARIANTS = ("",) + tuple(f"+m{i}" for i in range(1, 8)) + tuple(f"+f{i}" for i in range(1, 5))
RATES = (140, 210)  # words per minute, inclusive
PITCHES = (30, 70)  # espeak pitch 0-100, inclusive

_SPEAKABLE = re.compile(r"[A-Za-z ,.'!?;:()\-]+")
_UNSPEAKABLE = re.compile(r"[^A-Za-z ,.'!?;:()\-_&\u2019\u2026\s]")
_IDENTIFIER = re.compile(r"(^|[\s'(])-+[A-Za-z]|(^|\s)\.[A-Za-z]|[A-Za-z]\.[A-Za-z]{2}")
#                          options: --help '-o'    directives: .body   files, keys: lib.so a.b.c
_BAD_TRANSLATION = re.compile(r"[%{}<>\\$\n\r\t]|\d")
_PUNCT = ",.!?;:()-'"


# ----------------------------------------------------------------------------- text

def stable_hash(text: str) -> int:
    """SHA-1 of the normalised text as an int: fixes id, split, voice and max_utts order."""
    return int(hashlib.sha1(normalize_text(text).encode()).hexdigest(), 16)


def _strip_mnemonic(s: str, translation: str | None = None) -> str:
    """Drop one accelerator marker (``_File``, ``O_pen``, ``&Open``).

    Several markers mean identifiers (``new_column_name``), which the character filter
    rejects later. A mid-word ``_`` whose word the translator copied verbatim
    (``fts_read failed``) is an identifier too and is kept.
    """
    marks = [i for i, c in enumerate(s) if c in "_&"]
    if len(marks) != 1:
        return s
    i = marks[0]
    if i + 1 >= len(s) or not s[i + 1].isalpha() or re.match(r"&\w+;", s[i:]):
        return s
    if translation is not None and i > 0 and s[i - 1].isalnum():
        word = s[s.rfind(" ", 0, i) + 1:].split(" ", 1)[0]
        if word in translation:
            return s
    return s[:i] + s[i + 1:]


def clean_english(msgid: str, msgstr: str | None = None) -> str | None:
    """The speakable form of an English msgid, or None if it should not be spoken.

    Curly apostrophes and ellipses become ASCII; only ASCII letters, spaces and
    ``, . ' ! ? ; : ( ) -`` may remain; 2-25 normalised words; no options (``--help``),
    directives (``.body``) or dotted names (``libfoo.so``, ``gpg.ssh.key``).
    """
    if _UNSPEAKABLE.search(msgid):  # cheap early exit: most msgids have %s, digits, ...
        return None
    s = msgid.replace("\u2019", "'").replace("\u2026", "...")
    s = _strip_mnemonic(s, msgstr).strip()
    if not _SPEAKABLE.fullmatch(s) or _IDENTIFIER.search(s):
        return None
    s = " ".join(s.split())
    return s if 2 <= len(normalize_text(s).split()) <= 25 else None


def clean_translation(msgstr: str) -> str | None:
    """A usable translation (mnemonic removed, whitespace squeezed) or None."""
    s = _strip_mnemonic(msgstr)
    if not s.strip() or _BAD_TRANSLATION.search(s):
        return None
    return " ".join(s.split())


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


# ----------------------------------------------------------------------------- catalogs

@dataclass
class Message:
    """One deduplicated English message and where it came from."""

    text: str
    hash: int
    domain: str
    heldout: bool
    translation: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"locale-{self.hash:040x}"[:19]

    @property
    def split(self) -> str:
        r = self.hash % 100
        name = "train" if r < 90 else "dev" if r < 95 else "test"
        return f"heldout_{name}" if self.heldout else name


def read_catalogs(locale_dir: Path, langs: Sequence[str]) -> tuple[dict, list[str]]:
    """``{lang: {domain: {english: translation or None}}}`` and the unreadable .mo files."""
    cats: dict[str, dict[str, dict[str, str | None]]] = {}
    skipped, cleaned = [], {}  # cleaned: msgid -> English (translation-independent ones only)
    for lang in langs:
        cats[lang] = {}
        for path in sorted((locale_dir / lang / "LC_MESSAGES").glob("*.mo")):
            try:
                with open(path, "rb") as f:
                    catalog = gettext.GNUTranslations(f)._catalog
            except (OSError, UnicodeDecodeError, LookupError) as e:
                skipped.append(f"{path} ({type(e).__name__})")
                continue
            entries = {}
            for k, v in catalog.items():
                if isinstance(k, str) and k and "\x04" not in k and isinstance(v, str):
                    en = cleaned[k] if k in cleaned else clean_english(k, v)
                    if "_" not in k:
                        cleaned[k] = en
                    if en is not None:
                        entries[en] = clean_translation(v)
            cats[lang][path.stem] = entries
    return cats, skipped


def collect_messages(cats: dict, heldout: Sequence[str]) -> list[Message]:
    """Deduplicate by normalised English text and pick domain, surface form, translations.

    Domain: the first held-out catalog (sorted) containing it, else the first catalog.
    Translation: from the domain's catalog in that language if valid, else the first
    catalog (sorted) with a valid one.
    """
    occ = defaultdict(list)  # norm -> [(domain, lang, text, translation)]
    for lang, domains in cats.items():
        for dom, entries in domains.items():
            for en, tr in entries.items():
                occ[normalize_text(en)].append((dom, lang, en, tr))
    msgs, seen = [], {}
    for rows in occ.values():
        doms = sorted({r[0] for r in rows})
        held = [d for d in doms if d.startswith(tuple(heldout))]
        dom = (held or doms)[0]
        text = min(r[2] for r in rows if r[0] == dom)
        m = Message(text, stable_hash(text), dom, bool(held))
        for _, lang, _, tr in sorted(rows, key=lambda r: (r[0] != dom, r[0], r[2] != text, r[2])):
            if tr is not None and lang not in m.translation:
                m.translation[lang] = tr
        m.translation = dict(sorted(m.translation.items()))
        if m.id in seen:
            raise RuntimeError(f"id collision {m.id}: {seen[m.id]!r} vs {text!r}")
        seen[m.id] = text
        msgs.append(m)
    return sorted(msgs, key=lambda m: m.hash)


# ----------------------------------------------------------------------------- espeak

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


def voice_for(h: int) -> tuple[str, int, int]:
    """Voice name, rate and pitch from the high bits of the hash (split uses the low ones)."""
    g = h >> 64
    voice = VOICES[g % len(VOICES)] + VARIANTS[(g // 8) % len(VARIANTS)]
    rate = RATES[0] + (g >> 12) % (RATES[1] - RATES[0] + 1)
    pitch = PITCHES[0] + (g >> 24) % (PITCHES[1] - PITCHES[0] + 1)
    return voice, rate, pitch


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


def _worker_init() -> None:
    """Start of a synthesis pool worker (forked): one torch thread (one process per core already, and
    the parent's OpenMP pool does not survive a fork) and its own espeak-ng engine, even when the parent
    had one."""
    global _ENGINE
    torch.set_num_threads(1)
    _ENGINE = None


def _synth_one(task: tuple) -> dict:
    """Synthesise one message, write its FLAC atomically, return its metadata."""
    uid, text, voice, rate, pitch, path = task
    wave, events = speak(text, voice, rate, pitch)
    words, merged = word_times(text, events, wave)
    tmp = Path(path).with_name(f"{uid}.tmp.flac")
    write_audio(tmp, wave)
    os.replace(tmp, path)
    return {"id": uid, "text": text, "speaker": f"{voice}/r{rate}/p{pitch}", "frames": len(wave),
            "duration": len(wave) / MODEL_RATE, "words": words, "merged": merged}


# ----------------------------------------------------------------------------- synthesis

def _load_cache(path: Path, msgs: list[Message], audio_dir: Path) -> dict[str, dict]:
    """Cached results whose text and speaker still match and whose FLAC header is sane."""
    cache = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                cache[rec["id"]] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by an interrupted run
    valid = {}
    for m in msgs:
        rec = cache.get(m.id)
        voice, rate, pitch = voice_for(m.hash)
        if not rec or rec.get("text") != m.text or rec.get("speaker") != f"{voice}/r{rate}/p{pitch}":
            continue
        try:
            header = audio_info(audio_dir / f"{m.id}.flac")
        except AudioError:
            continue
        if header == (rec["frames"], MODEL_RATE):
            valid[m.id] = rec
    return valid


def synthesize(msgs: list[Message], out: Path, workers: int, progress: bool) -> tuple[dict, int]:
    """Audio for every message (reusing valid cached files); returns ({id: meta}, n_new)."""
    audio_dir, cache_path = out / "audio", out / "synth_cache.jsonl"
    audio_dir.mkdir(parents=True, exist_ok=True)
    done = _load_cache(cache_path, msgs, audio_dir)
    tasks = [(m.id, m.text, *voice_for(m.hash), str(audio_dir / f"{m.id}.flac"))
             for m in msgs if m.id not in done]
    if tasks:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc="locale: espeak", unit="utt", file=sys.stderr,
                   disable=not progress, mininterval=3)
        with open(cache_path, "a", encoding="utf-8") as cache:
            if workers <= 1 or len(tasks) < 8:
                results = map(_synth_one, tasks)
                pool = None
            else:
                pool = multiprocessing.get_context("fork").Pool(workers, initializer=_worker_init)
                results = pool.imap_unordered(_synth_one, tasks, chunksize=16)
            try:
                for rec in results:
                    cache.write(json.dumps(rec) + "\n")
                    done[rec["id"]] = rec
                    bar.update()
            finally:
                if pool is not None:
                    pool.terminate()
                bar.close()
    return done, len(tasks)


# ----------------------------------------------------------------------------- manifests

def _records(msgs: list[Message], synth: dict, out: Path, sub: str, lang: str | None,
             task: str) -> list[Utterance]:
    """Utterances for one manifest directory ``out/sub``; audio paths relative to it."""
    rel = os.path.relpath(out / "audio", out / sub)
    utts = []
    for m in msgs:
        if task != "asr" and lang not in m.translation:
            continue
        tr = m.translation if task == "asr" else {lang: m.translation[lang]}
        if task == "mt-x-en":
            utts.append(Utterance(m.id, tr[lang], lang=lang, translation={"en": m.text}, domain=m.domain))
        elif task == "mt-en-x":
            utts.append(Utterance(m.id, m.text, translation=tr, domain=m.domain))
        else:
            s = synth[m.id]
            utts.append(Utterance(m.id, m.text, f"{rel}/{m.id}.flac", duration=s["duration"],
                                  translation=tr, speaker=s["speaker"], domain=m.domain, words=s["words"]))
    return utts


def write_manifests(msgs: list[Message], synth: dict, out: Path, langs: list[str]) -> dict:
    """All asr/mt/st manifests (non-empty ones only; stale ones removed) -> counts."""
    jobs = [("asr", None, "asr")]
    for x in langs:
        jobs += [(f"mt/{x}-en", x, "mt-x-en"), (f"mt/en-{x}", x, "mt-en-x"), (f"st/en-{x}", x, "st")]
    by_split = defaultdict(list)
    for m in msgs:
        by_split[m.split].append(m)
    counts, written = {}, set()
    for sub, lang, task in jobs:
        counts[sub] = {}
        for split in SPLITS:
            utts = _records(by_split[split], synth, out, sub, lang, task)
            counts[sub][split] = len(utts)
            if utts:
                path = out / sub / f"{split}.jsonl"
                save_manifest(utts, path)
                written.add(path.resolve())
    for top in ("asr", "mt", "st"):
        for path in (out / top).rglob("*.jsonl") if (out / top).is_dir() else []:
            if path.resolve() not in written:
                path.unlink()
    return counts


def _fingerprint(msgs: list[Message], synth: dict, langs: list[str]) -> str:
    """SHA-1 of everything the manifests are made of, to skip rewriting identical ones."""
    rows = [(m.id, m.text, m.domain, m.split, m.translation, synth[m.id]) for m in msgs]
    return hashlib.sha1(json.dumps([VERSION, langs, rows]).encode()).hexdigest()


def _languages(locale_dir: Path, langs: Sequence[str] | None) -> list[str]:
    """The requested languages (default: those of DEFAULT_LANGS with catalogs); all must exist."""
    def has_mo(x: str) -> bool:
        return any((locale_dir / x / "LC_MESSAGES").glob("*.mo"))

    if langs is None:
        langs = [x for x in DEFAULT_LANGS if has_mo(x)]
        if not langs:
            raise FileNotFoundError(f"no gettext catalogs for {', '.join(DEFAULT_LANGS)} under "
                                    f"{locale_dir} (expected <lang>/LC_MESSAGES/*.mo)")
    missing = [x for x in langs if not has_mo(x)]
    if missing or not langs:
        raise FileNotFoundError(f"no gettext catalogs for {missing} under {locale_dir}")
    return list(langs)


def prepare_locale(out: str | Path = "data/locale", max_utts: int | None = None,
                   langs: Sequence[str] | None = None, heldout: Sequence[str] = DEFAULT_HELDOUT,
                   workers: int | None = None, locale_dir: str | Path = "/usr/share/locale",
                   progress: bool = True) -> dict:
    """Build (or refresh) the locale corpus under ``out``; returns the prepare.json summary.

    ``langs`` defaults to every language of DEFAULT_LANGS with at least one catalog;
    ``heldout`` holds catalog-name prefixes; ``max_utts`` keeps the messages with the
    smallest hashes, so smaller corpora are subsets of bigger ones.
    """
    out, locale_dir = Path(out), Path(locale_dir)
    langs = _languages(locale_dir, langs)
    cats, skipped = read_catalogs(locale_dir, langs)
    msgs = collect_messages(cats, heldout)
    if not msgs:
        raise RuntimeError(f"no speakable messages in the {langs} catalogs under {locale_dir}")
    if max_utts is not None:
        msgs = msgs[:max_utts]
    synth, n_new = synthesize(msgs, out, workers or os.cpu_count() or 1, progress)
    used = [x for x in langs if any(x in m.translation for m in msgs)]
    fingerprint = _fingerprint(msgs, synth, used)
    old = json.loads((out / "prepare.json").read_text()) if (out / "prepare.json").is_file() else {}
    if old.get("fingerprint") == fingerprint and all(
            (out / sub / f"{split}.jsonl").is_file()
            for sub, c in old["counts"].items() for split, n in c.items() if n):
        counts = old["counts"]  # same content: skip rewriting ~500k records
    else:
        counts = write_manifests(msgs, synth, out, used)
    seconds = Counter()
    for m in msgs:
        seconds[m.split] += synth[m.id]["duration"]
    all_domains = sorted({d for c in cats.values() for d in c})
    summary = {
        "params": {"max_utts": max_utts, "langs": list(langs), "heldout": list(heldout),
                   "locale_dir": str(locale_dir), "voices": list(VOICES), "variants": list(VARIANTS),
                   "rates": list(RATES), "pitches": list(PITCHES), "sample_rate": MODEL_RATE},
        "catalogs": {x: sorted(c) for x, c in cats.items()},
        "heldout_catalogs": [d for d in all_domains if d.startswith(tuple(heldout))],
        "skipped_catalogs": skipped,
        "utterances": len(msgs),
        "counts": counts,
        "translations": {x: sum(x in m.translation for m in msgs) for x in langs},
        "hours": {s: round(seconds[s] / 3600, 4) for s in SPLITS},
        "total_hours": round(sum(seconds.values()) / 3600, 4),
        "word_event_mismatches": sum(synth[m.id]["merged"] > 0 for m in msgs),
        "words_without_event": sum(synth[m.id]["merged"] for m in msgs),
        "synthesized_this_run": n_new,
        "fingerprint": fingerprint,
    }
    tmp = out / "prepare.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(out / "prepare.json")
    return summary
