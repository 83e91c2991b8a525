"""Scoring: WER/CER with jiwer, BLEU/chrF with sacrebleu, and the one text normaliser."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import jiwer

_KEEP = re.compile(r"[^\w' ]+")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lower-case, NFKC, punctuation to spaces (apostrophes inside words kept), squeeze spaces.

    This is what the ASR models are trained to produce and what WER is computed on.
    """
    text = unicodedata.normalize("NFKC", text).lower().replace("_", " ")
    text = _KEEP.sub(" ", text)
    text = " ".join(w.strip("'") for w in text.split())
    return _SPACES.sub(" ", text).strip()


@dataclass
class ErrorRates:
    wer: float
    cer: float
    words: int
    substitutions: int
    deletions: int
    insertions: int

    def __str__(self) -> str:
        return (f"WER {100 * self.wer:.2f}% (S={self.substitutions} D={self.deletions} "
                f"I={self.insertions} N={self.words})  CER {100 * self.cer:.2f}%")


def error_rates(refs: list[str], hyps: list[str], normalize: bool = True) -> ErrorRates:
    """Corpus-level WER and CER over paired references and hypotheses (jiwer)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if normalize:
        refs = [normalize_text(r) for r in refs]
        hyps = [normalize_text(h) for h in hyps]
    keep = [i for i, r in enumerate(refs) if r]
    if len(keep) < len(refs):
        raise ValueError(f"{len(refs) - len(keep)} reference(s) are empty after normalisation")
    w = jiwer.process_words(refs, hyps)
    c = jiwer.process_characters(refs, hyps)
    n = w.hits + w.substitutions + w.deletions
    return ErrorRates(w.wer, c.cer, n, w.substitutions, w.deletions, w.insertions)


def word_errors(refs: list[str], hyps: list[str]) -> list[int]:
    """Word edit distance (substitutions + deletions + insertions, jiwer) of each normalised
    hypothesis to its reference (MWER's W(Y))."""
    out = []
    for r, h in zip(refs, hyps, strict=True):
        w = jiwer.process_words(normalize_text(r), normalize_text(h))
        out.append(w.substitutions + w.deletions + w.insertions)
    return out


def bleu_chrf(refs: list[str], hyps: list[str]) -> tuple[float, float, str]:
    """Corpus BLEU and chrF (sacrebleu defaults: 13a tokenisation, cased) and sacreBLEU's signature of the
    BLEU (what a paper quotes beside the number)."""
    from sacrebleu.metrics import BLEU, CHRF

    bleu = BLEU()
    score = bleu.corpus_score(hyps, [refs]).score
    return score, CHRF().corpus_score(hyps, [refs]).score, str(bleu.get_signature())


@dataclass
class Scores:
    """Every text metric of one hypothesis set: WER/CER (jiwer) and BLEU/chrF (sacrebleu), the latter twice:
    ``bleu``/``chrf`` on normalised text (lower-cased, no punctuation: ``normalize_text``, what the models
    write), and standard sacreBLEU ``sacrebleu``/``sacrechrf`` against the references as written (cased,
    punctuated; None when they are not known) with its ``signature``."""

    errors: ErrorRates
    bleu: float
    chrf: float
    sacrebleu: float | None = None
    sacrechrf: float | None = None
    signature: str | None = None

    @property
    def wer(self) -> float:
        return self.errors.wer

    @property
    def cer(self) -> float:
        return self.errors.cer

    def to_dict(self) -> dict[str, float | str]:
        out = {"wer": round(100 * self.wer, 2), "cer": round(100 * self.cer, 2),
               "bleu": round(self.bleu, 2), "chrf": round(self.chrf, 2)}
        if self.sacrebleu is not None:
            out |= {"sacrebleu": round(self.sacrebleu, 2), "sacrechrf": round(self.sacrechrf, 2),
                    "sacrebleu_signature": self.signature}
        return out

    def __str__(self) -> str:
        text = f"{self.errors}  BLEU {self.bleu:.2f}  chrF {self.chrf:.2f} (normalised text)"
        if self.sacrebleu is not None:
            text += (f"  sacreBLEU {self.sacrebleu:.2f}  chrF {self.sacrechrf:.2f} (references as written; "
                     f"{self.signature})")
        return text


def score(refs: list[str], hyps: list[str], written_refs: list[str] | None = None) -> Scores:
    """WER/CER and BLEU/chrF of normalised references and hypotheses (``normalize_text``); with
    ``written_refs`` (the references as the manifest writes them) also standard sacreBLEU and chrF of the
    hypotheses as they are against those."""
    er = error_rates(refs, hyps)
    bleu, chrf, _ = bleu_chrf([normalize_text(r) for r in refs], [normalize_text(h) for h in hyps])
    if written_refs is None:
        return Scores(er, bleu, chrf)
    return Scores(er, bleu, chrf, *bleu_chrf(written_refs, hyps))
