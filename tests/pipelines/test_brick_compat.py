"""Bricks written before the redesign (tests/fixtures/bricks_v1, made at commit b902170 by its make.py) load
with today's code and give the same numbers and the same hypotheses."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from speechkit.pipelines.bricks import load_brick
from speechkit.pipelines.decode import DecodeOptions, decode_manifest, make_fusion

V1 = Path(__file__).parents[1] / "fixtures" / "bricks_v1"
EXPECTED = load_file(str(V1 / "expected.safetensors"))
HYPS = json.loads((V1 / "expected.json").read_text())


def tolerance(device) -> dict:
    """CPU: the recorded numbers to rounding; CUDA: cuDNN convolutions run in TF32 by default."""
    return {"rtol": 1e-5, "atol": 1e-5} if device.type == "cpu" else {"rtol": 2e-3, "atol": 2e-3}


@pytest.mark.parametrize("name", ["transducer", "aed", "mt", "transducer_2of4_int8"])
def test_old_brick_gives_the_same_numbers(name, device):
    model = load_brick(V1 / name, device).module
    e = {k: v.to(device) for k, v in EXPECTED.items()}
    x, n = (e["ids"], e["id_lens"]) if name == "mt" else (e["feats"], e["lens"])
    with torch.no_grad():
        enc = model(x, n)
        losses = model.loss(x, n, e["targets"], e["target_lens"])
    torch.testing.assert_close(enc.hidden, e[f"{name}/hidden"], **tolerance(device))
    torch.testing.assert_close(enc.logits, e[f"{name}/logits"], **tolerance(device))
    want = {k.rsplit("/", 1)[1]: v for k, v in e.items() if k.startswith(f"{name}/loss/")}
    assert set(losses) == set(want)
    for k, v in want.items():
        torch.testing.assert_close(losses[k].reshape(-1), v, **{**tolerance(device), "atol": 1e-4})


def test_old_lm_brick_scores_the_same(device):
    lm = load_brick(V1 / "lm", device).module
    with torch.no_grad():
        got = lm.score(EXPECTED["targets"].to(device), EXPECTED["target_lens"].to(device))
    torch.testing.assert_close(got, EXPECTED["lm/score"].to(device), **{**tolerance(device), "atol": 1e-4})


@pytest.mark.parametrize("key", sorted(HYPS))
def test_old_brick_decodes_the_same(key, device):
    name, run = key.split("/")
    fusion = make_fusion(V1 / name, V1 / "lm", 0.3, 0.1, 0.5, device=device) if run == "fused" else None
    opts = {"greedy": DecodeOptions(progress=False), "beam3": DecodeOptions(beam=3, nbest=2, progress=False),
            "fused": DecodeOptions(beam=3, progress=False, fusion=fusion)}[run]
    res, _ = decode_manifest(V1 / name, V1 / "manifest.jsonl", replace(opts, device=device), target_lang=None)
    want = HYPS[key]
    assert [r["hyp"] for r in res] == [r["hyp"] for r in want]
    for got, exp in zip(res, want):
        for g, w in zip(got.get("nbest", []), exp.get("nbest", [])):
            assert g["hyp"] == w["hyp"] and g["score"] == pytest.approx(w["score"], abs=1e-3)
