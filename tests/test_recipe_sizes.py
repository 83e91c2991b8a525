"""Every ``fit`` stage of every dataset recipe builds its model at full size (the corpus tests train
the same classes at toy sizes), and a parameter count a config states ("~19M parameters") is what
its own recipe builds from it, within 5% (another recipe may reuse it with other vocabulary sizes)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

from speechkit.recipe import SPEECHKIT, load_stages
from speechkit.train.cli import run_lightning

pytestmark = pytest.mark.slow  # end to end (pytest.ini: the slow tier)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.parent.name for p in (ROOT / "recipes").glob("*/stages.yaml"))
NEEDS = {"corpus": "/data/x", "lang": "de", "src": "fr"}  # the variables a user must --set
STATED = re.compile(r"~(\d+(?:\.\d+)?)M parameters")


def fit_stages():
    for recipe in RECIPES:
        folder = ROOT / "recipes" / recipe
        declared = yaml.safe_load((folder / "stages.yaml").read_text()).get("vars") or {}
        needs = {k: v for k, v in NEEDS.items() if k in declared and declared[k] is None}
        for stage in load_stages(folder, needs):
            argv, fit = stage.commands[0], (*SPEECHKIT, "fit")
            if argv[:len(fit)] == fit:
                yield pytest.param(list(argv[len(fit):]), id=f"{recipe}-{stage.name}")


@pytest.mark.parametrize("args", list(fit_stages()))
def test_recipe_model_builds_at_full_size(args, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["speechkit"])  # LightningCLI warns when pytest's argv is there too
    # warm starts (init_from) name bricks of earlier stages, which do not exist here
    args = [*args, "--model.init_args.init_from=null", "--trainer.logger=false"]
    cli = run_lightning(args, run=False)
    n = sum(p.numel() for p in cli.model.parameters())
    assert n > 0
    last = Path([a for a in args if a.startswith("--config=")][-1].split("=", 1)[1])
    stated = STATED.search(last.read_text())
    if stated and ".." not in last.parts:
        assert abs(n / 1e6 / float(stated[1]) - 1) < 0.05, f"{last} says ~{stated[1]}M, builds {n / 1e6:.2f}M"
