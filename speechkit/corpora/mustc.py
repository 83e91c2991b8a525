"""MuST-C (English TED talks → 8–14 languages, segmented and aligned) → ST and MT manifests.

``speechkit prepare mustc --root /data/mustc [--langs de,fr]`` writes, for every pair ``en-<tgt>`` found
(or given) and every split found (train, dev, tst-COMMON, tst-HE):

- ``st/en-<tgt>/<split>.jsonl``: one record per segment of ``<split>.yaml``: ``audio`` the talk's wav,
  ``offset``/``duration`` (seconds) from the YAML, ``text`` the English transcript (``<split>.en``),
  ``translation = {tgt: …}`` (``<split>.<tgt>``), ``speaker`` the YAML ``speaker_id``. The same records
  are the ASR data: the ASR task reads ``text`` (the datamodule without ``target_lang``).
- ``mt/en-<tgt>/<split>.jsonl``: the same sentence pairs, text only (the MT task).

Segment ids are ``<talk>_<i>`` (``ted_1_0``, ``ted_1_1``, …: i counts the segments of a talk in YAML
order, as fairseq's ``prep_mustc_data.py`` names them).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..data.manifest import Utterance
from .common import Corpus, PrepareError, finish, read_lines, usable

SPLITS = ("train", "dev", "tst-COMMON", "tst-HE")
REQUIRED = ("train", "dev", "tst-COMMON")  # tst-HE is not in every release
KEYS = ("duration", "offset", "speaker_id", "wav")

MUSTC = Corpus("MuST-C", "https://ict.fbk.eu/must-c/ (v1.0 or v1.2, one MUSTC_v1.x_en-<tgt>.tar.gz per "
               "target language; CC BY-NC-ND 4.0)", """\
  <root>/                                    (--root: the folder holding the unpacked en-<tgt>/ folders,
    en-de/                                    or one en-<tgt>/ folder itself)
      data/{train,dev,tst-COMMON,tst-HE}/     (tst-HE optional)
        wav/ted_<n>.wav                       one talk per file
        txt/<split>.yaml                      one line per segment, in talk order:
          - {duration: 3.5, offset: 16.9, rW: 17, uW: 0, speaker_id: spk.1, wav: ted_1.wav}
        txt/<split>.en  txt/<split>.de        one segment per line, aligned with the YAML list
    en-fr/ …""")


def find_pairs(root: Path, langs: list[str] | None) -> dict[str, Path]:
    """{target language: its ``en-<tgt>`` folder} under ``root`` (all found, or ``langs``)."""
    if (root / "data").is_dir() and root.name.startswith("en-"):
        found = {root.name[3:]: root}
    else:
        found = {d.name[3:]: d for d in sorted(root.glob("en-*")) if (d / "data").is_dir()}
    if langs:
        for lang in langs:
            if lang not in found:
                raise MUSTC.error(f"language pair en-{lang} not found: no {root / f'en-{lang}' / 'data'}")
        return {lang: found[lang] for lang in langs}
    if not found:
        raise MUSTC.error(f"no en-<tgt>/data/ folder under {root}")
    return found


def load_segments(path: Path) -> list:
    """The list of segment mappings of a MuST-C ``<split>.yaml`` (the C loader when PyYAML has it:
    the train YAML has ~250k lines)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        segs = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    except yaml.YAMLError as e:
        raise PrepareError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(segs, list):
        raise PrepareError(f"{path}: expected a YAML list of segments, got {type(segs).__name__}")
    return segs


def read_split(folder: Path, split: str, tgt: str) -> tuple[list[Utterance], list[str]]:
    """The segments of ``en-<tgt>/data/<split>`` as ST utterances, and a problem per malformed YAML entry.
    The YAML, ``.en`` and ``.<tgt>`` files must have one entry per segment (a ``PrepareError`` naming
    the three files and their counts otherwise)."""
    txt = folder / "data" / split / "txt"
    files = [MUSTC.require(txt / f"{split}.{ext}", f"the {split} {what}")
             for ext, what in (("yaml", "segment list"), ("en", "transcripts"), (tgt, "translations"))]
    segs, en, xx = load_segments(files[0]), read_lines(files[1]), read_lines(files[2])
    if not len(segs) == len(en) == len(xx):
        raise PrepareError(f"MuST-C en-{tgt} {split}: {files[0]} has {len(segs)} segments, {files[1]} "
                           f"{len(en)} lines and {files[2]} {len(xx)} lines: they must be aligned")
    wav, utts, problems, count = folder / "data" / split / "wav", [], [], {}
    for lineno, (seg, src, ref) in enumerate(zip(segs, en, xx), 1):
        missing = [k for k in KEYS if not isinstance(seg, dict) or k not in seg]
        if missing:
            problems.append(f"{files[0]}:{lineno}: segment without {', '.join(missing)}: {seg!r}")
            continue
        talk = Path(str(seg["wav"])).stem
        i = count[talk] = count.get(talk, -1) + 1
        utts.append(Utterance(f"{talk}_{i}", src.strip(), str(wav / str(seg["wav"])),
                              offset=float(seg["offset"]), duration=float(seg["duration"]),
                              translation={tgt: ref.strip()}, speaker=str(seg["speaker_id"]), domain="ted"))
    return utts, problems


def prepare_mustc(root: str | Path, out: str | Path = "data/mustc", langs: list[str] | None = None,
                  workers: int | None = None, skip_bad: bool = False) -> dict:
    """ST manifests ``st/en-<tgt>/<split>`` and MT manifests ``mt/en-<tgt>/<split>`` of the MuST-C pairs
    under ``root`` (all ``en-*`` found, or the target languages ``langs``); returns the summary."""
    root, out = MUSTC.require(Path(root), "the --root folder"), Path(out)
    manifests, problems, pairs = {}, [], find_pairs(root, langs)
    for tgt, folder in pairs.items():
        for split in REQUIRED:
            MUSTC.require(folder / "data" / split, f"the en-{tgt} {split} split")
        for split in (s for s in SPLITS if (folder / "data" / s).is_dir()):
            utts, bad = read_split(folder, split, tgt)
            utts, left_out = usable(utts, f"{folder / 'data' / split}", workers)
            problems += bad + left_out
            manifests[f"st/en-{tgt}/{split}"] = utts
            manifests[f"mt/en-{tgt}/{split}"] = [Utterance(u.id, u.text, translation=u.translation,
                                                           speaker=u.speaker, domain=u.domain) for u in utts]
    params = {"root": str(root), "langs": sorted(pairs)}
    return finish(out, MUSTC, manifests, problems, params, skip_bad)
