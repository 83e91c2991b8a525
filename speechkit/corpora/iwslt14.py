"""IWSLT 2014 German–English (TED talks) → MT manifests, split as fairseq's ``prepare-iwslt14.sh``.

``speechkit prepare iwslt14 --root /data/iwslt14`` writes ``mt/de-en/{train,valid,test}.jsonl``
(``text`` German, ``translation.en`` English): train = ``train.tags.de-en`` without its talk metadata
lines (titles and descriptions kept, their tags removed) less every 23rd sentence, which is valid;
test = dev2010 + tst2010 + tst2011 + tst2012 + TEDX.dev2012 (6,750 sentences in the release).
"""

from __future__ import annotations

import re
from pathlib import Path

from .common import Corpus, finish, parallel_segs, read_parallel, translation_manifests

IWSLT14 = Corpus("IWSLT14 de-en", "the IWSLT 2014 evaluation campaign release de-en.tgz (WIT3, "
                 "https://wit3.fbk.eu/2014-01; the file fairseq's prepare-iwslt14.sh unpacks)", """\
  de-en/                                   (--root: this folder or any parent)
    train.tags.de-en.de   train.tags.de-en.en          talk metadata lines (<url>, <talkid>, …) + sentences
    IWSLT14.TED.dev2010.de-en.de.xml   IWSLT14.TED.dev2010.de-en.en.xml     <seg id="N">…</seg>
    IWSLT14.TED.tst2010.de-en.{de,en}.xml   IWSLT14.TED.tst2011…   IWSLT14.TED.tst2012…
    IWSLT14.TEDX.dev2012.de-en.{de,en}.xml""")

TEST_SETS = ("IWSLT14.TED.dev2010", "IWSLT14.TED.tst2010", "IWSLT14.TED.tst2011", "IWSLT14.TED.tst2012",
             "IWSLT14.TEDX.dev2012")
DROP = re.compile(r"<(url|talkid|keywords|speaker|reviewer|translator|doc|/doc)\b")
STRIP = re.compile(r"</?(title|description)>")


def train_pairs(de: Path, en: Path) -> list[tuple[str, str]]:
    """The sentence pairs of ``train.tags``: metadata lines dropped, title/description tags removed."""
    return [(STRIP.sub("", a).strip(), STRIP.sub("", b).strip()) for a, b in read_parallel(de, en)
            if not DROP.search(a) and not DROP.search(b)]


def prepare_iwslt14(root: str | Path, out: str | Path = "data/iwslt14", skip_bad: bool = False) -> dict:
    """MT manifests of IWSLT14 de-en under ``root``; returns the summary."""
    root, out = IWSLT14.require(Path(root), "the --root folder"), Path(out)
    pairs = train_pairs(IWSLT14.find(root, "train.tags.de-en.de"), IWSLT14.find(root, "train.tags.de-en.en"))
    splits = {"train": [], "valid": []}
    for i, (de, en) in enumerate(pairs):
        splits["valid" if i % 23 == 0 else "train"].append((f"iwslt14-train-{i:06d}", de, en))
    splits["test"] = []
    for name in TEST_SETS:
        segs = parallel_segs(*(IWSLT14.find(root, f"{name}.de-en.{x}.xml") for x in ("de", "en")))
        splits["test"] += [(f"{name}-{j:04d}", de, en) for j, (de, en) in enumerate(segs)]
    manifests, problems = translation_manifests(splits, "de", "en", "ted", root)
    return finish(out, IWSLT14, manifests, problems, {"root": str(root)}, skip_bad)
