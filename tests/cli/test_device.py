"""``--device``: the resolver (auto, cpu, cuda[:N]; one-line errors naming the value), and the verbs that
run a model giving on the device what they give on the CPU (``device`` fixture: cuda marked gpu)."""

import json
from pathlib import Path

import pytest
import torch

from speechkit.cli import main
from speechkit.nn.device import resolve_device

V1 = Path(__file__).parents[1] / "fixtures" / "bricks_v1"


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    for bad, said in (("gpu0", "not a device"), ("mps", "unsupported device type"), ("cuda:99", "cuda")):
        with pytest.raises(ValueError, match=f"--device {bad}: .*{said}"):
            resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["decode", str(V1 / "transducer"), str(V1 / "manifest.jsonl"), "--device", "cuda",
              "--out", str(tmp_path / "h.jsonl")])
    assert str(e.value) == ("error: --device cuda: CUDA is not available here "
                            "(torch.cuda.is_available() is False)")
    assert not (tmp_path / "h.jsonl").exists()


def decode(capsys, tmp_path, *args):
    out = tmp_path / f"h{len(list(tmp_path.iterdir()))}.jsonl"
    main(["decode", *map(str, args), "--out", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return summary, [json.loads(x)["hyp"] for x in out.read_text().splitlines()]


@pytest.mark.parametrize("brick,extra", [("transducer", ["--beam", "3"]), ("aed", ["--beam", "2"]),
                                         ("transducer", ["--beam", "3", "--lm", str(V1 / "lm"),
                                                         "--lm-weight", "0.3", "--ilm-weight", "0.1"])])
def test_decode_on_the_device_equals_the_cpu(device, capsys, tmp_path, brick, extra):
    args = [V1 / brick, V1 / "manifest.jsonl", "--target-lang", "text", *extra]
    want, want_hyps = decode(capsys, tmp_path, *args, "--device", "cpu")
    got, got_hyps = decode(capsys, tmp_path, *args, "--device", str(device), "--workers", "1")
    assert got_hyps == want_hyps and got["wer"] == want["wer"]
