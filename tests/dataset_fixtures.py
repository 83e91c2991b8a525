"""Tiny copies of the real datasets, in their distributed layouts (file names, folder structure,
transcript and segment formats as distributed), with espeak-ng speech. Used by tests/corpora/."""

from __future__ import annotations

import gzip
import json
from contextlib import contextmanager
from pathlib import Path

import pytest
import soundfile as sf

from speechkit.cli import main
from speechkit.corpora import prepare
from speechkit.corpora.common import PrepareError
from speechkit.corpora.espeak import speak
from speechkit.corpora.librispeech import PARTS as LIBRISPEECH_PARTS

FIT = ("--trainer.max_steps=2 --trainer.accelerator=cpu --data.init_args.num_workers=0 --threads=2 "
       "--trainer.enable_progress_bar=false")  # two training steps of a recipe's fit stages
TINY_MT = FIT + " --config=tests/configs/tiny_iwslt14_transformer.yaml"  # …with the MT config at toy sizes


def run_recipe(recipe: str, **sets) -> None:
    """``speechkit run recipes/<recipe> --in-process --set k=v …`` (in-process: no start-up per command)."""
    pairs = [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    main(["run", f"recipes/{recipe}", "--in-process", *pairs])


def bad_then_skipped(corpus: str, match: str, out: Path, **options) -> tuple[dict, list[str]]:
    """``prepare`` stops with a ``PrepareError`` matching ``match`` (the bad entries named); then with
    ``skip_bad`` it leaves them out: (its summary, the problems ``out/prepare.json`` lists)."""
    with pytest.raises(PrepareError, match=match):
        prepare(corpus, out=out, **options)
    summary = prepare(corpus, out=out, skip_bad=True, **options)
    return summary, json.loads((out / "prepare.json").read_text())["problems"]


@contextmanager
def altered(path: Path, text: str | None = None):
    """For the block, ``path`` missing (``text`` None: a file absent from a copy of a dataset) or holding
    ``text``; put back as it was afterwards."""
    original = path.read_bytes()
    if text is None:
        path.unlink()
    else:
        path.write_text(text)
    try:
        yield
    finally:
        path.write_bytes(original)


SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "she sells sea shells by the sea shore",
    "a stitch in time saves nine",
    "all that glitters is not gold",
    "open the file and read it",
    "the early bird catches the worm",
    "no news is good news",
    "practice makes perfect",
    "time flies like an arrow",
    "where there is smoke there is fire",
]


def say(text: str, path: Path, voice: str = "en-us", rate: int = 16000, subtype: str = "PCM_16") -> float:
    """Write espeak speech of ``text`` to ``path`` (format from the suffix); its duration in seconds."""
    wave, _ = speak(text, voice)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, rate, subtype=subtype)
    return len(wave) / rate


def make_librispeech(root: Path, parts=LIBRISPEECH_PARTS, per_chapter=2) -> Path:
    """``root/LibriSpeech/<part>/<speaker>/<chapter>/…`` as OpenSLR 12 ships it, and
    ``root/librispeech-lm-norm.txt.gz`` (OpenSLR 11)."""
    ls, k = root / "LibriSpeech", 0
    for i, part in enumerate(parts):
        for speaker, chapter in ((19 + i, 198 + i), (103 + i, 1240 + i)):
            folder = ls / part / str(speaker) / str(chapter)
            lines = []
            for n in range(per_chapter):
                uid = f"{speaker}-{chapter}-{n:04d}"
                text = SENTENCES[k % len(SENTENCES)]
                k += 1
                say(text, folder / f"{uid}.flac")
                lines.append(f"{uid} {text.upper()}")
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    (ls / "SPEAKERS.TXT").write_text(
        ";ID  |SEX| SUBSET           |MINUTES| NAME\n19   | F | train-clean-100  | 25.19 | Kara\n"
    )
    with gzip.open(root / "librispeech-lm-norm.txt.gz", "wt") as f:
        f.write("\n".join(s.upper() for s in SENTENCES * 3) + "\n")
    return ls


DE_EN = [
    ("Ich habe einen Fisch gefangen.", "I caught a fish."),
    ("Das Wetter ist heute schön.", "The weather is nice today."),
    ("Wir gehen morgen ins Kino.", "We are going to the cinema tomorrow."),
    ("Die Katze schläft.", "The cat is sleeping."),
    ("Er liest ein Buch.", "He is reading a book."),
    ("Sie trinkt Kaffee.", "She drinks coffee."),
    ("Das ist eine gute Idee.", "That is a good idea."),
    ("Ich verstehe das nicht.", "I do not understand that."),
    ("Die Welt ist groß.", "The world is big."),
    ("Danke für Ihre Zeit.", "Thank you for your time."),
]
RO_EN = [
    ("Guvernul a aprobat bugetul.", "The government approved the budget."),
    ("Vremea este frumoasă astăzi.", "The weather is nice today."),
    ("Pisica doarme.", "The cat is sleeping."),
    ("El citește o carte.", "He is reading a book."),
    ("Aceasta este o idee bună.", "That is a good idea."),
    ("Mulțumesc pentru timpul acordat.", "Thank you for your time."),
    ("Lumea este mare.", "The world is big."),
    ("Nu înțeleg asta.", "I do not understand that."),
]


def _xml(path: Path, setid: str, segs: list[str], ref: bool, sgm: bool = False) -> None:
    head = (
        f'<refset setid="{setid}" srclang="any" trglang="en">'
        if ref
        else f'<srcset setid="{setid}" srclang="any">'
    )
    body = "\n".join(f'<seg id="{i + 1}"> {s.replace("&", "&amp;")} </seg>' for i, s in enumerate(segs))
    doc = (
        f'<doc sysid="ref" docid="d1" genre="news" origlang="ro">\n<p>\n{body}\n</p>\n</doc>'
        if sgm
        else f'<doc docid="535" genre="lectures">\n<url>http://www.ted.com/talks/x.html</url>\n<talkid>535</talkid>\n'
        f"<title>A talk</title>\n{body}\n</doc>"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        ("" if sgm else '<?xml version="1.0" encoding="UTF-8"?>\n<mteval>\n')
        + f"{head}\n{doc}\n"
        + ("</refset>" if ref else "</srcset>")
        + ("" if sgm else "\n</mteval>")
        + "\n"
    )


def make_iwslt14(root: Path, repeat: int = 5) -> Path:
    """``root/de-en/`` as the IWSLT 2014 de-en.tgz unpacks (train.tags with talk metadata, xml dev/test)."""
    folder = root / "de-en"
    folder.mkdir(parents=True, exist_ok=True)
    for lang, k in (("de", 0), ("en", 1)):
        lines = []
        for talk in range(repeat):
            lines += [
                f"<url>http://www.ted.com/talks/lang/{lang}/talk_{talk}.html</url>",
                "<keywords>talks, TED Conference</keywords>",
                "<speaker>Dan Barber</speaker>",
                f"<talkid>{1141 + talk}</talkid>",
                f"<title>Talk {talk}: {DE_EN[talk][k]}</title>",
                f"<description>TED Talk {DE_EN[(talk + 1) % 10][k]}</description>",
                '<reviewer href="http://www.ted.com/profiles/1">R</reviewer>',
                '<translator href="http://www.ted.com/profiles/2">T</translator>',
            ]
            lines += [p[k] for p in DE_EN]
        (folder / f"train.tags.de-en.{lang}").write_text("\n".join(lines) + "\n")
        for name in (
            "IWSLT14.TED.dev2010",
            "IWSLT14.TED.tst2010",
            "IWSLT14.TED.tst2011",
            "IWSLT14.TED.tst2012",
            "IWSLT14.TEDX.dev2012",
        ):
            _xml(folder / f"{name}.de-en.{lang}.xml", name, [p[k] for p in DE_EN[:3]], ref=lang == "en")
    return folder


def make_wmt16(root: Path, repeat: int = 4) -> Path:
    """WMT16 ro-en as its archives unpack: training/europarl-v8.ro-en.*, SETIMES.en-ro.*, dev/, test/."""
    for lang, k in (("ro", 0), ("en", 1)):
        (root / "training").mkdir(parents=True, exist_ok=True)
        (root / "training" / f"europarl-v8.ro-en.{lang}").write_text(
            "\n".join(p[k] for p in RO_EN * repeat) + "\n"
        )
        (root / f"SETIMES.en-ro.{lang}").write_text("\n".join(p[k] for p in RO_EN[::-1] * repeat) + "\n")
        role = "src" if lang == "ro" else "ref"
        for sub, name in (("dev", "newsdev2016"), ("test", "newstest2016")):
            _xml(
                root / sub / f"{name}-roen-{role}.{lang}.sgm",
                name,
                [p[k] for p in RO_EN[:4]],
                ref=lang == "en",
                sgm=True,
            )
    return root
