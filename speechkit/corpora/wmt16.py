"""WMT16 Romanian–English news translation → MT manifests (the LegoNN zero-shot reuse task).

``speechkit prepare wmt16 --root /data/wmt16`` writes ``mt/ro-en/{train,valid,test}.jsonl`` (``text``
Romanian, ``translation.en`` English): train = Europarl v8 + SETimes2 (the constrained training data),
valid = newsdev2016, test = newstest2016 (1,999 sentences). A training pair's id ends in its line
number (``europarl-v8-0001234``: line 1,234 of both files), so a bad pair is found in the files.
"""

from __future__ import annotations

from pathlib import Path

from .common import Corpus, finish, parallel_segs, read_parallel, translation_manifests

WMT16 = Corpus("WMT16 ro-en", "https://www.statmt.org/wmt16/translation-task.html (training-parallel-ep-v8"
               ".tgz, dev.tgz, test.tgz) and OPUS SETIMES2 en-ro (https://opus.nlpl.eu/SETIMES)", """\
  <root>/                                  (files are found at any depth under --root)
    training/europarl-v8.ro-en.ro   training/europarl-v8.ro-en.en       one sentence per line, aligned
    SETIMES.en-ro.ro   SETIMES.en-ro.en                                 (OPUS moses format)
    dev/newsdev2016-roen-src.ro.sgm   dev/newsdev2016-roen-ref.en.sgm   <seg id="N">…</seg>
    test/newstest2016-roen-src.ro.sgm   test/newstest2016-roen-ref.en.sgm""")

TRAIN = (("europarl-v8", "europarl-v8.ro-en.ro", "europarl-v8.ro-en.en"),
         ("setimes2", "SETIMES.en-ro.ro", "SETIMES.en-ro.en"))
EVAL = (("valid", "newsdev2016"), ("test", "newstest2016"))


def prepare_wmt16(root: str | Path, out: str | Path = "data/wmt16", skip_bad: bool = False) -> dict:
    """MT manifests of WMT16 ro-en under ``root``; returns the summary."""
    root, out = WMT16.require(Path(root), "the --root folder"), Path(out)
    splits = {"train": []}
    for name, ro, en in TRAIN:
        pairs = read_parallel(WMT16.find(root, ro), WMT16.find(root, en))
        splits["train"] += [(f"{name}-{i:07d}", a, b) for i, (a, b) in enumerate(pairs, 1)]
    for split, name in EVAL:
        pairs = parallel_segs(*(WMT16.find(root, f"{name}-roen-{f}.sgm") for f in ("src.ro", "ref.en")))
        splits[split] = [(f"{name}-{i:04d}", a, b) for i, (a, b) in enumerate(pairs)]
    manifests, problems = translation_manifests(splits, "ro", "en", "news", root)
    return finish(out, WMT16, manifests, problems, {"root": str(root)}, skip_bad)
