"""LibriSpeech (OpenSLR 12) and its LM corpus (OpenSLR 11) → manifests, from the distributed layout.

``speechkit prepare librispeech --root /data/LibriSpeech --out data/librispeech`` writes
``asr/<part>.jsonl`` for every part found (or given), ``asr/train.jsonl`` (all train parts found),
``asr/dev.jsonl`` (dev-clean + dev-other) and, when ``librispeech-lm-norm.txt[.gz]`` lies in or next
to the root, ``lm/train.txt``: its first ``lm_sentences`` sentences (the LM stage's text).
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path

from ..data.manifest import Utterance
from .common import Corpus, finish, open_text, read_lines, usable, write_lines_if_changed

PARTS = ("train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "dev-other", "test-clean",
         "test-other")
LM_FILE = "librispeech-lm-norm.txt"

LIBRISPEECH = Corpus("LibriSpeech", "https://www.openslr.org/12 (audio; CC BY 4.0) and "
                     "https://www.openslr.org/11 (librispeech-lm-norm.txt.gz, optional)", """\
  LibriSpeech/                      (--root: this folder or its parent)
    train-clean-100/  train-clean-360/  train-other-500/  dev-clean/  dev-other/  test-clean/  test-other/
      <speaker>/<chapter>/<speaker>-<chapter>.trans.txt   <speaker>-<chapter>-<nnnn> TRANSCRIPT per line
      <speaker>/<chapter>/<speaker>-<chapter>-<nnnn>.flac
    librispeech-lm-norm.txt[.gz]    (optional, inside or next to LibriSpeech/: the LM corpus)""")


def read_part(folder: Path) -> tuple[list[Utterance], list[str]]:
    """The utterances of one part (its ``*.trans.txt`` files), and a problem per malformed line."""
    utts, problems = [], []
    transcripts = sorted(folder.glob("*/*/*.trans.txt"))
    if not transcripts:
        raise LIBRISPEECH.error(f"no <speaker>/<chapter>/*.trans.txt under {folder}")
    for trans in transcripts:
        for lineno, line in enumerate(read_lines(trans), 1):
            uid, _, text = line.strip().partition(" ")
            if not uid:
                continue
            if not uid.startswith(trans.name[: -len(".trans.txt")] + "-"):
                problems.append(f"{trans}:{lineno}: utterance id {uid!r} does not belong to this chapter")
                continue
            utts.append(Utterance(uid, text.strip() or " ", str(trans.parent / f"{uid}.flac"),
                                  speaker=uid.split("-")[0], domain=folder.name))
    return utts, problems


def prepare_librispeech(root: str | Path, out: str | Path = "data/librispeech",
                        parts: list[str] | None = None, lm_sentences: int = 2_000_000,
                        workers: int | None = None, skip_bad: bool = False) -> dict:
    """Manifests of the LibriSpeech parts under ``root`` (all found, or ``parts``); returns the summary
    (``common.write_summary``; its ``details.lm``: the LM text's ``source``, ``text`` path and ``sentences``,
    when the LM corpus is there)."""
    root, out = Path(root), Path(out)
    LIBRISPEECH.require(root, "the --root folder")
    if (root / "LibriSpeech").is_dir():
        root = root / "LibriSpeech"
    unknown = sorted(set(parts or []) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown LibriSpeech part(s) {unknown}; the parts are {', '.join(PARTS)}")
    found = [p for p in PARTS if (root / p).is_dir()]
    if parts:
        for p in parts:
            LIBRISPEECH.require(root / p, f"part {p}")
    elif not found:
        raise LIBRISPEECH.error(f"none of the parts {', '.join(PARTS)} under {root}")
    parts = parts or found
    manifests, problems = {}, []
    for part in parts:
        utts, bad = read_part(root / part)
        manifests[f"asr/{part}"], left_out = usable(utts, str(root / part), workers)
        problems += bad + left_out
    for name, members in (("train", [p for p in parts if p.startswith("train")]),
                          ("dev", [p for p in parts if p.startswith("dev")])):
        if members:
            manifests[f"asr/{name}"] = [u for p in members for u in manifests[f"asr/{p}"]]
    details = {}
    candidates = [d / f for d in (root, root.parent) for f in (LM_FILE, LM_FILE + ".gz")]
    lm = next((c for c in candidates if c.is_file()), None)
    if lm is not None:
        n = write_lm_text(lm, out / "lm" / "train.txt", lm_sentences)
        details["lm"] = {"source": str(lm), "text": str(out / "lm" / "train.txt"), "sentences": n}
    params = {"root": str(root), "parts": parts, "lm_sentences": lm_sentences}
    return finish(out, LIBRISPEECH, manifests, problems, params, skip_bad, details)


def write_lm_text(src: Path, dst: Path, limit: int) -> int:
    """The first ``limit`` non-empty sentences of the LM corpus (plain or gzipped) → ``dst``."""
    with open_text(src) as f:
        n = write_lines_if_changed(dst, islice((s for s in map(str.strip, f) if s), limit))
    if not n:
        raise LIBRISPEECH.error(f"the LM corpus {src} is empty")
    return n
