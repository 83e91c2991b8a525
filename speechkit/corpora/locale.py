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
gettext cannot decode (e.g. a Latin-1 header) are skipped and listed in prepare.json's ``problems``.

Held-out domains: ``heldout`` is a tuple of catalog-name *prefixes*; the default covers
git and the whole PostgreSQL family (postgres-15, psql-15, pg_dump-15, pgscripts-15,
initdb-15, libpq5-15, plpgsql-15, ...). Their messages go to ``heldout_{train,dev,test}``;
``heldout_train`` is meant as text for LM/domain adaptation (its audio is made anyway).

Word times come from ``espeak.word_times`` (one entry per word; utterances where espeak spoke
several words as one are counted as ``details.word_event_mismatches`` in ``prepare.json``).
"""

from __future__ import annotations

import gettext
import hashlib
import json
import multiprocessing
import os
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from speechkit.audio import MODEL_RATE, AudioError, audio_info, write_audio
from speechkit.corpora.common import manifest_entry, read_summary, write_summary
from speechkit.corpora.espeak import forget_engine, speak, word_times
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
    """``{lang: {domain: {english: translation or None}}}`` and a problem line per unreadable .mo file."""
    cats: dict[str, dict[str, dict[str, str | None]]] = {}
    skipped, cleaned = [], {}  # cleaned: msgid -> English (translation-independent ones only)
    for lang in langs:
        cats[lang] = {}
        for path in sorted((locale_dir / lang / "LC_MESSAGES").glob("*.mo")):
            try:
                with open(path, "rb") as f:
                    catalog = gettext.GNUTranslations(f)._catalog
            except (OSError, UnicodeDecodeError, LookupError) as e:
                skipped.append(f"{path}: unreadable catalog ({type(e).__name__}), skipped")
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


# ----------------------------------------------------------------------------- synthesis

def voice_for(h: int) -> tuple[str, int, int]:
    """Voice name, rate and pitch from the high bits of the hash (split uses the low ones)."""
    g = h >> 64
    voice = VOICES[g % len(VOICES)] + VARIANTS[(g // 8) % len(VARIANTS)]
    rate = RATES[0] + (g >> 12) % (RATES[1] - RATES[0] + 1)
    pitch = PITCHES[0] + (g >> 24) % (PITCHES[1] - PITCHES[0] + 1)
    return voice, rate, pitch


def _worker_init() -> None:
    """Start of a synthesis pool worker (forked): one torch thread (one process per core already, and
    the parent's OpenMP pool does not survive a fork) and its own espeak-ng engine, even when the parent
    had one."""
    torch.set_num_threads(1)
    forget_engine()


def _synth_one(task: tuple) -> dict:
    """Synthesise one message, write its FLAC atomically, return its metadata."""
    uid, text, voice, rate, pitch, path = task
    wave, events = speak(text, voice, rate, pitch)
    words, merged = word_times(text, events, wave)
    write_audio(path, wave)
    return {"id": uid, "text": text, "speaker": f"{voice}/r{rate}/p{pitch}", "frames": len(wave),
            "duration": len(wave) / MODEL_RATE, "words": words, "merged": merged}


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


def write_manifests(msgs: list[Message], synth: dict, out: Path, langs: list[str]) -> dict[str, dict]:
    """All asr/mt/st manifests (non-empty ones only; stale ones removed) → their ``prepare.json`` entries
    (``{"asr/train": {"utterances": N, "hours": H}, …}``)."""
    jobs = [("asr", None, "asr")]
    for x in langs:
        jobs += [(f"mt/{x}-en", x, "mt-x-en"), (f"mt/en-{x}", x, "mt-en-x"), (f"st/en-{x}", x, "st")]
    by_split = defaultdict(list)
    for m in msgs:
        by_split[m.split].append(m)
    entries, written = {}, set()
    for sub, lang, task in jobs:
        for split in SPLITS:
            utts = _records(by_split[split], synth, out, sub, lang, task)
            if utts:
                path = out / sub / f"{split}.jsonl"
                save_manifest(utts, path)
                written.add(path.resolve())
                entries[f"{sub}/{split}"] = manifest_entry(utts)
    for top in ("asr", "mt", "st"):
        for path in (out / top).rglob("*.jsonl") if (out / top).is_dir() else []:
            if path.resolve() not in written:
                path.unlink()
    return entries


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
    """Build (or refresh) the locale corpus under ``out``; returns the prepare.json summary
    (``common.write_summary``; ``problems``: the catalogs gettext cannot read).

    ``langs`` defaults to every language of DEFAULT_LANGS with at least one catalog;
    ``heldout`` holds catalog-name prefixes; ``max_utts`` keeps the messages with the
    smallest hashes, so smaller corpora are subsets of bigger ones.

    The summary's ``details``: ``catalogs`` (``{lang: [catalog, …]}`` read), ``heldout_catalogs``,
    ``translations`` (``{lang: messages with a translation}``), ``word_event_mismatches`` (utterances
    where espeak spoke several words as one) and ``words_without_event`` (such words in all),
    ``synthesized_this_run`` (utterances spoken by this run, not reused) and ``fingerprint`` (of all
    the manifests are made of: an unchanged one skips rewriting them).
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
    old = read_summary(out) or {"manifests": {}, "details": {}}
    if old["details"].get("fingerprint") == fingerprint and all(
            (out / f"{name}.jsonl").is_file() for name in old["manifests"]):
        manifests = old["manifests"]  # same content: skip rewriting ~500k records
    else:
        manifests = write_manifests(msgs, synth, out, used)
    all_domains = sorted({d for c in cats.values() for d in c})
    params = {"max_utts": max_utts, "langs": list(langs), "heldout": list(heldout),
              "locale_dir": str(locale_dir), "voices": list(VOICES), "variants": list(VARIANTS),
              "rates": list(RATES), "pitches": list(PITCHES), "sample_rate": MODEL_RATE}
    details = {
        "catalogs": {x: sorted(c) for x, c in cats.items()},
        "heldout_catalogs": [d for d in all_domains if d.startswith(tuple(heldout))],
        "translations": {x: sum(x in m.translation for m in msgs) for x in langs},
        "word_event_mismatches": sum(synth[m.id]["merged"] > 0 for m in msgs),
        "words_without_event": sum(synth[m.id]["merged"] for m in msgs),
        "synthesized_this_run": n_new,
        "fingerprint": fingerprint,
    }
    return write_summary(out, "locale", params, manifests, skipped, details)
