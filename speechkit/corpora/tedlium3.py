"""TED-LIUM release 3 (OpenSLR 51) → ASR manifests and LM text, from the distributed layout.

``speechkit prepare tedlium3 --root /data/TEDLIUM_release-3 --out data/tedlium3`` writes
``asr/{train,dev,test}.jsonl`` from the *legacy* distribution (dev and test as in TED-LIUM 1 and 2),
one utterance per STM segment: ``audio`` the talk's ``.sph``, ``offset``/``duration`` the segment in
seconds, ``speaker`` the STM speaker. It also writes ``lm/train.txt``: the cleaned training transcripts
followed, when the release's LM corpus (``LM/*.en.gz``) is there, by its first ``lm_sentences``
sentences (2M by default, shared evenly between its files): the text of the LM trained for fusion
(recipes/tedlium3).

Transcripts are cleaned as the Kaldi / ESPnet recipes do: segments marked
``ignore_time_segment_in_scoring`` are left out, ``<unk>``, ``<sil>`` and other ``<…>`` / ``{…}`` /
``[…]`` non-speech tokens, pronunciation variants (``the(2)``) and a trailing ``(talk name)`` are
removed, and split contractions are joined (``i 've`` → ``i've``, ``it 's`` → ``it's``). A segment
with no words left is left out and counted (``details.skipped`` in prepare.json); not a bad entry.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from pathlib import Path

from ..data.manifest import Utterance
from .common import Corpus, check_audio, finish, open_text, read_lines, write_lines_if_changed

SPLITS = ("train", "dev", "test")
IGNORE = "ignore_time_segment_in_scoring"

TEDLIUM3 = Corpus("TED-LIUM 3", "https://www.openslr.org/51 (TEDLIUM_release-3.tgz; CC BY-NC-ND 3.0)", """\
  TEDLIUM_release-3/                  (--root: this folder or its parent)
    legacy/train/sph/<talk>.sph       NIST SPHERE, 16 kHz 16-bit PCM, one file per talk
    legacy/train/stm/<talk>.stm       <talk> <channel> <speaker> <start> <end> <label> <transcript>
    legacy/dev/{sph,stm}/  legacy/test/{sph,stm}/
    LM/*.en.gz                        (optional: the release's LM text, one sentence per line)
    data/  speaker-adaptation/  doc/  TEDLIUM.*.dic      (not used)""")

_DROP = re.compile(r"^(<[^>]*>|\{[^}]*\}|\[[^\]]*\])$")  # <unk> <sil> {NOISE} [laughter]
_VARIANT = re.compile(r"\(\d+\)$")  # the(2) → the
_TRAILER = re.compile(r"\([^ ]*\)$")  # a trailing (talk_name) on some training lines


def clean_transcript(text: str) -> str:
    """An STM / LM-corpus transcript as the models see it: non-speech tokens and pronunciation variants
    removed, split contractions joined (``i 've`` → ``i've``), ``</s>`` dropped."""
    words: list[str] = []
    for token in _TRAILER.sub("", text.strip()).split():
        token = _VARIANT.sub("", token)
        if not token or token == "</s>" or _DROP.match(token):
            continue
        if token.startswith("'") and len(token) > 1 and words:  # a split contraction: join it
            words[-1] += token
        else:
            words.append(token)
    return " ".join(words)


def read_stm(path: Path, audio_dir: Path, split: str) -> tuple[list[Utterance], list[str], int]:
    """The scored segments of one STM file (utterances with offset/duration; audio
    ``audio_dir/<talk>.sph``), a problem per malformed line, and how many segments were left out
    (ignored in scoring, or nothing left after cleaning)."""
    utts, problems, skipped = [], [], 0
    for lineno, line in enumerate(read_lines(path), 1):
        if not line.strip() or line.startswith(";;"):
            continue
        fields = line.split()
        where = f"{path}:{lineno}"
        if len(fields) < 5:
            problems.append(f"{where}: expected <talk> <channel> <speaker> <start> <end> [<label>] <text>")
            continue
        talk, _, speaker, start, end = fields[:5]
        words = fields[6:] if len(fields) > 5 and fields[5].startswith("<") else fields[5:]
        try:
            t0, t1 = float(start), float(end)
        except ValueError:
            problems.append(f"{where}: start/end {start!r} {end!r} are not numbers")
            continue
        if " ".join(words) == IGNORE:
            skipped += 1
            continue
        if t1 <= t0:
            problems.append(f"{where}: segment ends ({t1}) before it starts ({t0})")
            continue
        text = clean_transcript(" ".join(words))
        if not text:
            skipped += 1
            continue
        uid = f"{talk}-{round(t0 * 100):07d}-{round(t1 * 100):07d}"
        utts.append(Utterance(uid, text, str(audio_dir / f"{talk}.sph"), offset=t0,
                              duration=round(t1 - t0, 3), speaker=speaker, domain=f"tedlium3-{split}"))
    return utts, problems, skipped


def read_split(folder: Path, split: str) -> tuple[list[Utterance], list[str], int]:
    """Every STM of ``legacy/<split>``: (utterances sorted by talk and time, problems, skipped)."""
    sph, stm = folder / "sph", folder / "stm"
    for sub, what in ((sph, "the talks' audio (sph/)"), (stm, "the transcripts (stm/)")):
        TEDLIUM3.require(sub, f"{split}: {what}")
    files = sorted(stm.glob("*.stm"))
    if not files:
        raise TEDLIUM3.error(f"no *.stm files in {stm}")
    utts, problems, skipped = [], [], 0
    for f in files:
        u, p, s = read_stm(f, sph, split)
        utts += sorted(u, key=lambda x: x.offset)
        problems += p
        skipped += s
    seen: set[str] = set()
    for u in utts:
        if u.id in seen:
            problems.append(f"{u.id}: two segments of {split} with the same talk, start and end")
        seen.add(u.id)
    return utts, problems, skipped


def lm_lines(train: list[Utterance], corpus: list[Path], limit: int) -> Iterator[str]:
    """The LM text: the training transcripts, then the first cleaned non-empty lines of each LM-corpus
    file, ``limit`` lines in all shared evenly between the files (the whole corpus, ~250M words, does
    not fit the in-memory LM dataset)."""
    yield from (u.text for u in train)
    quota = -(-limit // max(1, len(corpus)))
    for path in corpus:
        n = 0
        with open_text(path) as f:
            for line in f:
                if n >= quota:
                    break
                text = clean_transcript(line)
                if text:
                    n += 1
                    yield text


def check_lm_corpus(files: list[Path]) -> list[str]:
    """A problem per LM-corpus file that is not readable gzip text."""
    problems = []
    for path in files:
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                f.readline()
        except (OSError, UnicodeDecodeError, EOFError) as e:
            problems.append(f"{path}: not a readable gzipped text file ({e})")
    return problems


def prepare_tedlium3(root: str | Path, out: str | Path = "data/tedlium3", workers: int | None = None,
                     skip_bad: bool = False, lm_sentences: int = 2_000_000) -> dict:
    """Manifests ``asr/{train,dev,test}.jsonl`` and ``lm/train.txt`` (the training transcripts and up to
    ``lm_sentences`` sentences of ``LM/*.en.gz``) from the TED-LIUM 3 folder ``root``
    (``TEDLIUM_release-3/`` or its parent); returns the summary (also in ``out/prepare.json``,
    ``common.write_summary``), whose ``details`` hold ``skipped`` (segments with no words left, per split)
    and ``lm`` (the LM text's ``sources``, ``text`` path and ``sentences``)."""
    root, out = Path(root), Path(out)
    TEDLIUM3.require(root, "the --root folder")
    if (root / "TEDLIUM_release-3").is_dir():
        root = root / "TEDLIUM_release-3"
    legacy = TEDLIUM3.require(root / "legacy", "the legacy distribution (legacy/)")
    manifests, problems, skipped = {}, [], {}
    for split in SPLITS:
        folder = TEDLIUM3.require(legacy / split, f"split {split}")
        utts, bad, skipped[split] = read_split(folder, split)
        utts, missing = check_audio(utts, workers)
        manifests[f"asr/{split}"] = utts
        problems += bad + missing
    corpus = sorted((root / "LM").glob("*.en.gz")) if (root / "LM").is_dir() else []
    bad_lm = check_lm_corpus(corpus)
    problems += bad_lm
    corpus = [c for c in corpus if not any(p.startswith(f"{c}:") for p in bad_lm)]
    summary_lm = {"sources": ["asr/train transcripts", *map(str, corpus)], "text": str(out / "lm/train.txt")}
    if not problems or skip_bad:
        lines = lm_lines(manifests["asr/train"], corpus, lm_sentences)
        summary_lm["sentences"] = write_lines_if_changed(out / "lm/train.txt", lines)
    params = {"root": str(root), "distribution": "legacy", "lm_sentences": lm_sentences}
    details = {"skipped": skipped, "lm": summary_lm}
    return finish(out, TEDLIUM3, manifests, problems, params, skip_bad, details)
