"""Toy model builders and helpers the tests of several packages share (tests/<package>/ import them by name:
pytest puts this folder, the one of the root conftest.py, on sys.path)."""

import contextlib
import os
import stat
from pathlib import Path

import torch

from speechkit.data.manifest import load_manifest
from speechkit.features import FbankConfig
from speechkit.lego.decoders import AttentionDecoder
from speechkit.lego.encoders import SequenceEncoder, SpeechEncoder
from speechkit.lego.interface import BeamConv, LengthController, MarginalHead, Shrink, WEmb
from speechkit.lego.transducer import Joiner, LSTMPredictor, StatelessPredictor
from speechkit.metrics import normalize_text
from speechkit.models.aed import AttentionModel
from speechkit.models.stast import STAST
from speechkit.models.transducer import Transducer
from speechkit.nn.conformer import Conformer
from speechkit.nn.subsampling import FrameStack
from speechkit.nn.transformer import TokenEmbedding, TransformerStack
from speechkit.pipelines.bricks import save_brick
from speechkit.tokenizer import train_tokenizer

V, D = 20, 32  # LegoNN toys: interface vocabulary, width
SRC, TGT = 12, 16  # STAST toys: transcript and translation vocabularies


def text_encoder(src_vocab=30, alpha=2.0, head=True, seed=0):
    torch.manual_seed(seed)
    return SequenceEncoder(TokenEmbedding(src_vocab, D), TransformerStack(D, 1, 2, 2),
                           LengthController(D, alpha, 2), TransformerStack(D, 1, 2, 2),
                           MarginalHead(D, V) if head else None)


def middle_encoder(alpha=0.5):
    return SequenceEncoder(WEmb(V, D, 1, 2, 2, kernel_size=3), None, LengthController(D, alpha, 2), None,
                           MarginalHead(D, V))


def aed(encoder=None, ingestor="wemb", seed=0):
    torch.manual_seed(seed)
    ing = {"wemb": WEmb(V, D, 1, 2, 2), "beamconv": BeamConv(V, D, 3, 1, 2, 2), None: None}[ingestor]
    return AttentionModel(encoder or text_encoder(seed=seed), AttentionDecoder(V, D, 2, 2, 2, ingestor=ing))


def padded(lengths, vocab=30, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, vocab, (len(lengths), max(lengths)), generator=g)
    for i, n in enumerate(lengths):
        x[i, n:] = torch.randint(1, vocab, (max(lengths) - n,), generator=g)  # garbage, not zeros
    return x, torch.tensor(lengths)


def stast(shrink=True, **kw):
    torch.manual_seed(0)
    acoustic = SpeechEncoder(FrameStack(80, D, 2), Conformer(D, 1, 2, 2, 5, 0.0), MarginalHead(D, SRC), 80)
    text = SequenceEncoder(TokenEmbedding(SRC, D, 0.0), TransformerStack(D, 1, 2, 2, 0.0))
    dec = AttentionDecoder(TGT, D, 1, 2, 2, 0.0)
    return STAST(acoustic, text, dec, acoustic_dim=D, shrink=Shrink() if shrink else None, **kw)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    feats, lens = torch.randn(3, 40, 80, generator=g), torch.tensor([40, 30, 24])
    tr, tr_lens = torch.randint(0, SRC, (3, 6), generator=g), torch.tensor([6, 4, 5])
    tgt, tgt_lens = torch.randint(0, TGT, (3, 5), generator=g), torch.tensor([5, 3, 4])
    return feats, lens, tgt, tgt_lens, {"transcripts": tr, "transcript_lens": tr_lens}


def streaming_transducer(vocab: int = 40, dim: int = 32, left: int | None = 6, predictor: str = "stateless",
                         seed: int = 0) -> Transducer:
    torch.manual_seed(seed)
    body = Conformer(dim, 2, 2, 2, 5, 0.1, causal=True, chunk_sizes=[2, 4], left_context=left)
    enc = SpeechEncoder(FrameStack(80, dim, 4), body, MarginalHead(dim, vocab), 80)
    pred = StatelessPredictor(vocab, dim, 2) if predictor == "stateless" else LSTMPredictor(vocab, dim)
    return Transducer(enc, pred, Joiner(dim, dim, vocab, dim)).eval()


def stream_tokenizer(tmp_path, corpus):
    texts = [normalize_text(u.text) for u in load_manifest(corpus / "asr" / "train.jsonl")]
    return train_tokenizer(texts, tmp_path / "tok.model", vocab_size=64)


def stream_brick(tmp_path, corpus):
    tok = stream_tokenizer(tmp_path, corpus)
    m = streaming_transducer(vocab=tok.vocab_size)
    return save_brick(m, tmp_path / "brick", {"kind": "Transducer", "input": FbankConfig().to_dict()},
                      {"target": tok})


def _snapshot(directory: Path) -> dict:
    """Every path under ``directory`` (itself included) → (size, mtime): what writing would change."""
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in [directory, *directory.rglob("*")]}


@contextlib.contextmanager
def read_only(directory: Path):
    """``chmod -R a-w directory`` for the block (restored after); yields a check that nothing in it changed
    (which also holds the line where permissions do not: a test run as root)."""
    modes = {p: p.stat().st_mode for p in [directory, *directory.rglob("*")]}
    for p in modes:
        os.chmod(p, modes[p] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    before = _snapshot(directory)
    try:
        yield lambda: _snapshot(directory) == before
    finally:
        for p, mode in modes.items():
            os.chmod(p, mode)
