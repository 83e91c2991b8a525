"""CoVoST 2 X→En (Common Voice 4 speech + the CoVoST English translations) → ST manifests.

``speechkit prepare covost2 --root /data/covost2 [--langs fr,de]`` writes
``st/<src>-en/{train,dev,test}.jsonl`` for every source language given (default: every
``covost_v2.<src>_en.tsv[.tar.gz]`` found): ``text`` the Common Voice transcript (``validated.tsv``
``sentence``), ``lang`` the source language, ``translation = {"en": …}``, ``audio`` the clip
(``<src>/clips/<path>``, MP3), ``speaker`` the ``client_id``, the id the clip name without ``.mp3``.
The split is facebookresearch/covost's ``get_covost_splits.py`` (v2): the clips in both
``validated.tsv`` and the CoVoST TSV (an inner join on ``path``), train = the rows whose ``split`` is
``train`` or ``train_covost``, dev = ``dev``, test = ``test``; the other rows are left out.
"""

from __future__ import annotations

import csv
import io
import tarfile
from pathlib import Path

from ..data.manifest import Utterance
from .common import Corpus, PrepareError, finish, usable

SPLITS = {"train": ("train", "train_covost"), "dev": ("dev",), "test": ("test",)}
CV_COLUMNS, COVOST_COLUMNS = ("path", "sentence", "client_id"), ("path", "translation", "split")

COVOST2 = Corpus("CoVoST 2", "Common Voice version 4 (https://commonvoice.mozilla.org/datasets, one "
                 "archive per source language, CC0) and the CoVoST 2 translations "
                 "covost_v2.<src>_en.tsv.tar.gz (https://github.com/facebookresearch/covost, "
                 "CC BY-NC 4.0)", """\
  <root>/                              (--root; the files may lie deeper, e.g. under cv-corpus-4-2019-12-10/)
    fr/                                the Common Voice 4 release of the source language
      validated.tsv                    client_id  path  sentence  up_votes  down_votes  age  gender  accent
      clips/common_voice_fr_<n>.mp3
    covost_v2.fr_en.tsv                path  sentence  translation  client_id  split   (or the .tsv.tar.gz as
    de/ …  covost_v2.de_en.tsv …                                                      downloaded)""")


def read_tsv(text: str, where: str, columns: tuple[str, ...]) -> list[dict]:
    """The rows of a Common Voice / CoVoST TSV (tab-separated, unquoted, ``\\`` escapes, a header line);
    a ``PrepareError`` naming ``where`` when one of ``columns`` is missing."""
    reader = csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise PrepareError(f"{where}: no column {', '.join(missing)} in its header {reader.fieldnames}")
    return list(reader)


def covost_tsv(root: Path, src: str) -> tuple[str, str]:
    """(text, where) of ``covost_v2.<src>_en.tsv`` under ``root``: the file, or read from the
    ``.tsv.tar.gz`` as downloaded when it was not unpacked."""
    name = f"covost_v2.{src}_en.tsv"
    if any(root.rglob(name)):
        path = COVOST2.find(root, name)
        return path.read_text(encoding="utf-8"), str(path)
    if not any(root.rglob(name + ".tar.gz")):
        raise COVOST2.error(f"neither {name} nor {name}.tar.gz found under {root}")
    archive = COVOST2.find(root, name + ".tar.gz")
    with tarfile.open(archive) as tar:
        member = next((m for m in tar.getmembers() if Path(m.name).name == name and m.isfile()), None)
        if member is None:
            raise COVOST2.error(f"{archive} holds no {name}")
        return tar.extractfile(member).read().decode("utf-8"), f"{archive}:{member.name}"


def common_voice(root: Path, src: str) -> Path:
    """The Common Voice release folder of language ``src`` (the one ``<src>/validated.tsv`` under root)."""
    hits = sorted(p.parent for p in root.rglob("validated.tsv") if p.parent.name == src)
    if len(hits) != 1:
        found = f"found {len(hits)} times ({', '.join(map(str, hits[:3]))})" if hits else "not found"
        raise COVOST2.error(f"the Common Voice release {src}/validated.tsv {found} under {root}")
    COVOST2.require(hits[0] / "clips", f"the Common Voice {src} clips folder")
    return hits[0]


def read_language(root: Path, src: str) -> dict[str, list[Utterance]]:
    """{split: utterances} of one source language: validated.tsv joined with the CoVoST TSV on ``path``."""
    cv = common_voice(root, src)
    text, where = covost_tsv(root, src)
    covost = {r["path"]: r for r in read_tsv(text, where, COVOST_COLUMNS)}
    tsv = cv / "validated.tsv"
    splits = {s: [] for s in SPLITS}
    split_of = {name: s for s, names in SPLITS.items() for name in names}
    for row in read_tsv(tsv.read_text(encoding="utf-8"), str(tsv), CV_COLUMNS):
        pair = covost.get(row["path"])
        if pair is None or pair["split"] not in split_of:
            continue
        uid = row["path"][: -len(".mp3")] if row["path"].endswith(".mp3") else row["path"]
        splits[split_of[pair["split"]]].append(Utterance(
            uid, row["sentence"].strip() or " ", str(cv / "clips" / row["path"]), lang=src,
            translation={"en": (pair["translation"] or "").strip()}, speaker=row["client_id"] or None,
            domain="commonvoice"))
    return splits


def find_langs(root: Path) -> list[str]:
    """The source languages of the ``covost_v2.<src>_en.tsv[.tar.gz]`` files under ``root``."""
    names = [p.name for p in root.rglob("covost_v2.*_en.tsv*") if p.name.endswith((".tsv", ".tsv.tar.gz"))]
    return sorted({n[len("covost_v2."):].split("_en.tsv")[0] for n in names})


def prepare_covost2(root: str | Path, out: str | Path = "data/covost2", langs: list[str] | None = None,
                    workers: int | None = None, skip_bad: bool = False) -> dict:
    """ST manifests ``st/<src>-en/{train,dev,test}`` of the CoVoST 2 X→En source languages under ``root``
    (all found, or ``langs``); returns the summary."""
    root, out = COVOST2.require(Path(root), "the --root folder"), Path(out)
    langs = langs or find_langs(root)
    if not langs:
        raise COVOST2.error(f"no covost_v2.<src>_en.tsv[.tar.gz] under {root}")
    manifests, problems = {}, []
    for src in langs:
        for split, utts in read_language(root, src).items():
            manifests[f"st/{src}-en/{split}"], left_out = usable(utts, f"{src} {split}", workers)
            problems += left_out
    return finish(out, COVOST2, manifests, problems, {"root": str(root), "langs": langs}, skip_bad)
