"""Sentencepiece tokenizers: the interface vocabulary and its fingerprint.

Id layout of the interface vocabulary: sentencepiece pieces are ``0 .. V-1`` (``<unk>``
is 0, no BOS/EOS pieces) and the CTC/transducer blank is ``V``, so marginal heads
have ``V + 1`` outputs. The fingerprint is the SHA-256 of the model file; bricks
record it and refuse to join bricks that speak another vocabulary.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import sentencepiece as spm

from .errors import SpeechkitError
from .files import atomic_write


class TokenizerNotFoundError(SpeechkitError, FileNotFoundError):
    """A configured tokenizer model file does not exist (and the config does not ask to train it);
    the message names the config key, the path and how to create it."""


class Tokenizer:
    """A loaded sentencepiece model. ``blank`` = ``vocab_size`` (see module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"tokenizer model not found: {self.path}")
        self.model_bytes = self.path.read_bytes()
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_bytes)
        self.fingerprint = hashlib.sha256(self.model_bytes).hexdigest()[:16]

    @property
    def vocab_size(self) -> int:
        """V: the number of pieces (blank excluded)."""
        return self.sp.get_piece_size()

    @property
    def blank(self) -> int:
        return self.vocab_size

    @property
    def unk(self) -> int:
        """The id of ``<unk>`` (0 for models trained here): what out-of-vocabulary characters become."""
        return self.sp.unk_id()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode([i for i in ids if 0 <= i < self.vocab_size])

    def pieces(self, ids: list[int]) -> list[str]:
        return [self.sp.id_to_piece(i) for i in ids]

    def info(self) -> dict:
        return {"fingerprint": self.fingerprint, "vocab_size": self.vocab_size, "blank": self.blank}


def train_tokenizer(texts: list[str], out: str | Path, vocab_size: int = 256,
                    model_type: str = "unigram") -> Tokenizer:
    """Train a sentencepiece model on ``texts`` and write it to ``out`` (a ``.model`` file).

    Deterministic for the same input. Raises ValueError if the texts are too few for
    ``vocab_size`` (sentencepiece's own message is kept).
    """
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("no non-empty texts to train a tokenizer on")
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=buf, vocab_size=vocab_size,
            model_type=model_type, character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0,
            pad_id=-1, num_threads=1, minloglevel=2, input_sentence_size=2_000_000,
            shuffle_input_sentence=False, hard_vocab_limit=True,
        )
    except RuntimeError as e:
        raise ValueError(f"sentencepiece training failed for vocab_size={vocab_size}: {e}") from None
    with atomic_write(out, "wb") as f:
        f.write(buf.getvalue())
    return Tokenizer(out)
