"""Every ``fit`` stage of every dataset recipe builds its model at full size (the corpus tests train
the same classes at toy sizes), and a parameter count a config states ("~19M parameters") is what
its own recipe builds from it, within 5% (another recipe may reuse it with other vocabulary sizes)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import lightning as L
import pytest

from speechkit.recipe import load_stages
from speechkit.train.cli import SpeechkitCLI

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.parent.name for p in (ROOT / "recipes").glob("*/stages.yaml"))
NEEDS = {"corpus": "/data/x", "lang": "de", "src": "fr"}  # the variables a user must --set
STATED = re.compile(r"~(\d+(?:\.\d+)?)M parameters")


def fit_stages():
    for recipe in RECIPES:
        folder = ROOT / "recipes" / recipe
        for stage in load_stages(folder, {k: v for k, v in NEEDS.items()
                                          if f"  {k}: null" in (folder / "stages.yaml").read_text()}):
            argv = list(stage.commands[0])
            if argv[3] == "fit":
                yield pytest.param(argv[4:], id=f"{recipe}-{stage.name}")


@pytest.mark.parametrize("args", list(fit_stages()))
def test_recipe_model_builds_at_full_size(args, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["speechkit"])  # LightningCLI warns when pytest's argv is there too
    # warm starts (init_from) name bricks of earlier stages, which do not exist here
    args = [*args, "--model.init_args.init_from=null", "--trainer.logger=false"]
    cli = SpeechkitCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True,
                       subclass_mode_data=True, run=False, args=args)
    n = sum(p.numel() for p in cli.model.parameters())
    assert n > 0
    last = Path([a for a in args if a.startswith("--config=")][-1].split("=", 1)[1])
    stated = STATED.search(last.read_text())
    if stated and ".." not in last.parts:
        assert abs(n / 1e6 / float(stated[1]) - 1) < 0.05, f"{last} says ~{stated[1]}M, builds {n / 1e6:.2f}M"
