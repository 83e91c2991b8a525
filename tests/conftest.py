import os

import pytest
import torch

from speechkit.features import SpecAugment
from speechkit.lego.encoders import SpeechEncoder
from speechkit.lego.interface import MarginalHead
from speechkit.lego.transducer import Joiner, LSTMPredictor, StatelessPredictor
from speechkit.models.transducer import Transducer
from speechkit.nn.conformer import Conformer
from speechkit.nn.subsampling import Conv2dSubsampling, FrameStack

torch.set_num_threads(2)
if not torch.cuda.is_available():  # Triton kernels (speechkit.models.rnnt_triton) run in Triton's interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Device-dependent tests take the ``device`` fixture: they run on the CPU in every tier, and on CUDA
# (marked ``gpu``, compared there with the CPU result) where a GPU exists: `pytest -m gpu`.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """The device a test runs its model on: cpu, and cuda (marked gpu, skipped without CUDA)."""
    return torch.device(request.param)


def tiny_transducer(vocab: int = 40, dim: int = 32, frontend: str = "stack", predictor: str = "stateless",
                    seed: int = 0) -> Transducer:
    torch.manual_seed(seed)
    front = FrameStack(80, dim, 4) if frontend == "stack" else Conv2dSubsampling(80, dim, 8)
    enc = SpeechEncoder(front, Conformer(dim, 2, 2, 2, 7, 0.1), MarginalHead(dim, vocab), 80,
                        SpecAugment(time_width=5))
    pred = StatelessPredictor(vocab, dim, 2) if predictor == "stateless" else LSTMPredictor(vocab, dim)
    return Transducer(enc, pred, Joiner(dim, dim, vocab, dim))


@pytest.fixture
def model():
    return tiny_transducer().eval()


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A real locale corpus of 80 messages (espeak speech), built once per test session."""
    from speechkit.corpora.locale import prepare_locale

    out = tmp_path_factory.mktemp("locale")
    prepare_locale(out, max_utts=80, langs=["de"], workers=1, progress=False)
    return out
