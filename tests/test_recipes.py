"""Every configuration the locale recipe scripts train parses: keys, types and class paths are
checked by LightningCLI (``--print_config`` stops before anything is built), so a renamed
argument fails here rather than an hour into a run."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from speechkit.train.cli import run_lightning

ROOT = Path(__file__).resolve().parents[1]
CONF = "recipes/locale/conf"


def recipe_models() -> list[tuple[str, list[str]]]:
    """(name, config files) for every model of the recipe scripts (``list``)."""
    models = [("demo", [f"{CONF}/demo.yaml"]), ("full", [f"{CONF}/demo.yaml", f"{CONF}/full.yaml"])]
    for script in ("lego.sh", "stast.sh", "fusion.sh", "compress.sh", "stream.sh", "pruned.sh"):
        out = subprocess.run(["bash", f"recipes/locale/{script}", "list"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
        for line in out.splitlines():
            name, files = line.split(":", 1)
            models.append((f"{script} {name}", files.split()))
    return models


MODELS = recipe_models()


def test_the_scripts_list_their_models():
    names = {n for n, _ in MODELS}
    assert {"lego.sh mt_ro_en", "lego.sh chain", "stast.sh de stast_mt_init", "stast.sh ro e2e_mt_init",
            "stast.sh ro mt", "fusion.sh lm_lstm", "fusion.sh mwer_ilme", "fusion.sh ilmt_lstm",
            "compress.sh sparse_int8", "compress.sh mt_sparse_int8", "compress.sh stast_sparse_int8",
            "stream.sh small", "stream.sh full", "stream.sh full_long", "pruned.sh pruned"} <= names
    for _, files in MODELS:
        assert files and all((ROOT / f).is_file() for f in files), files


@pytest.mark.parametrize("name,configs", MODELS, ids=[n for n, _ in MODELS])
def test_recipe_config_parses(name, configs, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["speechkit"])  # LightningCLI warns when pytest's argv is there too
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        run_lightning(["fit", "--print_config", *(f"--config={c}" for c in configs)])
    assert e.value.code in (0, None)
    assert "class_path: speechkit." in out.getvalue()
    if name.endswith("_mt_init"):  # a layered init_from replaces the earlier one whole: all three parts
        mt = f"exp/stast/en_{name.split()[1]}/mt/brick"
        for part in ("encoder: exp/locale/full/brick#encoder", f"text_encoder: {mt}#encoder",
                     f"decoder: {mt}#decoder"):
            assert part in out.getvalue(), part
    if name.startswith("stream.sh"):  # streaming: causal, dynamic chunks
        body = yaml.safe_load(out.getvalue())["model"]["init_args"]["model"]["init_args"]["encoder"][
            "init_args"]["body"]["init_args"]
        assert body["causal"] and body["chunk_sizes"] == [4, 8, 16, 32] and body["left_context"] == 64
    if name.startswith("compress.sh"):  # the top-level section (linked to the task's `compress`)
        cfg = yaml.safe_load(out.getvalue())
        assert (cfg["compress"] is None) == name.endswith("dense"), cfg["compress"]
        if "sparse" in name:
            assert cfg["compress"]["sparsity"]["n"] == 2 and cfg["compress"]["sparsity"]["m"] == 4
