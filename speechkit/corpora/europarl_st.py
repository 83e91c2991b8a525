"""Europarl-ST v1.1 (European Parliament speeches, 9 languages, every direction) → ASR, ST and MT manifests.

``speechkit prepare europarl_st --root /data/europarl-st --langs en-de,de-en`` reads, for each pair
``<src>-<tgt>`` (all found, or ``langs``) and each split found (train, train-noisy, dev, test), the
segment list ``v1.1/<src>/<tgt>/<split>/segments.lst`` (``<speech_id> <start> <end>`` in seconds per
line) and its line-aligned transcripts ``segments.<src>`` and translations ``segments.<tgt>``, and writes

- ``st/<src>-<tgt>/<split>.jsonl``: ``text`` the transcript, ``lang`` src, ``translation {tgt: …}``,
  ``audio`` the speech's recording with ``offset``/``duration`` of the segment;
- ``asr/<src>/<split>.jsonl``: the union of a source language's segments over its pairs,
  de-duplicated by (speech, start, end) (the same speech is segmented alike in every pair);
- ``mt/<src>-<tgt>/<split>.jsonl``: the sentence pairs, text only.

Ids are ``<speech_id>_<start cs>_<end cs>`` (centiseconds, 7 digits), so a segment has the same id in
every manifest. Speeches are distributed as AAC (``audios/<speech_id>.m4a``), which soundfile cannot
read: convert them once to FLAC next to the .m4a (the error message and README.md give the command);
a ``.flac`` or ``.wav`` is used when present.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..data.manifest import Utterance
from .common import Corpus, PrepareError, drop_empty, finish, listing, read_lines, usable

SPLITS = ("train", "train-noisy", "dev", "test")
READABLE = (".flac", ".wav")  # what soundfile reads; the distributed .m4a (AAC) it does not
CONVERT = ('for f in ROOT/v1.1/*/audios/*.m4a; do ffmpeg -nostdin -n -loglevel error -i "$f" -ac 1 '
           '-ar 16000 "${f%.m4a}.flac"; done')

EUROPARL_ST = Corpus("Europarl-ST", "https://www.mllp.upv.es/europarl-st/ (v1.1.tar.gz, CC BY-NC 4.0)", """\
  v1.1/                                    (--root: this folder or its parent)
    <src>/audios/<speech_id>.m4a           one recording per speech, as distributed (AAC), and beside it
    <src>/audios/<speech_id>.flac          the FLAC (or .wav) conversion speechkit reads (see README.md)
    <src>/<tgt>/{train,train-noisy,dev,test}/
      segments.lst                         <speech_id> <start_s> <end_s> per line
      segments.<src>  segments.<tgt>       transcript / translation, line-aligned with segments.lst
      speeches.lst  speeches.<src>  speeches.<tgt>   (speech-level; not used)""")


def find_root(root: Path) -> Path:
    """The ``v1.1`` folder (``root`` itself or its child), with at least one ``<src>/audios`` folder."""
    EUROPARL_ST.require(root, "the --root folder")
    if (root / "v1.1").is_dir():
        root = root / "v1.1"
    if not any(p.is_dir() for p in root.glob("*/audios")):
        raise EUROPARL_ST.error(f"no <src>/audios/ folder under {root}")
    return root


def find_pairs(root: Path, langs: list[str] | None) -> list[tuple[str, str]]:
    """(src, tgt) of each requested pair (``langs`` like ``["en-de", "de-en"]``), or of all found."""
    if langs is None:
        pairs = sorted((p.parent.name, p.name) for p in root.glob("*/*")
                       if p.is_dir() and p.name != "audios" and any((p / s).is_dir() for s in SPLITS))
        if not pairs:
            raise EUROPARL_ST.error(f"no <src>/<tgt>/<split>/ folders under {root}")
        return pairs
    pairs = []
    for pair in langs:
        src, sep, tgt = pair.partition("-")
        if not sep or not src or not tgt or src == tgt:
            raise ValueError(f"--langs {pair!r}: expected source-target pairs like en-de,en-fr,de-en")
        EUROPARL_ST.require(root / src / "audios", f"the {src} audio folder (pair {pair})")
        EUROPARL_ST.require(root / src / tgt, f"pair {pair}")
        pairs.append((src, tgt))
    return pairs


def read_split(folder: Path, src: str, tgt: str) -> list[Utterance]:
    """The segments of one ``<src>/<tgt>/<split>/`` folder as ST utterances (audio: the speech id, to be
    resolved). A malformed or misaligned line is a ``PrepareError`` naming file and line."""
    lst = EUROPARL_ST.require(folder / "segments.lst", "the segment list")
    texts = [read_lines(EUROPARL_ST.require(folder / f"segments.{x}", f"the {x} text")) for x in (src, tgt)]
    rows = read_lines(lst)
    for path, lines in zip((folder / f"segments.{src}", folder / f"segments.{tgt}"), texts):
        if len(lines) != len(rows):
            raise PrepareError(f"{lst} has {len(rows)} lines but {path} has {len(lines)}: not aligned")
    utts = []
    for lineno, (row, text, translation) in enumerate(zip(rows, *texts), 1):
        fields = row.split()
        try:
            speech, start, end = fields[0], float(fields[1]), float(fields[2])
            assert len(fields) == 3 and 0 <= start < end
        except (IndexError, ValueError, AssertionError):
            raise PrepareError(f"{lst}:{lineno}: expected '<speech_id> <start> <end>' with start < end "
                               f"(seconds), got {row!r}") from None
        uid = f"{speech}_{round(start * 100):07d}_{round(end * 100):07d}"
        utts.append(Utterance(uid, text.strip(), speech, offset=start, duration=round(end - start, 3),
                              lang=src, translation={tgt: translation.strip()}, domain="europarl"))
    return utts


def resolve_audio(audios: Path, speeches: set[str]) -> tuple[dict[str, str], list[Path]]:
    """{speech id: readable audio path} for the speeches that have a .flac/.wav, and the .m4a files of
    those that only have the distributed AAC (speeches with no file at all are left to ``check_audio``,
    which names them)."""
    found, m4a_only = {}, []
    for speech in sorted(speeches):
        path = next((audios / f"{speech}{ext}" for ext in READABLE if (audios / f"{speech}{ext}").is_file()),
                    None)
        if path is not None:
            found[speech] = str(path)
        elif (audios / f"{speech}.m4a").is_file():
            m4a_only.append(audios / f"{speech}.m4a")
        else:
            found[speech] = str(audios / f"{speech}.flac")  # missing: reported by check_audio
    return found, m4a_only


def m4a_error(root: Path, files: list[Path]) -> PrepareError:
    return PrepareError(
        f"Europarl-ST: {len(files)} speech(es) only as AAC (.m4a), which soundfile cannot decode:\n"
        f"{listing(files)}\n"
        f"convert them once to FLAC next to the .m4a (ffmpeg; see recipes/europarl_st/README.md):\n  "
        f"{CONVERT.replace('ROOT/v1.1', str(root))}\n(or rerun with --skip-bad to leave their segments out)")


def ensure_unique(utts: list[Utterance], where: str) -> list[Utterance]:
    """``utts`` less repeated (speech, start, end) segments (the first kept)."""
    seen: dict[str, Utterance] = {}
    for u in utts:
        seen.setdefault(u.id, u)
    if len(seen) < len(utts):
        print(f"{where}: {len(utts) - len(seen)} repeated segment(s) kept once")
    return list(seen.values())


def prepare_europarl_st(root: str | Path, out: str | Path = "data/europarl_st",
                        langs: list[str] | None = None, workers: int | None = None,
                        skip_bad: bool = False) -> dict:
    """ST, ASR and MT manifests of the Europarl-ST pairs under ``root`` (all found, or ``langs``); returns
    the summary. Speeches only as .m4a are an error naming them and giving the conversion command (with
    ``skip_bad``: their segments are left out and listed, as are missing or unreadable audio, empty
    texts and segments past the end of their audio)."""
    root, out = find_root(Path(root)), Path(out)
    pairs = find_pairs(root, langs)
    segments: dict[tuple[str, str, str], list[Utterance]] = {}
    for src, tgt in pairs:
        splits = [s for s in SPLITS if (root / src / tgt / s).is_dir()]
        if not splits:
            raise EUROPARL_ST.error(f"no split folder ({', '.join(SPLITS)}) in {root / src / tgt}")
        for split in splits:
            folder = root / src / tgt / split
            segments[src, tgt, split] = ensure_unique(read_split(folder, src, tgt), str(folder))
    audio, m4a = {}, []
    for src in sorted({s for s, _ in pairs}):
        speeches = {u.audio for (s, _, _), utts in segments.items() if s == src for u in utts}
        found, only = resolve_audio(root / src / "audios", speeches)
        audio.update({(src, k): v for k, v in found.items()})
        m4a += only
    if m4a and not skip_bad:
        raise m4a_error(root, m4a)
    problems = [f"{p}: only the AAC (.m4a) recording, which soundfile cannot read: its segments are left out "
                f"(convert it to FLAC, README.md)" for p in m4a]
    manifests: dict[str, list[Utterance]] = {}
    asr: dict[tuple[str, str], dict[str, Utterance]] = {}
    for (src, tgt, split), utts in sorted(segments.items()):
        manifests[f"mt/{src}-{tgt}/{split}"], bad = drop_empty(
            [Utterance(u.id, u.text, lang=src, translation=u.translation, domain=u.domain) for u in utts],
            f"{root / src / tgt / split} (mt)")
        problems += bad
        utts = [replace(u, audio=audio[src, u.audio]) for u in utts
                if (src, u.audio) in audio]
        utts, left_out = usable(utts, str(root / src / tgt / split), workers)
        manifests[f"st/{src}-{tgt}/{split}"] = utts
        problems += left_out
        union = asr.setdefault((src, split), {})
        for u in utts:
            union.setdefault(u.id, replace(u, translation={}))
    for (src, split), union in sorted(asr.items()):
        manifests[f"asr/{src}/{split}"] = sorted(union.values(), key=lambda u: u.id)
    params = {"root": str(root), "langs": [f"{s}-{t}" for s, t in pairs]}
    return finish(out, EUROPARL_ST, manifests, problems, params, skip_bad)
