"""benchmarks/training_throughput.py's plain torch + torchaudio loss is speechkit's transducer loss, so
its loop trains the same objective as ``speechkit fit``."""

import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import tiny_transducer

_spec = importlib.util.spec_from_file_location(
    "bench_throughput", Path(__file__).parents[2] / "benchmarks" / "training_throughput.py")
throughput = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(throughput)


@pytest.mark.parametrize("rnnt", [False, True])
def test_plain_loss_equals_the_transducer_loss(rnnt):
    model = tiny_transducer().eval()  # eval: no dropout or SpecAugment, the two forwards are comparable
    torch.manual_seed(1)
    batch = {"inputs": torch.randn(3, 96, 80), "input_lens": torch.tensor([96, 80, 64]),
             "targets": torch.randint(0, 40, (3, 5)), "target_lens": torch.tensor([5, 4, 2])}
    ours = model.loss(batch["inputs"], batch["input_lens"], batch["targets"], batch["target_lens"],
                      scales=None if rnnt else {"rnnt": 0})["loss"]
    torch.testing.assert_close(throughput.plain_loss(model, batch, rnnt), ours)
