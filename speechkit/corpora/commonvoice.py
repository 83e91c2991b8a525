"""Mozilla Common Voice → ASR manifests per language, from the distributed layout.

``speechkit prepare commonvoice --root /data/cv-corpus-17.0-2024-03-15 --langs de --out data/commonvoice``
writes ``asr/de/{train,dev,test}.jsonl`` from the release's official splits (``train.tsv``,
``dev.tsv``, ``test.tsv``; ``validated``/``invalidated``/``other.tsv`` are not used): one utterance
per row, ``audio`` its ``clips/*.mp3``, ``text`` the ``sentence`` as written (case and punctuation
are normalised when training and scoring), ``lang`` the language, ``speaker`` the ``client_id``.

The TSVs are read as the official loaders read them (tab-separated, a header line, no quoting) and
columns are taken by header name, so releases with more columns (``sentence_id``, ``variant``,
``locale``, ``segment``, …) read the same; ``path`` and ``sentence`` must be there.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..data.manifest import Utterance
from .common import Corpus, PrepareError, finish, usable

SPLITS = ("train", "dev", "test")
REQUIRED = ("path", "sentence")

COMMONVOICE = Corpus("Common Voice", "https://commonvoice.mozilla.org/datasets (one archive per language; "
                     "CC0)", """\
  cv-corpus-<version>/                (--root: this folder, or one language's folder in it)
    <lang>/                           e.g. de/, en/ (--langs de chooses one)
      train.tsv  dev.tsv  test.tsv    tab-separated with a header: client_id path sentence up_votes …
      validated.tsv  invalidated.tsv  other.tsv  …   (not used)
      clips/<path>                    common_voice_<lang>_<n>.mp3""")


def is_language(folder: Path) -> bool:
    """Whether ``folder`` is one language of a release (it has clips/ or a split TSV)."""
    return (folder / "clips").is_dir() or any((folder / f"{s}.tsv").is_file() for s in SPLITS)


def language_folders(root: Path, langs: list[str] | None) -> dict[str, Path]:
    """The language folders to prepare: ``{lang: folder}`` for ``langs``, or the one language found (an
    error listing the languages when there are several and none was chosen)."""
    if is_language(root):
        found = {root.name: root}
    else:
        found = {d.name: d for d in sorted(root.iterdir()) if d.is_dir() and is_language(d)}
        if not found:
            raise COMMONVOICE.error(f"no language folder (<lang>/ with train.tsv and clips/) in {root}")
    if not langs:
        if len(found) > 1:
            raise ValueError(f"Common Voice: {root} holds {len(found)} languages ({', '.join(found)}): "
                             "choose with --langs (e.g. --langs de)")
        return found
    unknown = [lang for lang in langs if lang not in found]
    if unknown:
        raise COMMONVOICE.error(f"language(s) {', '.join(unknown)} not found in {root} "
                                f"(found: {', '.join(found)})")
    return {lang: found[lang] for lang in langs}


def read_tsv(path: Path, lang: str) -> tuple[list[Utterance], list[str]]:
    """The rows of one split TSV as utterances (audio ``clips/<path>``), and a problem per malformed row.
    A file without a ``path`` or ``sentence`` column is a ``PrepareError`` naming it."""
    clips, utts, problems, seen = path.parent / "clips", [], [], set()
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        missing = [c for c in REQUIRED if c not in (header or [])]
        if missing:
            raise PrepareError(f"{path}: no {' or '.join(missing)} column in its header line "
                               f"({' '.join(header or ['(empty file)'])}); expected a Common Voice split TSV")
        col = {name: i for i, name in enumerate(header)}
        try:
            for lineno, row in enumerate(reader, 2):
                if not any(row):
                    continue
                if len(row) != len(header):
                    problems.append(f"{path}:{lineno}: {len(row)} fields, the header has {len(header)}")
                    continue
                name = row[col["path"]]
                clip = name if Path(name).suffix else f"{name}.mp3"  # the first releases left out .mp3
                uid = Path(clip).stem
                if uid in seen:
                    problems.append(f"{path}:{lineno}: clip {clip} listed twice")
                    continue
                seen.add(uid)
                speaker = row[col["client_id"]] if "client_id" in col else None
                utts.append(Utterance(uid, row[col["sentence"]].strip() or " ", str(clips / clip), lang=lang,
                                      speaker=speaker or None, domain="commonvoice"))
        except UnicodeDecodeError as e:
            raise PrepareError(f"{path}: not utf-8 text ({e})") from None
    return utts, problems


def prepare_commonvoice(root: str | Path, out: str | Path = "data/commonvoice",
                        langs: list[str] | None = None, workers: int | None = None,
                        skip_bad: bool = False) -> dict:
    """Manifests ``asr/<lang>/{train,dev,test}.jsonl`` for each language of ``langs`` (or the one under
    ``root``); returns the summary (also in ``out/prepare.json``, ``common.write_summary``). A split whose
    TSV has no rows is left out and listed in its ``details.empty``."""
    root, out = Path(root), Path(out)
    COMMONVOICE.require(root, "the --root folder")
    releases = sorted(root.glob("cv-corpus-*/"))
    if len(releases) == 1 and not is_language(root):  # the folder the archive was unpacked in
        root = releases[0]
    manifests, problems, empty = {}, [], []
    for lang, folder in language_folders(root, langs).items():
        for split in SPLITS:
            tsv = COMMONVOICE.require(folder / f"{split}.tsv", f"{lang}: the {split} split")
            utts, bad = read_tsv(tsv, lang)
            if not utts and not bad:
                empty.append(f"{lang}/{split}")
                continue
            COMMONVOICE.require(folder / "clips", f"{lang}: the clips folder")
            manifests[f"asr/{lang}/{split}"], left_out = usable(utts, str(tsv), workers)
            problems += bad + left_out
    params = {"root": str(root), "langs": sorted({k.split("/")[1] for k in manifests})}
    return finish(out, COMMONVOICE, manifests, problems, params, skip_bad, {"empty": empty})
